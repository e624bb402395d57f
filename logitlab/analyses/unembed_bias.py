"""The unembedding bias that LayerNorm folding creates.

Folding the final LayerNorm's bias ``b`` into the unembedding gives ``b_U = b · W_U`` (plus any bias the model
had): a prompt-independent preference between the answers. Its difference for the two answers is the logit
difference the model would show from the bias alone; exp of it the implied probability ratio. RMSNorm models
without an output bias (Llama, Gemma) have none, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from logitlab.model.load import Model
from logitlab.task import TokenizedTask

__all__ = ["UnembedBiasResult", "unembed_bias"]


@dataclass(frozen=True)
class UnembedBiasResult:
    present: bool
    correct: str
    incorrect: str
    b_U_correct: float
    b_U_incorrect: float

    @property
    def difference(self) -> float:
        return self.b_U_correct - self.b_U_incorrect

    def to_dict(self) -> dict[str, Any]:
        import math
        note = (f"b_U favours {self.correct!r} over {self.incorrect!r} by {self.difference:.4f} logits"
                if self.present else "this model has no unembedding bias (b_U is zero after processing)")
        return {"present": self.present, "correct": self.correct, "incorrect": self.incorrect,
                "b_U_correct": self.b_U_correct, "b_U_incorrect": self.b_U_incorrect,
                "difference": self.difference, "prob_ratio": math.exp(self.difference), "note": note}


def unembed_bias(model: Model, task: TokenizedTask) -> UnembedBiasResult:
    """b_U of the first prompt's answers (correct vs the mean of its incorrect ones)."""
    b_U = model.runner.w.b_U.float()
    c = int(task.correct_ids[0])
    inc = task.incorrect_ids[0]
    present = bool(b_U.abs().max() > 0)
    return UnembedBiasResult(present, model.tokenizer.decode([c]), " / ".join(model.to_str_tokens(inc)),
                             float(b_U[c]), float(b_U[inc.to(b_U.device)].mean()))
