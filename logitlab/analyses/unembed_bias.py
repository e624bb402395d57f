"""The unembedding bias that LayerNorm folding creates.

Folding the final LayerNorm's bias ``b`` into the unembedding gives ``b_U = b · W_U`` (plus any bias the model
had): a prompt-independent preference between the answers. Its difference for the two answers is the logit
difference the model would show from the bias alone; exp of it the implied probability ratio. RMSNorm models
without an output bias (Llama, Gemma) have none, and the result says so.

A task may ask several questions (she vs he, he vs she, it vs he / she): the bias is given for every distinct
(correct, incorrect answers) pair among its prompts, in order of first appearance, with how many prompts ask
it; the top-level keys describe the first pair (the first prompt's). Padding of the incorrect ids
(:data:`logitlab.answers.PAD`) is dropped, so a prompt's difference is ``b_U[correct] − mean b_U[its own
incorrect answers]``, the bias share of its logit difference.
"""

from __future__ import annotations

from dataclasses import dataclass

from logitlab.answers import PAD
from logitlab.model.load import Model
from logitlab.results.core import UnembedBias, UnembedBiasPair as UnembedBiasPairSection
from logitlab.task import TokenizedTask

__all__ = ["UnembedBiasPair", "UnembedBiasResult", "unembed_bias"]


@dataclass(frozen=True)
class UnembedBiasPair:
    """b_U of one distinct (correct, incorrect answers) pair of the task."""

    correct: str
    incorrect: str
    b_U_correct: float
    b_U_incorrect: float  # mean over the incorrect answers
    n_prompts: int

    @property
    def difference(self) -> float:
        return self.b_U_correct - self.b_U_incorrect

    def to_dict(self) -> UnembedBiasPairSection:
        return {"correct": self.correct, "incorrect": self.incorrect, "b_U_correct": self.b_U_correct,
                "b_U_incorrect": self.b_U_incorrect, "difference": self.difference, "n_prompts": self.n_prompts}


@dataclass(frozen=True)
class UnembedBiasResult:
    present: bool
    correct: str
    incorrect: str
    b_U_correct: float
    b_U_incorrect: float
    pairs: tuple[UnembedBiasPair, ...] = ()

    @property
    def difference(self) -> float:
        return self.b_U_correct - self.b_U_incorrect

    def to_dict(self) -> UnembedBias:
        import math
        note = (f"b_U favours {self.correct!r} over {self.incorrect!r} by {self.difference:.4f} logits"
                if self.present else "this model has no unembedding bias (b_U is zero after processing)")
        return {"present": self.present, "correct": self.correct, "incorrect": self.incorrect,
                "b_U_correct": self.b_U_correct, "b_U_incorrect": self.b_U_incorrect,
                "difference": self.difference, "prob_ratio": math.exp(self.difference), "note": note,
                "pairs": [p.to_dict() for p in self.pairs]}


def unembed_bias(model: Model, task: TokenizedTask) -> UnembedBiasResult:
    """b_U of every distinct answer pair of the task (correct vs the mean of its incorrect ones); the top-level
    fields are the first prompt's pair."""
    b_U = model.runner.w.b_U.float()
    present = bool(b_U.abs().max() > 0)
    seen: dict[tuple[int, tuple[int, ...]], int] = {}  # (correct, incorrect ids) -> prompts asking it
    for c, row in zip(task.correct_ids.tolist(), task.incorrect_ids.tolist()):
        key = (int(c), tuple(int(x) for x in row if x != PAD))  # padding dropped
        seen[key] = seen.get(key, 0) + 1
    pairs = tuple(UnembedBiasPair(model.tokenizer.decode([c]), " / ".join(model.to_str_tokens(list(inc))),
                                  float(b_U[c]), float(b_U[list(inc)].mean()), n)
                  for (c, inc), n in seen.items())
    first = pairs[0]  # dicts keep insertion order: the first prompt's pair
    return UnembedBiasResult(present, first.correct, first.incorrect, first.b_U_correct, first.b_U_incorrect,
                             pairs)
