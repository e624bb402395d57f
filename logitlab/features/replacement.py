"""The local replacement model of one prompt: the real model made linear from residual-stream writes to everything
downstream (Ameisen et al. 2025, "Circuit Tracing"; circuit-tracer's method).

Frozen at the prompt's own values: every attention pattern, every norm's scale (pre-attention, pre-MLP,
post-attention, final). Each MLP is replaced by its transcoder: the active features write ``a · W_dec[f]`` into
the residual stream after the MLP, an *error node* per (layer, position) writes the rest of the real MLP output
(``mlp_out − decode(features) − b_dec − skip``), and a skip connection (``mlp_in @ W_skip``), when the transcoder
has one, stays a linear path (as in circuit-tracer). What remains is affine in the writes:

    value of any target = Σ_sources  write_s · (∂target / ∂write_s)  +  bias

where the bias collects every constant (norm biases, attention value and output biases, ``b_dec``, learned
position embeddings, ``b_enc``, the unembedding bias) and is computed by one forward pass with every write zero.

Position 0 (BOS), as in circuit-tracer, has no feature or error nodes: its MLP outputs are frozen at their real
values and so belong to the bias. Its token embedding is a node.

Invariant (tests/unit/test_features_graph.py): with the real writes, :meth:`Replacement.forward` reproduces the
real model's MLP inputs and pre-cap logits exactly; :meth:`Replacement.backward` is the transpose of the same
linear map (checked by finite differences and against the real pre-activations).

The transposes are written out by hand (no autograd): a chunk of targets walks down the layers once, its
cotangent (chunk, pos, d_model) the only large tensor held, and each layer's source edges are read off on the way.

Shapes: chunk B, positions T, heads H, KV heads K, d_model D, d_head dh, layers L.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet

__all__ = ["Replacement", "build_replacement", "massive_positions", "MASSIVE_RATIO"]


@dataclass
class Replacement:
    """The frozen, linear replacement of one prompt (batch of one) in ``dtype``."""

    spec: object
    dtype: torch.dtype
    T: int
    live: Tensor  # (T,) positions with feature and error nodes (all but 0 when BOS is zeroed)
    ln1: Tensor | None  # (L, T) pre-attention norm scales (None without pre-norms)
    ln2: Tensor | None  # (L, T) pre-MLP norm scales
    post1: Tensor | None  # (L, T) post-attention norm scales
    final: Tensor  # (T,) final norm scale
    pattern: Tensor  # (L, H, T, T)
    w: dict[str, Tensor | None]  # per-layer weights in dtype (W_V, b_V, W_O, b_O, ln*_w/b, post1_w), lnf_w/b
    skip: list[Tensor | None]  # per layer W_skip (D, D) or None
    b_dec: Tensor  # (L, D)
    frozen_out: Tensor  # (L, T, D) real MLP outputs (used at positions that are not live)
    embed: Tensor  # (T, D) token embeddings as the model adds them (times any embedding scale)
    pos_embed: Tensor | None  # (T, D) learned position embeddings (a constant)

    # ---- the frozen norms ---------------------------------------------------------------------------
    def _norm(self, x: Tensor, scale: Tensor | None, w: Tensor | None, b: Tensor | None, bias: bool) -> Tensor:
        """Norm of (B, T, D) with a frozen (T,) scale; the identity where the model has no such norm."""
        if scale is None:
            return x
        if self.spec.normalization == "LN":  # type: ignore[attr-defined]
            x = x - x.mean(-1, keepdim=True)
        y = x / scale[:, None]
        if w is not None:
            y = y * w
        if bias and b is not None:
            y = y + b
        return y

    def _norm_T(self, g: Tensor, scale: Tensor | None, w: Tensor | None) -> Tensor:
        """Transpose of :meth:`_norm`'s linear part (centring is symmetric)."""
        if scale is None:
            return g
        y = g * w if w is not None else g
        y = y / scale[:, None]
        if self.spec.normalization == "LN":  # type: ignore[attr-defined]
            y = y - y.mean(-1, keepdim=True)
        return y

    def _scale(self, name: str, layer: int) -> Tensor | None:
        s = getattr(self, name)
        return None if s is None else s[layer]

    # ---- attention ------------------------------------------------------------------------------------
    def attention(self, layer: int, r: Tensor, bias: bool) -> Tensor:
        """What layer ``layer``'s frozen attention adds to the residual stream, from resid_pre (B, T, D)."""
        w, s = self.w, self.spec
        n = self._norm(r, self._scale("ln1", layer), w["ln1_w"][layer], w["ln1_b"][layer], bias)
        v = torch.einsum("btd,kde->btke", n, w["W_V"][layer])  # (B, T, K, dh)
        if bias:
            v = v + w["b_V"][layer]
        group = s.n_heads // s.n_kv_heads  # type: ignore[attr-defined]
        if group > 1:  # each KV head serves `group` consecutive query heads
            v = v.repeat_interleave(group, dim=2)  # (B, T, H, dh)
        z = torch.einsum("hqk,bkhe->bqhe", self.pattern[layer], v)  # (B, T, H, dh)
        out = torch.einsum("bqhe,hed->bqd", z, w["W_O"][layer])  # (B, T, D)
        if bias:
            out = out + w["b_O"][layer]
        if self.post1 is not None:
            out = self._norm(out, self.post1[layer], w["post1_w"][layer], None, bias)
        return out

    def attention_T(self, layer: int, g: Tensor) -> Tensor:
        """Transpose of :meth:`attention`'s linear part: cotangent at attn_out → cotangent at resid_pre."""
        w, s = self.w, self.spec
        if self.post1 is not None:
            g = self._norm_T(g, self.post1[layer], w["post1_w"][layer])
        gz = torch.einsum("bqd,hed->bqhe", g, w["W_O"][layer])  # (B, T, H, dh)
        gv = torch.einsum("hqk,bqhe->bkhe", self.pattern[layer], gz)  # (B, T, H, dh)
        K = s.n_kv_heads  # type: ignore[attr-defined]
        gv = gv.unflatten(2, (K, -1)).sum(3)  # (B, T, K, dh): a KV head's query heads add up
        gn = torch.einsum("btke,kde->btd", gv, w["W_V"][layer])
        return self._norm_T(gn, self._scale("ln1", layer), w["ln1_w"][layer])

    # ---- MLP input and replacement output ------------------------------------------------------------
    def mlp_in(self, layer: int, r: Tensor, bias: bool) -> Tensor:
        """The MLP's (transcoder's) input from the residual stream it reads (resid_mid, or resid_pre if parallel)."""
        w = self.w
        return self._norm(r, self._scale("ln2", layer), w["ln2_w"][layer], w["ln2_b"][layer], bias)

    def mlp_in_T(self, layer: int, g: Tensor) -> Tensor:
        return self._norm_T(g, self._scale("ln2", layer), self.w["ln2_w"][layer])

    def mlp_out(self, layer: int, m_in: Tensor, writes: Tensor | None, bias: bool) -> Tensor:
        """The replacement MLP's output: node writes + skip path + b_dec at live positions; the real (frozen)
        output elsewhere (a constant, so only with ``bias``)."""
        live = self.live.to(m_in.dtype)[:, None]  # (T, 1)
        out = torch.zeros_like(m_in) if writes is None else writes.clone()
        if self.skip[layer] is not None:
            out = out + (m_in @ self.skip[layer]) * live
        if bias:
            out = out + self.b_dec[layer] * live + self.frozen_out[layer] * (1 - live)
        return out

    def skip_T(self, layer: int, g: Tensor) -> Tensor | None:
        """Transpose of the skip path: cotangent at mlp_out → cotangent at mlp_in (None without a skip)."""
        W = self.skip[layer]
        if W is None:
            return None
        return (g * self.live.to(g.dtype)[:, None]) @ W.T

    # ---- whole passes -----------------------------------------------------------------------------------
    def forward(self, embed: Tensor, writes: Tensor | None, bias: bool = True) -> tuple[Tensor, Tensor]:
        """The frozen affine forward pass.

        Args:
            embed: (B, T, D) token embeddings written at resid_pre of layer 0.
            writes: (L, B, T, D) what feature and error nodes write after each MLP, or None (none).
            bias: include every constant term (False: the linear part only).

        Returns:
            The MLP inputs (L, B, T, D) and the final norm's output (B, T, D) (before the unembedding).
        """
        s, L = self.spec, len(self.skip)
        r = embed + self.pos_embed if (bias and self.pos_embed is not None) else embed.clone()
        m_ins = []
        for layer in range(L):
            w_l = None if writes is None else writes[layer]
            if s.parallel:  # type: ignore[attr-defined]
                m_in = self.mlp_in(layer, r, bias)
                r = r + self.attention(layer, r, bias) + self.mlp_out(layer, m_in, w_l, bias)
            else:
                mid = r + self.attention(layer, r, bias)
                m_in = self.mlp_in(layer, mid, bias)
                r = mid + self.mlp_out(layer, m_in, w_l, bias)
            m_ins.append(m_in)
        normed = self._norm(r, self.final, self.w["lnf_w"], self.w["lnf_b"], bias)
        return torch.stack(m_ins), normed

    def backward(self, G: Tensor, inject: dict[int, Tensor], top: int,
                 read: "callable") -> Tensor:  # type: ignore[valid-type]
        """Walk a chunk's cotangents down the layers.

        Args:
            G: (B, T, D) cotangent at the final residual stream (logit targets), zeros for other rows.
            inject: layer → (B, T, D) cotangent at that layer's MLP input (feature targets at that layer).
            top: the highest layer any row of the chunk starts at.
            read: ``read(layer, G)`` is called with the cotangent at resid_post of ``layer`` (what the layer's
                feature and error nodes write into) before the walk goes below it.

        Returns:
            The cotangent at resid_pre of layer 0 (what the token embeddings write into).
        """
        s = self.spec
        for layer in range(top, -1, -1):
            read(layer, G)
            gm = inject.get(layer)
            sk = self.skip_T(layer, G)
            if sk is not None:
                gm = sk if gm is None else gm + sk
            if s.parallel:  # type: ignore[attr-defined]
                G = G + self.attention_T(layer, G) + (0 if gm is None else self.mlp_in_T(layer, gm))
            else:
                mid = G if gm is None else G + self.mlp_in_T(layer, gm)
                G = mid + self.attention_T(layer, mid)
        return G


def _norm_scale(x: Tensor, normalization: str, eps: float) -> Tensor:
    """The scale (…,) a norm divides ``x`` (…, D) by, as logitlab's runner computes it, in float64."""
    x = x.double()
    if normalization == "LN":
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1) + eps).sqrt()


#: A position whose residual stream is this many times the median (over positions after BOS) at some layer holds
#: a massive activation (Sun et al. 2024, "Massive activations in large language models"). On the built-in
#: Gemma-3-270M the first delimiter of a prompt (a comma, a lone space) is 11–15× the median from layer 0 on; every
#: other position stays below 3×.
MASSIVE_RATIO = 6.0


def massive_positions(cache: object, ratio: float = MASSIVE_RATIO) -> list[int]:
    """Positions after BOS whose residual-stream norm after some layer is at least ``ratio`` × that layer's median
    over the positions after BOS (``cache``: a one-prompt ``run_with_cache``)."""
    c: Any = cache
    post = torch.cat([c.resid_pre[1:, 0], c.resid_final])  # (L, T, D): after each layer
    n = post.double().norm(dim=-1)[:, 1:]  # (L, T − 1)
    if n.shape[1] < 2:
        return []
    big = (n >= ratio * n.median(dim=1, keepdim=True).values).any(0)
    return [int(p) + 1 for p in big.nonzero().flatten().tolist()]


def build_replacement(runner: object, tokens: Tensor, dictionaries: DictionarySet, cache: object,
                      dtype: torch.dtype = torch.float32, zero_first: bool = True,
                      frozen: list[int] | tuple[int, ...] = ()) -> Replacement:
    """The frozen replacement of one prompt from the real run's ``cache`` (``runner.run_with_cache(tokens)``).

    ``frozen``: positions treated as BOS is with ``zero_first`` (no feature or error nodes; the MLP outputs are
    constants at their real values), e.g. :func:`massive_positions`.

    Raises:
        LogitlabError: the model is not on logitlab's own forward pass, or the dictionaries do not fit it.
    """
    s = runner.spec  # type: ignore[attr-defined]
    if not hasattr(runner, "pre_norm"):
        raise LogitlabError("attribution graphs need logitlab's own forward pass (staged runner); this model runs on "
                            "the hooked fallback")
    if len(dictionaries.layers) != s.n_layers:
        raise LogitlabError(f"the dictionaries have {len(dictionaries.layers)} layers, the model {s.n_layers}")
    for i, tc in enumerate(dictionaries.layers):
        if tc.W_enc.shape[0] != s.d_model or tc.W_dec.shape[1] != s.d_model:
            raise LogitlabError(f"layer {i}'s dictionary maps {tc.W_enc.shape[0]} → {tc.W_dec.shape[1]} dimensions; "
                                f"the model's d_model is {s.d_model}")
    if dictionaries.input_point != "mlp_in" or dictionaries.output_point != "mlp_out":
        raise LogitlabError("attribution graphs need transcoders reading mlp_in and writing mlp_out")
    w, c = runner.w, cache  # type: ignore[attr-defined]
    dev = runner.device  # type: ignore[attr-defined]
    T, L = tokens.shape[-1], s.n_layers
    to = lambda t: None if t is None else t.to(dev, dtype)  # noqa: E731
    resid_pre, resid_mid = c.resid_pre[:, 0], c.resid_mid[:, 0]  # (L, T, D)
    ln1 = ln2 = None
    if s.pre_norms:
        ln1 = to(_norm_scale(resid_pre, s.normalization, s.eps))  # (L, T)
        ln2 = to(_norm_scale(resid_pre if s.parallel else resid_mid, s.normalization, s.eps))
    post1 = None if c.post_attn_scale is None else to(_norm_scale(c.attn_pre[:, 0], s.normalization, s.eps))
    weights = {"W_V": to(w.W_V), "b_V": to(w.b_V), "W_O": to(w.W_O), "b_O": to(w.b_O), "ln1_w": to(w.ln1_w),
               "ln1_b": to(w.ln1_b), "ln2_w": to(w.ln2_w), "ln2_b": to(w.ln2_b), "post1_w": to(w.post1_w),
               "lnf_w": to(w.lnf_w), "lnf_b": to(w.lnf_b)}
    if not s.pre_norms:
        for k in ("ln1_w", "ln1_b", "ln2_w", "ln2_b"):
            weights[k] = [None] * L  # type: ignore[assignment]
    live = torch.ones(T, dtype=torch.bool, device=dev)
    if zero_first:
        live[0] = False
    for p in frozen:
        if not 0 <= p < T:
            raise LogitlabError(f"frozen position {p} is outside the prompt's {T} positions")
        live[p] = False
    return Replacement(
        spec=s, dtype=dtype, T=T, live=live, ln1=ln1, ln2=ln2, post1=post1,
        final=to(_norm_scale(c.resid_final[0], s.normalization, s.eps)),
        pattern=to(c.pattern[:, 0]), w=weights,
        skip=[to(tc.W_skip) for tc in dictionaries.layers],
        b_dec=torch.stack([to(tc.b_dec) for tc in dictionaries.layers]),
        frozen_out=to(c.mlp_out[:, 0]), embed=to(c.embed[0]),
        pos_embed=None if c.pos_embed is None else to(c.pos_embed[0]),
    )
