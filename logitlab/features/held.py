"""The intervened forward pass of :mod:`logitlab.features.interventions`, with parts of the model held at the clean
run's values.

Each layer's MLP output is replaced by its transcoder's output plus the layer's error term held at its clean value
(real MLP output − transcoder output on the clean run, per position), and feature activations are edited; with
nothing held this is the real model's response (logitlab's staged runner: real attention, real norms).

An attribution graph (:func:`~logitlab.features.graph.attribute`) is exact for the *local replacement model*:
attention patterns and norm scales frozen at the prompt's values, every active feature linear in its
pre-activation. The real model moves all three. ``hold`` names what this pass holds at the clean run's values:

* ``"gates"``: each feature's on/off state (active features follow their pre-activations, inactive ones stay off;
  JumpReLU and TopK features otherwise switch on and off under small changes);
* ``"attention"``: every head's attention pattern; the values are recomputed from the changed residual stream
  (queries and keys, and so any query/key norm, are not used);
* ``"norms"``: the scale of every norm on the residual stream (before attention, before the MLP, after
  attention, the final one): x / s_clean · w (+ b), centred first on LayerNorm models.

With all three held the pass is the graph's linear model computed by the real model's code, so zeroing a feature
changes the logit difference by exactly the graph's prediction (tested on every kind); releasing one hold at a
time shows which part of the model the graph's linearisation misses. Dictionaries that read the MLP's output
(SAEs) read the real MLP, whose own norms cannot be held here: only ``"gates"`` is accepted for them.

``mlps="model"`` runs the real model itself instead of the replacement: every MLP is the model's own, and an edit
changes its layer's MLP output by what it changes in the transcoder's output on the same input (decode of the
edited activations minus decode of the unedited ones). With no edit it is the real model; downstream layers respond
through the real MLPs, not through transcoders and held errors (whose Jacobian is the transcoder's, not the
MLP's). ``"attention"`` and ``"norms"`` can be held with it, not ``"gates"`` (no downstream feature has a gate).
With both held, the pass differs from the graph's linear model only in the MLPs (each with its own post-norm, as
the transcoder replaces it): their first-order response is the real MLPs' Jacobian instead of the transcoders',
so comparing the two isolates what the dictionaries get wrong from what frozen attention and norms do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet

__all__ = ["HOLDS", "MLPS", "CleanState", "clean_state", "held_forward"]

HOLDS = ("gates", "attention", "norms")


@dataclass(frozen=True)
class CleanState:
    """What the clean run fixes, per layer: errors (T, D) and gates (T, F) in the dictionaries' dtype; the scales
    (1, T) of the norms before attention and before the MLP and after attention (None where the model has no such
    norm); attention patterns (1, H, T, T) (empty unless asked for); the final norm's scale (1, T)."""

    errors: list[Tensor]
    gates: list[Tensor]
    pre_scales: list[tuple[Tensor | None, Tensor | None]]
    post_scales: list[Tensor | None]
    patterns: list[Tensor]
    final_scale: Tensor
    frozen: Tensor | None = None  # (T,) bool: positions whose replacement MLP outputs stay at the clean run's
    clean_out: list[Tensor] | None = None  # per layer (T, D) the clean MLP outputs


#: What runs in place of each MLP: the transcoder plus the clean error (the replacement), or the model's own MLP.
MLPS = ("transcoders", "model")


def _check_holds(hold: frozenset[str], ds: DictionarySet, mlps: str = "transcoders") -> None:
    unknown = sorted(hold - set(HOLDS))
    if unknown:
        raise LogitlabError(f"unknown hold {unknown}", f"any of: {', '.join(HOLDS)}")
    if mlps not in MLPS:
        raise LogitlabError(f"unknown mlps {mlps!r}", f"one of: {', '.join(MLPS)}")
    if mlps == "model" and hold - {"attention", "norms"}:
        raise LogitlabError(f"with the model's own MLPs only attention and norms can be held, not "
                            f"{sorted(hold - {'attention', 'norms'})}", "gates are held in the replacement "
                            "(mlps='transcoders')")
    if ds.input_point == "mlp_out" and hold - {"gates"}:
        raise LogitlabError("dictionaries that read the MLP's output run the real MLP, whose own norms cannot be "
                            "held", "hold only the gates with these dictionaries")


def _norm_scale(r: Any, x: Tensor) -> Tensor:
    return r._norm(x)[1]


def clean_state(r: Any, tokens: Tensor, ds: DictionarySet, patterns: bool = False,
                frozen: list[int] | tuple[int, ...] = ()) -> CleanState:
    """The clean run's errors, gates, norm scales and (with ``patterns``) attention patterns; ``ds`` in the
    dtype and on the device the pass runs in. ``frozen``: positions whose replacement MLP outputs the passes
    hold at the clean run's (an attribution graph's frozen positions)."""
    s = r.spec
    errors, gates, pre_scales, post_scales, pats, outs = [], [], [], [], [], []
    x = r.embed_sum(tokens)
    for layer in range(s.n_layers):
        z, p = r.attention(layer, x, None, patterns)
        if patterns:
            pats.append(p)
        attn_out, post = r.post_attention(layer, r.heads_to_attn_pre(layer, z))
        src = x if s.parallel else x + attn_out
        pre_scales.append((_norm_scale(r, x), _norm_scale(r, src)) if s.pre_norms else (None, None))
        post_scales.append(post)
        true_out = r.mlp(layer, src)
        tc = ds.layers[layer]
        dt = tc.W_enc.dtype
        xin = (true_out if ds.input_point == "mlp_out" else r.pre_norm(layer, 2, src)).to(dt)
        f = tc.encode(xin)
        errors.append((true_out.to(dt) - tc.decode(f, xin))[0])
        gates.append((f[0] != 0).to(dt))
        outs.append(true_out[0])
        x = x + attn_out + true_out
    mask = None
    if len(frozen):
        mask = torch.zeros(tokens.shape[-1], dtype=torch.bool, device=x.device)
        mask[list(frozen)] = True
    return CleanState(errors, gates, pre_scales, post_scales, pats, r.final_norm(x)[1], mask, outs)


def _scaled(r: Any, x: Tensor, scale: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    """A norm with its scale held: (x − mean on LayerNorm) / scale · w + b, in x's dtype (as the runner's norm)."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if r.spec.normalization == "LN":
        xf = xf - xf.mean(-1, keepdim=True)
    out = xf / scale[..., None].to(xf.dtype)
    if w is not None:
        out = out * w.to(xf.dtype)
    if b is not None:
        out = out + b.to(xf.dtype)
    return out.to(x.dtype)


@contextlib.contextmanager
def _norms_held(r: Any, st: CleanState) -> Iterator[None]:
    """The runner's residual-stream norms (before attention and the MLP, after attention) with the clean scales,
    for the duration (its own methods call them, so attention's queries, keys and values read them too)."""
    w = r.w

    def pre_norm(layer: int, which: int, x: Tensor) -> Tensor:
        if not r.spec.pre_norms:
            return x
        wt, bs = (w.ln1_w, w.ln1_b) if which == 1 else (w.ln2_w, w.ln2_b)
        return _scaled(r, x, st.pre_scales[layer][which - 1], wt[layer], None if bs is None else bs[layer])

    def post_attention(layer: int, attn_pre: Tensor) -> tuple[Tensor, Tensor | None]:
        scale = st.post_scales[layer]
        if scale is None:
            return attn_pre, None
        return _scaled(r, attn_pre, scale, w.post1_w[layer], None), scale

    r.pre_norm, r.post_attention = pre_norm, post_attention  # instance attributes shadow the methods
    try:
        yield
    finally:
        del r.pre_norm, r.post_attention


def held_forward(r: Any, tokens: Tensor, ds: DictionarySet, st: CleanState, mul: Tensor | None,
                 add: Tensor | None, batch: int, hold: frozenset[str] = frozenset(),
                 mlps: str = "transcoders") -> Tensor:
    """Pre-cap logits at the last position, (batch, vocab), of ``batch`` intervened copies of the prompt
    ``tokens`` (1, T): each layer's MLP output is ``decode(f·mul + add) + error``, f the transcoder's activations
    on the layer's (recomputed) input; ``mul``/``add`` (batch, L, T, F) or None. ``hold``, ``mlps``: module
    docstring."""
    _check_holds(hold, ds, mlps)
    if "attention" in hold and not st.patterns:
        raise LogitlabError("internal: holding attention needs the clean patterns (clean_state(…, patterns=True))")
    s = r.spec
    group = s.n_heads // s.n_kv_heads
    dt = ds.layers[0].W_enc.dtype
    with _norms_held(r, st) if "norms" in hold else contextlib.nullcontext():
        x = r.embed_sum(tokens.expand(batch, -1))
        for layer in range(s.n_layers):
            if "attention" in hold:
                _, v = r.keys_values(layer, x)  # (B, T, K, dh), through the (possibly held) norm
                z = torch.einsum("hqk,bkhe->bqhe", st.patterns[layer][0].to(v.dtype),
                                 v.repeat_interleave(group, dim=2) if group > 1 else v)
            else:
                z, _ = r.attention(layer, x, None, False)
            attn_out, _ = r.post_attention(layer, r.heads_to_attn_pre(layer, z))
            src = x if s.parallel else x + attn_out
            tc = ds.layers[layer]
            if mlps == "model":
                x = x + attn_out + _model_mlp(r, layer, src, tc, ds.input_point, mul, add, dt)
                continue
            xin = (r.mlp(layer, src) if ds.input_point == "mlp_out" else r.pre_norm(layer, 2, src)).to(dt)
            f = tc.pre(xin) * st.gates[layer] if "gates" in hold else tc.encode(xin)
            if mul is not None:
                f = f * mul[:, layer]
            if add is not None:
                f = f + add[:, layer]
            out = (tc.decode(f, xin) + st.errors[layer]).to(x.dtype)
            if st.frozen is not None:
                out = torch.where(st.frozen[:, None], st.clean_out[layer].to(x.dtype), out)
            x = x + attn_out + out
        last = x[:, -1]
        w = r.w
        normed = _scaled(r, last, st.final_scale[:, -1].expand(batch), w.lnf_w, w.lnf_b) if "norms" in hold \
            else r.final_norm(last)[0]
    return normed @ w.W_U + w.b_U


def _model_mlp(r: Any, layer: int, src: Tensor, tc: Any, point: str, mul: Tensor | None, add: Tensor | None,
               dt: torch.dtype) -> Tensor:
    """The model's own MLP output on ``src``, changed by what the edits at ``layer`` change in the transcoder's
    output on the same input (nothing where the layer has no edit)."""
    out = r.mlp(layer, src)
    m = None if mul is None else mul[:, layer]
    a = None if add is None else add[:, layer]
    if (m is None or bool((m == 1).all())) and (a is None or not bool(a.any())):
        return out
    xin = (out if point == "mlp_out" else r.pre_norm(layer, 2, src)).to(dt)
    f = tc.encode(xin)
    fe = f if m is None else f * m
    fe = fe if a is None else fe + a
    return out + (tc.decode(fe, xin) - tc.decode(f, xin)).to(out.dtype)
