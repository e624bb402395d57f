"""Logit difference: the model's preference for the correct answer over the incorrect one(s).

``logit(correct) − mean(logit(incorrect))`` at each prompt's own final position; exp of it is the
probability ratio p(correct)/p(incorrect). On a model with a final-logit soft-cap (Gemma-2) it is the difference
of the capped logits, the model's own; the direct attributions decompose the pre-cap one (see
:mod:`logitlab.analyses.attribution`). Invariant: computing from the answer columns only equals reading
the full logits (tested).

Uncertainty: the mean comes with its standard error and a seeded 95% percentile bootstrap CI over prompts
(:func:`logitlab.stats.paired`, the resamples every other CI of the battery uses). ``accuracy`` is the share
of prompts whose logit difference is > 0, i.e. on which the correct answer's logit beats the (mean) incorrect
one's; it says nothing about whether the correct answer is the model's top prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun, mean_stderr
from logitlab.stats import paired
from logitlab.results.core import LogitDiff

__all__ = ["LogitDiffResult", "logit_diff"]


@dataclass(frozen=True)
class LogitDiffResult:
    per_prompt: Float[Tensor, " batch"]
    loss: Float[Tensor, " batch"]

    @property
    def mean(self) -> float:
        return float(self.per_prompt.mean())

    def to_dict(self) -> LogitDiff:
        mean, se = mean_stderr(self.per_prompt)
        return {"per_prompt": self.per_prompt.tolist(), "mean": float(mean), "stderr": float(se),
                "ci": paired(self.per_prompt[None]).ci[0].tolist(),
                "prob_ratio": _ratio(self.per_prompt).tolist(), "prob_ratio_of_mean": float(_ratio(mean)),
                "accuracy": float((self.per_prompt > 0).float().mean()),
                "loss_per_prompt": self.loss.tolist(), "loss_mean": float(self.loss.mean())}


def _ratio(x: Tensor) -> Tensor:
    """exp(logit difference) in float64, capped at float64's largest value (a logit difference above ~709 would
    overflow; float32's exp overflowed above ~88 and aborted the run)."""
    return x.double().exp().clamp(max=torch.finfo(torch.float64).max)


def logit_diff(run: CleanRun) -> LogitDiffResult:
    """Per-prompt logit difference and answer loss of the clean run."""
    return LogitDiffResult(per_prompt=run.logit_diff.cpu(), loss=run.loss.cpu())
