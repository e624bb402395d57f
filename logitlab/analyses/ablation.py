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
from logitlab.model.runner import CleanCache, Runner
from logitlab.sweep import Entry, SweepSettings, run_sweep

__all__ = ["AblationResult", "head_ablation", "head_mean_values", "ablation_entries", "shared_prefix"]


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


def head_delta(w_O: Tensor, heads: Tensor, dz: Tensor) -> Tensor:
    """Change of the summed attention output when head ``heads[i]`` of item i changes by ``dz[i]``.

    ``w_O`` is one layer's W_O (H, d_head, D); ``dz`` is (n, pos, d_head). One product per distinct head.
    """
    out = dz.new_empty(dz.shape[0], dz.shape[1], w_O.shape[-1])
    for h in heads.unique().tolist():
        sel = (heads == h).nonzero().squeeze(-1)
        out[sel] = dz[sel] @ w_O[h]
    return out


def with_head_change(runner: Runner, cache: CleanCache, layer: int, prompts: Tensor, heads: Tensor,
                     dz: Tensor) -> Tensor:
    """The residual stream at ``runner.attn_entry_stage`` of ``layer`` for ``cache``'s prompts ``prompts[i]`` when
    head ``heads[i]``'s output z changes by ``dz[i]`` (n, pos, d_head); the entry of ablation and head patching."""
    attn_pre = cache.attn_pre[layer, prompts] + head_delta(runner.w.W_O[layer], heads, dz)
    attn_out, _ = runner.post_attention(layer, attn_pre)
    return runner.after_attention(cache.resid_pre[layer, prompts], attn_out, cache.mlp_out[layer, prompts])


def shared_prefix(run: CleanRun) -> int:
    """How many first positions every prompt shares (e.g. the BOS token), up to the earliest final position.

    A replacement that is the same for every prompt (zero, or the mean over prompts) changes those positions in
    the same way for every prompt, so a sweep computes them once per head.
    """
    t = run.task
    limit = int(t.final_pos.min())
    same = (t.tokens[:, :limit] == t.tokens[:1, :limit]).all(0)
    return int(limit if bool(same.all()) else same.long().argmin())


def ablation_entries(run: CleanRun, layer: int, heads: Tensor, replacement: Tensor, prefix: int = 0) -> Entry:
    """Sweep items for each head in ``heads`` × each prompt, replacing the head's z with ``replacement[head_i]``.

    ``replacement`` is (n_heads_swept, pos, d_head) shared by prompts, or (n_heads_swept, batch, pos, d_head).
    Items are head-major: item ``i`` is head ``heads[i // batch]`` on prompt ``i % batch``. With ``prefix`` (at
    most :func:`shared_prefix`; replacement shared by prompts) the first positions run once per head.
    """
    r, c, B = run.model.runner, run.cache, run.task.n_prompts
    heads = heads.to(r.device)
    if prefix and replacement.dim() != 3:
        raise ValueError("a shared prefix needs a replacement shared by the prompts")

    def make(idx: Tensor) -> Tensor:
        hi, b = idx // B, idx % B
        h = heads[hi]
        old = c.z[layer, b, :, h]  # (n, T, dh)
        new = replacement[hi] if replacement.dim() == 3 else replacement[hi, b]
        return with_head_change(r, c, layer, b, h, new - old)

    prefix_kv = None
    if prefix:  # the shared positions of every head's ablation, run once (prompt 0 stands for all)
        first = make(torch.arange(len(heads), device=r.device) * B)[:, :prefix]
        trace = r.trace_keys_values(layer, r.attn_entry_stage, first)

        def prefix_kv(l: int, idx: Tensor) -> tuple[Tensor, Tensor]:
            k, v = trace[l]
            return k[idx // B], v[idx // B]

    rep = lambda t: t.to(r.device).repeat(len(heads), *([1] * (t.dim() - 1)))  # noqa: E731
    return Entry(layer, r.attn_entry_stage, make, rep(run.task.final_pos), rep(run.task.correct_ids),
                 rep(run.task.incorrect_ids), prefix=prefix, prefix_kv=prefix_kv)


def ablate_heads_sweep(run: CleanRun, layer: int, heads: Tensor, replacement: Tensor, settings: SweepSettings,
                       with_loss: bool = True) -> tuple[Tensor, Tensor | None]:
    """One layer's heads (see :func:`ablation_entries`); returns metrics shaped (n_heads_swept, batch)."""
    B = run.task.n_prompts
    ((diff, loss),) = run_sweep(run.model.runner, [ablation_entries(run, layer, heads, replacement)], with_loss,
                                settings)
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
    r = run.model.runner
    means = head_mean_values(run) if kind == "mean" else None
    heads = torch.arange(H)
    prefix = shared_prefix(run)
    entries = []
    for layer in range(spec.n_layers):
        if means is None:
            rep = torch.zeros(H, T, dh, dtype=r.dtype, device=r.device)
        else:
            rep = means[layer].permute(1, 0, 2)  # (H, T, dh)
        entries.append(ablation_entries(run, layer, heads, rep, prefix))
    out = run_sweep(r, entries, True, settings)  # every layer's heads in one growing batch
    B = run.task.n_prompts
    lds = torch.stack([d.view(H, B) for d, _ in out])
    losses = torch.stack([lo.view(H, B) for _, lo in out])  # type: ignore[union-attr]
    return AblationResult(kind, lds.cpu(), losses.cpu(), run.logit_diff.cpu(), run.loss.cpu())
