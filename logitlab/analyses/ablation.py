"""Head ablation: replace one query head's output and measure the logit difference and the answer loss.

Zero-ablation sets the head's ``hook_z`` output to 0 at every position; mean-ablation sets it to its mean over
the task's prompts at each position (prompts shorter than a position do not count towards its mean). Heads
are ablated per *query* head at ``hook_z``: on grouped-KV models ``hook_v`` is shared by several query
heads, so zeroing it would ablate all of them. The loss is −log p(correct) at the prompt's final position,
i.e. what the model pays for the answer token when reading prompt + answer; one pass serves both metrics.

Invariant (tested): ablating nothing reproduces the baseline; every head equals one hooked TransformerLens
forward per head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun, mean_stderr
from logitlab.sweep import SweepSettings, run_sweep

__all__ = ["AblationResult", "head_ablation", "head_mean_values"]


@dataclass(frozen=True)
class AblationResult:
    kind: Literal["zero", "mean"]
    logit_diff: Float[Tensor, "layer head batch"]
    loss: Float[Tensor, "layer head batch"]
    baseline_logit_diff: Float[Tensor, " batch"]
    baseline_loss: Float[Tensor, " batch"]

    def to_dict(self) -> dict[str, Any]:
        ld, ld_se = mean_stderr(self.logit_diff)
        lo, lo_se = mean_stderr(self.loss)
        return {"logit_diff": ld.tolist(), "loss": lo.tolist(), "logit_diff_stderr": ld_se.tolist(),
                "loss_stderr": lo_se.tolist()}

    def to_frame(self) -> Any:
        import pandas as pd
        L, H, _ = self.logit_diff.shape
        return pd.DataFrame({"ablation": self.kind, "layer": [l for l in range(L) for _ in range(H)],
                             "head": list(range(H)) * L, "logit_diff": self.logit_diff.mean(-1).flatten().numpy(),
                             "loss": self.loss.mean(-1).flatten().numpy()})


def head_mean_values(run: CleanRun) -> Float[Tensor, "layer pos head d_head"]:
    """Each head's output averaged over prompts at each position (padding excluded)."""
    z = run.cache.z  # (L, B, T, H, dh)
    T = z.shape[2]
    valid = (torch.arange(T, device=z.device)[None, :] <= run.task.final_pos.to(z.device)[:, None]).to(z.dtype)
    num = torch.einsum("lbthe,bt->lthe", z, valid)
    return num / valid.sum(0).clamp(min=1)[None, :, None, None]


def ablate_heads_sweep(run: CleanRun, layer: int, heads: Tensor, replacement: Tensor, settings: SweepSettings,
                       with_loss: bool = True) -> tuple[Tensor, Tensor | None]:
    """Sweep: for each head in ``heads`` × each prompt, replace its z with ``replacement[head_i]``.

    ``replacement`` is (n_heads_swept, pos, d_head) shared by prompts, or (n_heads_swept, batch, pos, d_head).
    Returns metrics shaped (n_heads_swept, batch).
    """
    r, c, B = run.model.runner, run.cache, run.task.n_prompts
    n = len(heads) * B

    def make_chunk(idx: Tensor) -> Tensor:
        hi, b = idx // B, idx % B  # head-major items: (head, prompt)
        h = heads.to(idx.device)[hi]
        old = c.z[layer, b, :, h]  # (n, T, dh)
        new = replacement[hi] if replacement.dim() == 3 else replacement[hi, b]
        delta = torch.einsum("nte,ned->ntd", new - old, r.w.W_O[layer, h])  # (n, T, D)
        attn_out, _ = r.post_attention(layer, c.attn_pre[layer, b] + delta)
        return r.after_attention(c.resid_pre[layer, b], attn_out, c.mlp_out[layer, b])

    rep = lambda t: t.to(r.device).repeat(len(heads), *([1] * (t.dim() - 1)))  # noqa: E731
    diff, loss = run_sweep(r, n, layer, r.attn_entry_stage, make_chunk, rep(run.task.final_pos), rep(run.task.correct_ids),
                           rep(run.task.incorrect_ids), with_loss, settings)
    return diff.view(len(heads), B), (None if loss is None else loss.view(len(heads), B))


def head_ablation(run: CleanRun, kind: Literal["zero", "mean"] = "zero",
                  settings: SweepSettings | None = None) -> AblationResult:
    """Ablate every query head in turn (batched), returning per-prompt logit difference and loss."""
    settings = settings or SweepSettings()
    spec = run.model.spec
    if run.model.runner.hooked:  # architectures outside logitlab's forward pass: one hooked forward per head
        from logitlab.reference import loop_head_ablation
        t = run.task
        means = head_mean_values(run) if kind == "mean" else None
        d, lo = loop_head_ablation(run.model, t.tokens, t.final_pos, t.correct_ids, t.incorrect_ids, means,
                                   progress=settings.progress)
        return AblationResult(kind, d, lo, run.logit_diff.cpu(), run.loss.cpu())
    H, T, dh = spec.n_heads, run.task.tokens.shape[1], spec.d_head
    means = head_mean_values(run) if kind == "mean" else None
    heads = torch.arange(H)
    lds, losses = [], []
    for layer in range(spec.n_layers):
        if means is None:
            rep = torch.zeros(H, T, dh, dtype=run.model.runner.dtype, device=run.model.runner.device)
        else:
            rep = means[layer].permute(1, 0, 2)  # (H, T, dh)
        d, lo = ablate_heads_sweep(run, layer, heads, rep, settings)
        lds.append(d)
        losses.append(lo)
    return AblationResult(kind, torch.stack(lds).cpu(), torch.stack(losses).cpu(),
                          run.logit_diff.cpu(), run.loss.cpu())
