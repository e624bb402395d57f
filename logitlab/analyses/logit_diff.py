"""Logit difference: the model's preference for the correct answer over the incorrect one(s).

``logit(correct) − mean(logit(incorrect))`` at each prompt's own final position; exp of it is the
probability ratio p(correct)/p(incorrect). Invariant: computing from the answer columns only equals reading
the full logits (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun, mean_stderr

__all__ = ["LogitDiffResult", "logit_diff"]


@dataclass(frozen=True)
class LogitDiffResult:
    per_prompt: Float[Tensor, " batch"]
    loss: Float[Tensor, " batch"]

    @property
    def mean(self) -> float:
        return float(self.per_prompt.mean())

    def to_dict(self) -> dict[str, Any]:
        mean, se = mean_stderr(self.per_prompt)
        return {"per_prompt": self.per_prompt.tolist(), "mean": float(mean), "stderr": float(se),
                "prob_ratio": self.per_prompt.exp().tolist(), "prob_ratio_of_mean": float(mean.exp()),
                "accuracy": float((self.per_prompt > 0).float().mean()),
                "loss_per_prompt": self.loss.tolist(), "loss_mean": float(self.loss.mean())}


def logit_diff(run: CleanRun) -> LogitDiffResult:
    """Per-prompt logit difference and answer loss of the clean run."""
    return LogitDiffResult(per_prompt=run.logit_diff.cpu(), loss=run.loss.cpu())
