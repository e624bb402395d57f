"""Interventions as sweep entries: replace a head's output, patch a position, ablate with zero or the mean.

Every intervention logitlab runs is built here as :class:`~logitlab.sweep.Entry` objects (a group of items
entering the forward pass at one point, keyed by what they are), so ablation and patching share one
implementation of each edit:

* **head change** (:func:`head_entry`): item = (head, prompt); the head's ``hook_z`` output is replaced at every
  position and the layer's attention output recomputed from the cached sum of heads — through the
  post-attention norm, if the model has one, with its scale recomputed (the norm really runs). Zero- and
  mean-ablation replace with a value shared by the prompts; head patching with the other run's own z.
* **position patch** (:func:`position_entries`): item = pair; one position of the residual stream at an entry
  point moves by the clean − corrupted difference there. Positions before it keep the corrupted run's values,
  so the items skip them and read those positions' keys and values from the corrupted run.
* **replacements** (:func:`ablation_replacement`): zero, or each head's mean output over the task's prompts at
  each position counted back from the prompt's end (so a prompt's final position gets the mean of final
  positions, whatever the prompts' lengths).

Invariant (tested): every entry equals one hooked TransformerLens forward with the same edit.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.model.readout import CleanCache
from logitlab.model.runner import Runner
from logitlab.sweep import Entry

__all__ = ["head_mean_values", "ablation_replacement", "head_delta", "with_head_change", "shared_prefix",
           "head_entry", "position_entries"]


def head_mean_values(cache: CleanCache, final_pos: Tensor) -> Tensor:
    """Each head's output averaged over the prompts, position by position counted back from each prompt's end.

    Returns (layer, pos, head, d_head) when every prompt has the same length (one replacement for all prompts,
    the plain mean at each position), else (layer, batch, pos, head, d_head): at prompt ``b``'s position ``t``,
    the mean over prompts ``b'`` of ``z[b', final_pos[b'] − (final_pos[b] − t)]`` (prompts too short for that
    offset left out). So the replacement at every prompt's final position is the mean of final-position outputs,
    not of other prompts' earlier tokens (names, " is") that share its absolute position. Positions after a
    prompt's end get 0 (they never reach its final position).
    """
    z = cache.z  # (L, B, T, H, dh)
    L, B, T, H, dh = z.shape
    fp = final_pos.to(z.device)
    if bool((fp == fp[0]).all()):
        valid = (torch.arange(T, device=z.device) <= fp[0]).to(z.dtype)  # (T,)
        return z.mean(1) * valid[None, :, None, None]  # (L, T, H, dh)
    off = fp[:, None] - torch.arange(T, device=z.device)[None, :]  # (B, T) offset from each prompt's end
    real = off >= 0
    sums = z.new_zeros(L, T, H, dh)  # by offset
    sums.index_add_(1, off[real], z[:, real])  # z[:, real]: (L, n_real, H, dh)
    counts = torch.zeros(T, dtype=z.dtype, device=z.device).index_add_(0, off[real], torch.ones_like(off[real], dtype=z.dtype))
    by_offset = sums / counts.clamp(min=1)[None, :, None, None]  # (L, offset, H, dh)
    out = by_offset[:, off.clamp(min=0)]  # (L, B, T, H, dh)
    return out * real[None, :, :, None, None].to(z.dtype)


def ablation_replacement(kind: Literal["zero", "mean"], cache: CleanCache, final_pos: Tensor) -> Tensor:
    """What ablation puts in place of each head's output, (layer, head, pos, d_head) shared by the prompts or
    (layer, head, batch, pos, d_head) per prompt: zeros, or :func:`head_mean_values`."""
    if kind == "zero":
        L, _, T, H, dh = cache.z.shape
        return cache.z.new_zeros(L, H, T, dh)
    if kind == "mean":
        means = head_mean_values(cache, final_pos)
        return means.permute(0, 2, 1, 3) if means.dim() == 4 else means.permute(0, 3, 1, 2, 4)
    raise ValueError(f"unknown ablation {kind!r}")


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
    head ``heads[i]``'s output z changes by ``dz[i]`` (n, pos, d_head)."""
    attn_pre = cache.attn_pre[layer, prompts] + head_delta(runner.w.W_O[layer], heads, dz)
    attn_out, _ = runner.post_attention(layer, attn_pre)
    return runner.after_attention(layer, cache.resid_pre[layer, prompts], attn_out, cache.mlp_out[layer, prompts])


def shared_prefix(tokens: Tensor, final_pos: Tensor) -> int:
    """How many first positions every prompt shares (e.g. the BOS token), up to the earliest final position.

    A replacement that is the same for every prompt (zero, or the mean over prompts) changes those positions in
    the same way for every prompt, so a sweep computes them once per head.
    """
    limit = int(final_pos.min())
    same = (tokens[:, :limit] == tokens[:1, :limit]).all(0)
    return int(limit if bool(same.all()) else same.long().argmin())


def head_entry(key: Hashable, runner: Runner, cache: CleanCache, layer: int, heads: Tensor, replacement: Tensor,
               final_pos: Tensor, correct: Tensor, incorrect: Tensor, prefix: int = 0) -> Entry:
    """Sweep items for each head in ``heads`` × each of ``cache``'s prompts, the head's z replaced.

    ``replacement`` is (n_heads_swept, pos, d_head), shared by the prompts, or (n_heads_swept, batch, pos,
    d_head), one per prompt. Items are head-major: item ``i`` is head ``heads[i // batch]`` on prompt
    ``i % batch``; ``final_pos``, ``correct`` and ``incorrect`` are per prompt. With ``prefix`` (at most
    :func:`shared_prefix`; replacement shared by the prompts) the first positions run once per head.
    """
    dev = runner.device
    B = cache.z.shape[1]
    heads = heads.to(dev)
    if prefix and replacement.dim() != 3:
        raise ValueError("a shared prefix needs a replacement shared by the prompts")

    def make(idx: Tensor) -> Tensor:
        hi, b = idx // B, idx % B
        h = heads[hi]
        old = cache.z[layer, b, :, h]  # (n, T, dh)
        new = replacement[hi] if replacement.dim() == 3 else replacement[hi, b]
        return with_head_change(runner, cache, layer, b, h, new - old)

    prefix_kv = None
    if prefix:  # the shared positions of every head's change, run once (prompt 0 stands for all)
        first = make(torch.arange(len(heads), device=dev) * B)[:, :prefix]
        trace = runner.trace_keys_values(layer, runner.attn_entry_stage, first)

        def prefix_kv(l: int, idx: Tensor) -> tuple[Tensor, Tensor]:
            k, v = trace[l]
            return k[idx // B], v[idx // B]

    rep = lambda t: t.to(dev).repeat(len(heads), *([1] * (t.dim() - 1)))  # noqa: E731  head-major
    return Entry(key=key, layer=layer, stage=runner.attn_entry_stage, make=make, final_pos=rep(final_pos),
                 correct=rep(correct), incorrect=rep(incorrect), prefix=prefix, prefix_kv=prefix_kv)


def position_entries(key: Hashable, runner: Runner, layer: int, stage: str, base: Tensor, delta: Tensor,
                     kv: list[tuple[Tensor, Tensor]], final_pos: Tensor, correct: Tensor, incorrect: Tensor,
                     ) -> list[Entry]:
    """One entry per position p, keyed ``(*key, p)``: items = rows of ``base`` with ``delta`` added at p only.

    ``base`` (n, T, D) is the residual stream at (``layer``, ``stage``) of the run being patched, ``delta`` (n, T,
    D) the change at each position, and ``kv[l]`` that run's keys and values at layer ``l`` (see
    :meth:`Runner.keys_values`): positions < p are unchanged, so the items skip them.
    """
    T = base.shape[1]
    key = key if isinstance(key, tuple) else (key,)
    out = []
    for p in range(T):
        def make(b: Tensor, p: int = p) -> Tensor:  # items: the rows
            x = base[b].clone()
            x[:, p] += delta[b, p]
            return x

        def prefix_kv(l: int, b: Tensor, p: int = p) -> tuple[Tensor, Tensor]:
            return kv[l][0][b, :p], kv[l][1][b, :p]
        out.append(Entry(key=(*key, p), layer=layer, stage=stage, make=make, final_pos=final_pos, correct=correct,
                         incorrect=incorrect, prefix=p, prefix_kv=prefix_kv))
    return out
