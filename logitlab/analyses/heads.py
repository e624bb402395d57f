"""Per-head direct logit attribution and the attention patterns of the top heads.

A head's direct effect is its output ``z_h · W_O[h]`` at the final position, projected like any
residual-stream component. On models with a post-attention norm (Gemma 2/3) the head outputs are summed and
*then* normalised, so each head's output is first pushed through that norm with its scale frozen at the clean
run's value: ``x / rms(Σ heads + b_O) · w``. With that, the heads of a layer plus the output bias's share sum
exactly to the layer's ``attn_out`` attribution. TransformerLens's ``stack_head_results`` skips this step;
its numbers are kept as ``naive`` for comparison.

Uncertainty: each head's mean over prompts comes with a seeded 95% bootstrap CI (:func:`logitlab.stats.paired`).
"The head with the largest direct effect" is a claim about |mean|; :meth:`HeadAttributionResult.top_separation`
tests it on the same prompts: each head's per-prompt values are signed towards its own mean (so their mean is
|mean|), and the top head is separated from another when the CI of the paired per-prompt difference excludes 0.

Example:
    >>> res = head_attribution(run); res.top(3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun, mean_stderr
from logitlab.errors import LogitlabError
from logitlab.registry import setting
from logitlab.results.core import Attention, HeadAttributionValues
from logitlab.stats import paired

__all__ = ["AttentionSettings", "HeadAttributionResult", "AttentionResult", "head_attribution", "attention_patterns"]


@dataclass(frozen=True)
class AttentionSettings:
    """Which attention patterns the ``attention`` section holds."""

    n_attention_heads: int = setting(3, "how many top heads the attention section shows")
    attention_prompt: int = setting(0, "the prompt whose attention patterns are shown")

    def __post_init__(self) -> None:
        if self.n_attention_heads < 1 or self.attention_prompt < 0:
            raise LogitlabError("n_attention_heads must be ≥ 1 and attention_prompt ≥ 0")


@dataclass(frozen=True)
class HeadAttributionResult:
    values: Float[Tensor, "layer head batch"]
    bias: Float[Tensor, "layer batch"]  # b_O's share (through the post-norm if any)
    naive: Float[Tensor, "layer head batch"] | None  # before the post-norm (TransformerLens); None without one

    @property
    def mean(self) -> Tensor:
        return self.values.mean(-1)

    def top(self, k: int) -> list[tuple[int, int, float]]:
        """The k heads with the largest |mean attribution|: (layer, head, value)."""
        m = self.mean
        flat = m.abs().flatten().argsort(descending=True)[:k]
        H = m.shape[1]
        return [(int(i) // H, int(i) % H, float(m.flatten()[i])) for i in flat]

    def top_separation(self) -> dict[str, Any]:
        """The head with the largest |mean| attribution, and the heads it is not separated from.

        Per prompt, every head's value is multiplied by the sign of its own mean, so the paired difference
        ``top − other`` has mean |mean_top| − |mean_other| ≥ 0. A head is *tied* with the top one when the 95%
        bootstrap CI of that difference includes 0.
        """
        v = self.values.double().flatten(0, 1)  # (L·H, B)
        H = self.values.shape[1]
        mean = v.mean(-1)
        sign = torch.where(mean < 0, -1.0, 1.0).to(v.dtype)
        aligned = v * sign[:, None]  # (L·H, B): each head towards its own mean
        top = int(mean.abs().argmax())
        diff = paired(aligned[top] - aligned)  # (L·H,)
        tied = [[i // H, i % H] for i in range(v.shape[0]) if i != top and float(diff.ci[i, 0]) <= 0.0]
        order = mean.abs().argsort(descending=True).tolist()
        runner = order[1] if len(order) > 1 else top
        p_top = paired(v[top][None])
        return {"layer": top // H, "head": top % H, "value": float(mean[top]), "ci": p_top.ci[0].tolist(),
                "runner_up": [runner // H, runner % H], "runner_up_value": float(mean[runner]),
                "difference": float(diff.mean[runner]), "difference_ci": diff.ci[runner].tolist(), "tied": tied}

    def to_dict(self) -> HeadAttributionValues:
        mean, se = mean_stderr(self.values)
        return cast(HeadAttributionValues, {"values": mean.tolist(), "stderr": se.tolist(), "ci": paired(self.values).ci.tolist(),
                "attn_bias": self.bias.mean(-1).tolist(),
                "naive": None if self.naive is None else self.naive.mean(-1).tolist(), "top": self.top_separation()})

    def to_frame(self) -> Any:
        import pandas as pd
        mean, se = mean_stderr(self.values)
        L, H = mean.shape
        return pd.DataFrame({"layer": [l for l in range(L) for _ in range(H)], "head": list(range(H)) * L,
                             "logit_diff": mean.flatten().numpy(), "stderr": se.flatten().numpy()})


def head_attribution(run: CleanRun) -> HeadAttributionResult:
    """Each query head's direct contribution to the logit difference, exact under post-attention norms."""
    r, c = run.model.runner, run.cache
    L = run.model.spec.n_layers
    z = run.at_final(c.z.flatten(-2))  # (L, B, H*dh) at final positions
    z = z.view(L, z.shape[1], run.model.spec.n_heads, -1)  # (L, B, H, dh)
    per_head = torch.einsum("lbhe,lhed->lhbd", z.float(), r.w.W_O.float())  # (L, H, B, D)
    bias = r.w.b_O.float()[:, None, :].expand(L, z.shape[1], -1)  # (L, B, D)
    naive = None
    if run.model.spec.post_norms:
        naive = run.project(per_head).cpu()
        post_s = run.at_final(c.post_attn_scale[..., None]).squeeze(-1)  # (L, B) frozen post-norm scale
        w_post = r.w.post1_w.float()  # (L, D)
        per_head = per_head / post_s[:, None, :, None] * w_post[:, None, None, :]
        bias = bias / post_s[..., None] * w_post[:, None, :]
    return HeadAttributionResult(values=run.project(per_head).cpu(), bias=run.project(bias).cpu(), naive=naive)


@dataclass(frozen=True)
class AttentionResult:
    prompt_index: int
    tokens: tuple[str, ...]
    heads: tuple[tuple[int, int, float], ...]
    patterns: Float[Tensor, "k query key"]

    def to_dict(self) -> Attention:
        return {"prompt_index": self.prompt_index, "tokens": list(self.tokens),
                "heads": [{"layer": l, "head": h, "attribution": a, "pattern": p.tolist()}
                          for (l, h, a), p in zip(self.heads, self.patterns)]}


def attention_patterns(run: CleanRun, heads: HeadAttributionResult, k: int = 3, prompt_index: int = 0) -> AttentionResult:
    """Attention patterns of the top-k heads by |attribution| on one prompt (cropped to its length)."""
    n = int(run.task.final_pos[prompt_index]) + 1
    top = heads.top(k)
    pats = torch.stack([run.cache.pattern[l, prompt_index, h, :n, :n] for l, h, _ in top]).float().cpu()
    return AttentionResult(prompt_index, run.task.str_tokens[prompt_index], tuple(top), pats)
