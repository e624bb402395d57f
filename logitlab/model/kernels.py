"""Attention the fused scaled-dot-product kernel cannot run: soft-capped scores (Gemma-2), attention sinks (gpt-oss).

Shapes: batch B, query positions Tq, key positions T, heads H, KV heads K, d_head dh.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitlab.model.readout import wide
from logitlab.model.spec import ArchSpec

__all__ = ["explicit_attention"]


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, s: ArchSpec, need_pattern: bool,
                       sinks: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Attention written out: scores q·k · scale, soft-capped if the model caps them (Gemma-2:
    tanh(score / cap) · cap), masked, a softmax over each query's keys and its head's sink logit if the model has
    sinks (gpt-oss), then · v.

    **Sinks.** ``sinks`` (H,) is a learned logit per head that joins every query row's softmax as one more column
    and is dropped after it: the pattern's rows sum to less than 1 (the rest goes to "nothing"), and z is that
    pattern times the values (the value biases included: they are not folded into the output bias, as each row's
    weights no longer sum to 1).

    The fused kernel can do neither, so such a model runs this explicit path everywhere (clean run, sweeps, graph
    forward, gradients: one path, so "ablating nothing" reproduces the baseline). It works on the whole batch at
    once, as the fused kernel does; the pattern it returns (without the sink column) is the one z is made of.
    """
    cap = s.attn_softcap
    group = s.n_heads // s.n_kv_heads
    if group > 1:  # grouped KV heads: each KV head serves `group` consecutive query heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * s.attn_scale  # (B, H, Tq, T)
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    if sinks is None:
        pattern = torch.softmax(wide(scores), dim=-1).to(q.dtype)
    else:
        B, H, Tq, _ = scores.shape
        sink = wide(sinks).reshape(1, H, 1, 1).expand(B, H, Tq, 1)  # (B, H, Tq, 1): one more column per row
        pattern = torch.softmax(torch.cat([wide(scores), sink], dim=-1), dim=-1)[..., :-1].to(q.dtype)
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # (B, Tq, H, dh)
    return z, (pattern if need_pattern else None)

