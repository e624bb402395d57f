"""Attention kernels the fused scaled-dot-product kernel cannot run: soft-capped scores (Gemma-2).

Shapes: batch B, query positions Tq, key positions T, heads H, KV heads K, d_head dh.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab.model.readout import wide
from logitlab.model.spec import ArchSpec

__all__ = ["softcapped_attention"]


def softcapped_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, s: ArchSpec,
                         need_pattern: bool) -> tuple[Tensor, Tensor | None]:
    """Attention with soft-capped scores (Gemma-2): tanh(q·k · scale / cap) · cap, masked, softmax, · v.

    The fused kernel cannot cap its scores, so a soft-capped model runs this explicit path everywhere (clean
    run, sweeps, graph forward, gradients: one path, so "ablating nothing" reproduces the baseline). It works
    on the whole batch at once, as the fused kernel does; the pattern it computes is the one z is made of.
    """
    cap = s.attn_softcap
    assert cap is not None
    group = s.n_heads // s.n_kv_heads
    if group > 1:  # grouped KV heads: each KV head serves `group` consecutive query heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * s.attn_scale  # (B, H, Tq, T)
    scores = torch.tanh(scores / cap) * cap
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    pattern = torch.softmax(wide(scores), dim=-1).to(q.dtype)
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # (B, Tq, H, dh)
    return z, (pattern if need_pattern else None)
