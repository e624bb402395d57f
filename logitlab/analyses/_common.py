"""The clean run every analysis starts from, and the frozen-scale projection onto the logit difference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab import answers
from logitlab.model.load import Model
from logitlab.model.readout import CleanCache
from logitlab.task import TokenizedTask

__all__ = ["CleanRun", "clean_run", "mean_stderr"]


def mean_stderr(x: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Mean and standard error (sample std / sqrt(n)) along ``dim``; stderr is 0 for a single sample."""
    n = x.shape[dim]
    mean = x.float().mean(dim)
    if n < 2:
        return mean, torch.zeros_like(mean)
    return mean, x.float().std(dim) / n ** 0.5


@dataclass(frozen=True)
class CleanRun:
    """A model, a tokenised task and one cached forward pass over its prompts."""

    model: Model
    task: TokenizedTask
    cache: CleanCache
    direction: Float[Tensor, "batch d_model"]  # W_U[:, correct] − mean W_U[:, incorrect], per prompt
    bias_term: Float[Tensor, " batch"]  # final-norm bias and b_U share of each prompt's logit diff
    logit_diff: Float[Tensor, " batch"]  # the model's own logit difference (after any final-logit soft-cap)
    loss: Float[Tensor, " batch"]  # −log p(correct) at the final position
    #: the logit difference before the final-logit soft-cap (None: the model has no cap, it is ``logit_diff``)
    pre_cap_logit_diff: Float[Tensor, " batch"] | None = None

    @property
    def attributed_logit_diff(self) -> Tensor:
        """The logit difference direct attributions (DLA, logit lens, layer and head attribution) decompose.

        It is linear in the residual stream through the frozen final norm: the model's own logit difference,
        except on a model with a final-logit soft-cap (Gemma-2), where it is the difference *before* the cap
        (tanh is not linear, so no additive decomposition of the capped value exists). Ablation, patching and
        the loss score the model's own (capped) logits.
        """
        return self.logit_diff if self.pre_cap_logit_diff is None else self.pre_cap_logit_diff

    def at_final(self, x: Tensor) -> Tensor:
        """Pick each prompt's own final position: (..., batch, pos, d) → (..., batch, d)."""
        idx = self.task.final_pos.to(x.device)
        return x[..., torch.arange(x.shape[-3], device=x.device), idx, :]

    def project(self, x: Float[Tensor, "... batch d_model"], scale: Tensor | None = None) -> Float[Tensor, "... batch"]:
        """Logit difference of residual-stream vectors through the final norm with its scale frozen.

        For LayerNorm the vector is centred first (the norm's mean subtraction is linear); the scale is the
        cached one of the clean run, so the map is linear and contributions add up exactly.
        """
        spec, w = self.model.spec, self.model.runner.w
        x = x.float()
        if spec.normalization == "LN":
            x = x - x.mean(-1, keepdim=True)
        s = self.at_final(self.cache.final_scale[..., None]).squeeze(-1) if scale is None else scale
        return ((x / s[:, None]) * w.lnf_w.float() * self.direction).sum(-1)


def clean_run(model: Model, task: TokenizedTask) -> CleanRun:
    """Run the task's prompts once, caching every activation, and score them."""
    r, w = model.runner, model.runner.w
    with torch.no_grad():
        cache = r.run_with_cache(task.tokens.to(r.device))
        correct = task.correct_ids.to(r.device)
        incorrect = task.incorrect_ids.to(r.device)
        cols, wts = answers.columns(incorrect), answers.weights(incorrect, torch.float32).to(r.device)
        # W_U[:, correct] − (masked) mean of W_U[:, incorrect], per prompt: (batch, d_model)
        direction = w.W_U[:, correct].T.float() - torch.einsum("dbk,bk->bd", w.W_U[:, cols].float(), wts)
        bias = (w.b_U[correct].float() - (w.b_U[cols].float() * wts).sum(-1)) + (w.lnf_b.float() * direction).sum(-1)
        idx = task.final_pos.to(r.device)
        final = cache.resid_final[torch.arange(task.n_prompts, device=r.device), idx]
        diff, loss = r.answer_metrics(final, correct, incorrect, with_loss=True)
        pre_cap = None
        if getattr(model.spec, "final_softcap", None) is not None:
            pre_cap = r.answer_metrics(final, correct, incorrect, with_loss=False, pre_cap=True)[0].float()
    return CleanRun(model=model, task=task, cache=cache, direction=direction, bias_term=bias,
                    logit_diff=diff.float(), loss=loss.float(), pre_cap_logit_diff=pre_cap)
