"""logitlab's own forward pass over a bridge's processed weights, with entry points for interventions.

Why not run every intervention through TransformerLens hooks? A sweep then needs one full forward per
intervention, recomputing layers the intervention cannot change and full-vocabulary logits the metric never
reads. This runner exposes the transformer as stages (embed → per layer: attention, post-attention norm,
MLP → final norm) so a sweep can start at the layer an intervention touches, batch many interventions
together, and score only the answer logits. Its outputs are tested against the Hugging Face and bridge
forward passes for every supported architecture.

How a block's pieces connect is written once, in :meth:`Runner.layer`; every path runs it: the cached clean
run, :meth:`Runner.run_from` (items entering at a layer's pre/mid/post point), the sweep engine's growing
batch (``join``), the cached-prefix path (``prefix_kv``), FLOP counting (:meth:`Runner.layer_flops` runs it on
meta tensors) and gradients (:meth:`Runner.grad_run`, autograd through it).

Shapes: batch B, positions T, heads H, KV heads K, d_model D, d_head dh.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from logitlab.model.backend import GRAD, SWEEP
from logitlab.model.kernels import explicit_attention
from logitlab.model.moe import moe_forward
from logitlab.model.readout import CleanCache, Readout, wide
from logitlab.model.rotary import Rotary, apply_rope, rope_cos_sin
from logitlab.model.spec import ArchSpec, Weights

__all__ = ["Runner", "CleanCache", "Join", "STAGES"]

#: Entry points of a layer: before its attention, before its MLP (sequential blocks only), after it.
STAGES = ("pre", "mid", "post")

Join = Callable[[int, str], "tuple[Tensor, Tensor] | None"]
"""``join(layer, point)`` → the residual streams (n, pos, D) and final positions (n,) of the items entering the
batch at ``point`` (``"pre"``: before the layer's attention; ``"mid"``: before its MLP), or None."""


class Runner(Readout):
    """A decoder-only transformer forward pass split into stages (the staged backend)."""

    capabilities = frozenset({SWEEP, GRAD})

    def __init__(self, spec: ArchSpec, weights: Weights) -> None:
        super().__init__(spec, weights)
        self._rope_cache: dict[tuple[int, Rotary, str], tuple[Tensor, Tensor]] = {}
        self._flop_memo: dict[tuple, float] = {}
        self._fuse()

    def _fuse(self) -> None:
        """Lay the weights out for few, large, fast matrix products.

        Every projection is stored as contiguous (out, in) rows, the layout ``F.linear`` and oneDNN read
        directly; query, key and value projections become one ((H + 2K)·d_head, d_model) matrix per layer.
        ``self.w`` keeps its TransformerLens layout as views into these (no second copy). Biases that are all
        zero are skipped.
        """
        w, s = self.w, self.spec
        L, H, K, dh, D = s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model
        rows = lambda W: W.transpose(-1, -2).reshape(L, -1, D)  # noqa: E731  (L, heads, D, dh) -> (L, heads·dh, D)
        self._W_qkv = torch.cat([rows(w.W_Q), rows(w.W_K), rows(w.W_V)], dim=1).contiguous()
        heads = lambda a, b, n: self._W_qkv[:, a:b].unflatten(1, (n, dh)).transpose(-1, -2)  # noqa: E731
        nq, nk = H * dh, K * dh
        self._W_O = w.W_O.reshape(L, H * dh, D).transpose(1, 2).contiguous()  # (L, D, H·dh)
        self._W_in = w.W_in.transpose(1, 2).contiguous()  # (L, d_mlp, D)
        self._W_gate = None if w.W_gate is None else w.W_gate.transpose(1, 2).contiguous()
        self._W_out = w.W_out.transpose(1, 2).contiguous()  # (L, D, d_mlp)
        b_qkv = torch.cat([w.b_Q.reshape(L, -1), w.b_K.reshape(L, -1), w.b_V.reshape(L, -1)], dim=-1)
        nonzero = lambda b: b if bool(b.any()) else None  # noqa: E731
        self._b_qkv, self._b_in, self._b_out, self._b_O = nonzero(b_qkv), nonzero(w.b_in), nonzero(w.b_out), nonzero(w.b_O)
        self.w = replace(
            w, W_Q=heads(0, nq, H), W_K=heads(nq, nq + nk, K), W_V=heads(nq + nk, nq + 2 * nk, K),
            W_O=self._W_O.transpose(1, 2).unflatten(1, (H, dh)), W_in=self._W_in.transpose(1, 2),
            W_gate=None if self._W_gate is None else self._W_gate.transpose(1, 2), W_out=self._W_out.transpose(1, 2))

    def _rms(self, x: Tensor, w: Tensor) -> Tensor:
        if self._fused_norm:  # float32: one kernel
            return F.rms_norm(x, x.shape[-1:], w, self.spec.eps)
        xf = wide(x)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.spec.eps) * wide(w)).to(x.dtype)

    def _qk_norm(self, x: Tensor, w: Tensor) -> Tensor:
        """Query or key RMSNorm of projected heads (B, T, heads, dh): per head, or over all heads together (OLMo-2:
        the norm runs on the concatenated heads, so each head's scale depends on every head of its row)."""
        return self._rms(x.flatten(-2), w).unflatten(-1, x.shape[-2:]) if self.spec.qk_norm_all_heads else self._rms(x, w)

    def pre_norm(self, layer: int, which: int, x: Tensor) -> Tensor:
        """The norm before attention (``which`` 1) or the MLP (2) of ``layer``; the identity without pre-norms."""
        if not self.spec.pre_norms:
            return x
        w = self.w
        return self._normed(x, w.ln1_w[layer], w.ln1_b[layer]) if which == 1 else \
            self._normed(x, w.ln2_w[layer], w.ln2_b[layer])

    def _act(self, x: Tensor) -> Tensor:
        if self.spec.act_fn == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        return F.gelu(x) if self.spec.act_fn == "gelu" else F.silu(x)

    def _rope(self, T: int, layer: int) -> tuple[Tensor, Tensor]:
        """cos and sin (T, rotary dim) of layer ``layer``'s rotary embedding for ``T`` positions (cached)."""
        rot = self.spec.rotary[layer]
        key = (T, rot, str(self.device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_cos_sin(rot, T, self.device)
        cos, sin = self._rope_cache[key]
        return cos.to(self.dtype), sin.to(self.dtype)

    _apply_rope = staticmethod(apply_rope)

    # ---- stages -------------------------------------------------------------------------------------
    def embed(self, tokens: Int[Tensor, "batch pos"]) -> tuple[Tensor, Tensor | None]:
        """Token embedding (times the model's embedding scale) and learned position embedding, if any."""
        emb = self.w.W_E[tokens]
        if self.spec.embed_scale != 1.0:
            emb = emb * torch.tensor(self.spec.embed_scale, dtype=self.dtype)
        pos = None
        if self.w.W_pos is not None:
            T = tokens.shape[1]
            pos = self.w.W_pos[:T][None].expand(tokens.shape[0], -1, -1)
        return emb, pos

    def _keys_values(self, layer: int, x: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Keys and values (after any key norm and rotary embedding) of normed inputs at positions start…"""
        s = self.spec
        K, dh = s.n_kv_heads, s.d_head
        bias = self._b_qkv
        kv = self._linear(x, self._W_qkv[layer, s.n_heads * dh:], None if bias is None else bias[layer, s.n_heads * dh:])
        k, v = kv[..., : K * dh].unflatten(-1, (K, dh)), kv[..., K * dh:].unflatten(-1, (K, dh))  # (B, T, K, dh)
        return self._finish_keys(layer, k, start), v

    def _finish_keys(self, layer: int, k: Tensor, start: int) -> Tensor:
        """Key norm and rotary embedding of projected keys (B, T, K, dh) at positions start…"""
        s = self.spec
        if s.qk_norm:
            k = self._qk_norm(k, self.w.k_norm_w[layer])
        if s.positional == "rotary":
            cos, sin = self._rope(start + k.shape[1], layer)
            k = self._apply_rope(k, cos[start:], sin[start:])
        return k

    def keys_values(self, layer: int, resid_pre: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor]:
        """The keys and values (B, T, K, dh) layer ``layer`` computes from ``resid_pre`` (positions 0…T-1).

        A sweep whose items share their first positions with a cached run passes these as ``prefix_kv``.
        """
        return self._keys_values(layer, self.pre_norm(layer, 1, resid_pre), 0)

    def attention(self, layer: int, resid_pre: Float[Tensor, "batch pos d_model"],
                  query_pos: Int[Tensor, " batch"] | None = None, need_pattern: bool = True,
                  prefix_kv: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-head outputs z (B, T, H, dh) and attention pattern (B, H, T, T) of one layer.

        With ``query_pos`` only that one query position per row is computed: z (B, 1, H, dh), pattern
        (B, H, 1, T) (the last layer of a sweep needs nothing else). Without ``need_pattern`` the pattern is
        not materialised (fused attention kernel) and None is returned for it. With ``prefix_kv`` (keys and
        values (B, P, K, dh) of positions 0…P-1, see :meth:`keys_values`) ``resid_pre`` holds positions P…
        only; ``query_pos`` stays absolute.
        """
        w, s = self.w, self.spec
        B, Tx, _ = resid_pre.shape
        H, dh = s.n_heads, s.d_head
        P = 0 if prefix_kv is None else prefix_kv[0].shape[1]
        x = self.pre_norm(layer, 1, resid_pre)
        rows = torch.arange(B, device=x.device)
        xq = x if query_pos is None else x[rows, query_pos - P][:, None]  # (B, Tq, D)
        bias = None if self._b_qkv is None else self._b_qkv[layer, : H * dh]
        q = self._linear(xq, self._W_qkv[layer, : H * dh], bias).unflatten(-1, (H, dh))  # (B, Tq, H, dh)
        k, v = self._keys_values(layer, x, P)  # (B, Tx, K, dh)
        if prefix_kv is not None:
            k, v = torch.cat([prefix_kv[0], k], dim=1), torch.cat([prefix_kv[1], v], dim=1)
        return self._attend(layer, q, k, v, P, query_pos, need_pattern)

    def _attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, P: int, query_pos: Tensor | None,
                need_pattern: bool) -> tuple[Tensor, Tensor | None]:
        """Attention of projected queries q (B, Tq, H, dh) (before query norm and rotary embedding) over final
        keys and values (B, T, K, dh); queries at positions P… (or ``query_pos``). Returns z and the pattern."""
        w, s = self.w, self.spec
        H, T = s.n_heads, k.shape[1]
        if s.qk_norm:
            q = self._qk_norm(q, w.q_norm_w[layer])
        idx = torch.arange(T, device=q.device)
        qidx = idx[None, P:, None] if query_pos is None else query_pos[:, None, None]  # (1 or B, Tq, 1)
        if s.positional == "rotary":
            cos, sin = self._rope(T, layer)
            q = self._apply_rope(q, cos[P:], sin[P:]) if query_pos is None else \
                self._apply_rope(q, cos[query_pos][:, None], sin[query_pos][:, None])
        allowed = idx[None, None, :] <= qidx  # causal: (1 or B, Tq, T)
        window = s.sliding_window[layer]
        if window is not None:
            allowed = allowed & (qidx - idx[None, None, :] < window)
        if s.attn_softcap is not None or s.attn_sinks:  # the explicit kernel: soft-capped scores, attention sinks
            return explicit_attention(q, k, v, allowed, s, need_pattern, w.sinks[layer] if s.attn_sinks else None)
        # z always comes from the fused kernel, so the clean run and every sweep share one attention path (in
        # bfloat16 two paths would round differently, and "ablating nothing" would not reproduce the baseline).
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=allowed[:, None], scale=s.attn_scale,
                                           enable_gqa=H != s.n_kv_heads).transpose(1, 2)  # (B, Tq, H, dh)
        if not need_pattern:
            return z, None
        group = H // s.n_kv_heads
        if group > 1:  # grouped KV heads: each KV head serves `group` consecutive query heads
            k = k.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * s.attn_scale  # (B, H, Tq, T)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        pattern = torch.softmax(wide(scores), dim=-1).to(q.dtype)  # for the analyses; z does not use it
        return z, pattern

    def split_attention(self, layer: int, xq: Float[Tensor, "batch pos head d_model"],
                        xk: Float[Tensor, "batch pos kv_head d_model"],
                        xv: Float[Tensor, "batch pos kv_head d_model"]) -> Tensor:
        """Per-head outputs z (B, T, H, dh) when every head's query and every KV head's key and value read their
        own copy of the residual stream (before the layer's norm): the edge-level forward of
        :mod:`logitlab.model.graph`. With every copy equal to resid_pre it is :meth:`attention`."""
        w, s = self.w, self.spec
        nq, nk = self.pre_norm(layer, 1, xq), self.pre_norm(layer, 1, xk)
        nv = nk if xv is xk else self.pre_norm(layer, 1, xv)
        # One product per head: (B, T, heads, D) · (heads, D, dh) -> (B, T, heads, dh)
        q = torch.einsum("bthd,hde->bthe", nq, w.W_Q[layer]) + w.b_Q[layer]
        k = torch.einsum("bthd,hde->bthe", nk, w.W_K[layer]) + w.b_K[layer]
        v = torch.einsum("bthd,hde->bthe", nv, w.W_V[layer]) + w.b_V[layer]
        z, _ = self._attend(layer, q, self._finish_keys(layer, k, 0), v, 0, None, False)
        return z

    def heads_to_attn_pre(self, layer: int, z: Float[Tensor, "batch pos head d_head"]) -> Tensor:
        """Sum of the heads' outputs plus the output bias (before any post-attention norm)."""
        return self._linear(z.flatten(-2), self._W_O[layer], None if self._b_O is None else self._b_O[layer])

    def post_attention(self, layer: int, attn_pre: Tensor) -> tuple[Tensor, Tensor | None]:
        """What attention adds to the residual stream, and the post-norm scale (None without post-norms)."""
        if not self.spec.post_norms:
            return attn_pre, None
        return self._norm(attn_pre, self.w.post1_w[layer])

    def mlp(self, layer: int, resid_mid: Float[Tensor, "batch pos d_model"], normed: bool = False) -> Tensor:
        """What the MLP (and its post-norm, if any) adds to the residual stream (``normed``: given ``mlp_in``)."""
        x = resid_mid if normed else self.pre_norm(layer, 2, resid_mid)
        if self.spec.moe is not None and self.spec.moe.sparse[layer]:  # a mixture of experts (model/moe.py)
            return moe_forward(self.spec.moe, self.w, layer, x, self._act)
        b_in = None if self._b_in is None else self._b_in[layer]
        if self._W_gate is not None:
            hidden = self._act(self._linear(x, self._W_gate[layer])).mul_(self._linear(x, self._W_in[layer], b_in))
        else:
            hidden = self._act(self._linear(x, self._W_in[layer], b_in))
        out = self._linear(hidden, self._W_out[layer], None if self._b_out is None else self._b_out[layer])
        if self.spec.post_norms:
            out = self._normed(out, self.w.post2_w[layer])
        return out

    def after_attention(self, layer: int, resid_pre: Tensor, attn_out: Tensor, mlp_out: Tensor | None = None) -> Tensor:
        """The residual stream at :attr:`attn_entry_stage` of ``layer`` once attention has added ``attn_out``.

        Sequential blocks: resid_mid (the MLP runs next, on it). Parallel blocks: the MLP reads resid_pre, so the
        block is complete: resid_pre + attn_out + mlp_out, with ``mlp_out`` computed unless given (an
        intervention on attention leaves the cached MLP output valid).
        """
        if not self.spec.parallel:
            return resid_pre + attn_out
        return resid_pre + attn_out + (self.mlp(layer, resid_pre) if mlp_out is None else mlp_out)

    @property
    def attn_entry_stage(self) -> str:
        """Where a forward pass continues after a layer's attention output changed (see :meth:`after_attention`)."""
        return "post" if self.spec.parallel else "mid"

    # ---- the block ----------------------------------------------------------------------------------
    def layer(self, layer: int, x: Tensor | None, final_pos: Tensor | None = None, *, last_only: bool = False,
              prefix: int = 0, prefix_kv: Callable[[int], tuple[Tensor, Tensor] | None] | None = None,
              join: Join | None = None, record: dict[str, Tensor | None] | None = None,
              need_pattern: bool = False) -> tuple[Tensor | None, Tensor | None]:
        """One transformer block: how attention, norms, MLP and the residual stream connect, written once.

        Args:
            layer: the block's index.
            x: (B, T − prefix, D) residual stream entering the block, or None while no row runs yet.
            final_pos: (B,) absolute final position of each row (needed with ``last_only``).
            last_only: compute only each row's final query; the block then returns (B, 1, D).
            prefix, prefix_kv: ``x`` omits the first ``prefix`` positions; ``prefix_kv(layer)`` gives their keys
                and values (B, prefix, K, dh) (see :meth:`keys_values`).
            join: rows entering at this block's ``"pre"`` point (appended before attention) or ``"mid"`` point
                (appended before the MLP; in a ``last_only`` block reduced to their final position).
            record: filled with the block's activations (resid_pre, z, pattern, attn_pre, attn_out,
                post_scale, resid_mid, mlp_out).
            need_pattern: materialise the attention pattern (otherwise a fused attention kernel runs).

        Returns:
            The residual stream after the block and the rows' final positions.
        """
        parallel = self.spec.parallel
        if join is not None:
            x, final_pos = _append(x, final_pos, join(layer, "pre"))
        resid_pre = x
        z = pattern = attn_pre = attn_out = post_scale = mlp_out = None
        if x is not None:
            kv = None if prefix_kv is None else prefix_kv(layer)
            z, pattern = self.attention(layer, x, final_pos if last_only else None, need_pattern, kv)
            attn_pre = self.heads_to_attn_pre(layer, z)
            attn_out, post_scale = self.post_attention(layer, attn_pre)
            if last_only:
                x = _at(x, final_pos - prefix)  # (B, 1, D)
            mlp_out = self.mlp(layer, x) if parallel else None  # parallel blocks: the MLP reads resid_pre too
            x = self.after_attention(layer, x, attn_out, mlp_out)
        resid_mid = x if not parallel else (None if x is None else resid_pre + attn_out)
        if not parallel:
            if join is not None:
                new = join(layer, "mid")
                if new is not None and last_only:
                    new = (_at(new[0], new[1] - prefix), new[1])
                x, final_pos = _append(x, final_pos, new)
                resid_mid = x
            if x is not None:
                mlp_out = self.mlp(layer, x)
                x = x + mlp_out
        if record is not None:
            record.update(resid_pre=resid_pre, z=z, pattern=pattern, attn_pre=attn_pre, attn_out=attn_out,
                          post_scale=post_scale, resid_mid=resid_mid, mlp_out=mlp_out)
        return x, final_pos

    def block(self, layer: int, resid_pre: Tensor, query_pos: Tensor | None = None,
              prefix_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """:meth:`layer` on a whole batch; with ``query_pos`` only that position per row, returned as (B, D).

        ``prefix_kv``: keys and values of positions before ``resid_pre``'s first (see :meth:`keys_values`).
        """
        P = 0 if prefix_kv is None else prefix_kv[0].shape[1]
        out, _ = self.layer(layer, resid_pre, query_pos, last_only=query_pos is not None, prefix=P,
                            prefix_kv=None if prefix_kv is None else (lambda _l: prefix_kv))
        return out if query_pos is None else out[:, 0]

    # ---- whole passes -------------------------------------------------------------------------------
    def run_with_cache(self, tokens: Int[Tensor, "batch pos"]) -> CleanCache:
        """One forward pass keeping every activation the analyses read."""
        emb, pos = self.embed(tokens)
        x = emb if pos is None else emb + pos
        names = ("resid_pre", "attn_pre", "attn_out", "resid_mid", "mlp_out", "z", "pattern", "post_scale")
        acts: dict[str, list[Tensor]] = {n: [] for n in names}
        for layer in range(self.spec.n_layers):
            rec: dict[str, Tensor | None] = {}
            x, _ = self.layer(layer, x, record=rec, need_pattern=True)
            for n in names:
                acts[n].append(rec[n])  # type: ignore[arg-type]
        assert x is not None
        _, final_scale = self.final_norm(x)
        stack = lambda n: torch.stack(acts[n])  # noqa: E731  (layer, ...)
        return CleanCache(
            embed=emb, pos_embed=pos, resid_pre=stack("resid_pre"), attn_pre=stack("attn_pre"),
            attn_out=stack("attn_out"), post_attn_scale=stack("post_scale") if self.spec.post_norms else None,
            resid_mid=stack("resid_mid"), mlp_out=stack("mlp_out"), resid_final=x, final_scale=final_scale,
            z=stack("z"), pattern=stack("pattern"))

    def check_entry(self, layer: int, stage: str) -> None:
        """Raise ``ValueError`` unless (``layer``, ``stage``) is an entry point of this model."""
        if stage not in STAGES or not 0 <= layer < self.spec.n_layers:
            raise ValueError(f"bad entry point ({layer}, {stage!r})")
        if stage == "mid" and self.spec.parallel:
            raise ValueError("parallel blocks have no 'mid' entry; re-enter at 'post' (see Runner.after_attention)")

    def run_from(self, layer: int, stage: str, x: Tensor, final_pos: Tensor | None = None,
                 record: list[dict[str, Tensor | None]] | None = None) -> Tensor:
        """Continue a forward pass from an entry point; returns the final residual stream.

        Args:
            layer: the layer the entry point belongs to.
            stage: ``"pre"`` (x is resid_pre of ``layer``), ``"mid"`` (x is resid_mid of ``layer``: run its
                MLP next) or ``"post"`` (x is resid_post of ``layer``: run ``layer + 1`` next).
            x: the residual stream at the entry point (B, T, D).
            final_pos: if given, only each row's final position is returned, (B, D), and the last block
                computes nothing else (earlier layers still run every position: later queries read them).
            record: if given, one dict of activations per layer run is appended (see :meth:`layer`).
        """
        self.check_entry(layer, stage)
        L = self.spec.n_layers
        start = layer + 1 if stage == "post" else layer
        join: Join | None = None
        h, fp = x, final_pos
        if stage == "mid":  # x joins the batch before the MLP of its layer
            h = None
            join = lambda l, point: (x, final_pos) if (l, point) == (layer, "mid") else None  # noqa: E731
        for l in range(start, L):
            rec: dict[str, Tensor | None] | None = None if record is None else {}
            h, fp = self.layer(l, h, fp, last_only=final_pos is not None and l == L - 1,
                               join=join if l == layer else None, record=rec)
            if record is not None:
                record.append(rec)  # type: ignore[arg-type]
        assert h is not None
        if final_pos is None:
            return h
        return h[:, 0] if start < L else h[torch.arange(h.shape[0], device=h.device), final_pos]

    def trace_keys_values(self, layer: int, stage: str, x: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
        """Run ``x`` (an entry point's residual stream, see :meth:`run_from`) to the last layer, returning the keys
        and values of every layer whose attention it reaches: what items sharing these positions need."""
        self.check_entry(layer, stage)
        rec: list[dict[str, Tensor | None]] = []
        self.run_from(layer, stage, x, record=rec)
        start = layer + 1 if stage == "post" else layer
        return {l: self.keys_values(l, r["resid_pre"]) for l, r in enumerate(rec, start)
                if r["resid_pre"] is not None}

    def logits(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
        """Full logits at every position (for tests and small inputs; sweeps never call this)."""
        return self.unembed(self.run_from(0, "pre", self.embed_sum(tokens)))

    def last_logits(self, tokens: Int[Tensor, "batch pos"], final_pos: Int[Tensor, " batch"]) -> Tensor:
        """Full logits at each row's final position, (B, vocab); the last block computes nothing else."""
        return self.unembed(self.run_from(0, "pre", self.embed_sum(tokens), final_pos=final_pos.to(self.device)))

    def embed_sum(self, tokens: Tensor) -> Tensor:
        """The residual stream entering layer 0."""
        emb, pos = self.embed(tokens)
        return emb if pos is None else emb + pos

    # ---- the same block, differentiated and counted -------------------------------------------------
    def grad_run(self, tokens: Int[Tensor, "batch pos"], final_pos: Int[Tensor, " batch"],
                 correct: Int[Tensor, " batch"], incorrect: Int[Tensor, "batch k"],
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logit difference (B,) and its gradients with respect to every layer's activations.

        The forward pass is :meth:`layer` with autograd on (float32 products through ``F.linear``). Returns
        ``(logit_diff, grads)`` with ``grads[name]`` stacked over layers for ``resid_pre``, ``attn_out``,
        ``mlp_out`` ((layer, B, T, D)) and ``z`` ((layer, B, T, H, dh)); each row's gradient is that of its
        own logit difference (rows do not interact).
        """
        names = ("resid_pre", "attn_out", "mlp_out", "z")
        with torch.enable_grad():
            rec: list[dict[str, Tensor | None]] = []
            # The weights need no gradient; the embedding, a leaf, carries autograd through every block.
            x = self.embed_sum(tokens.to(self.device)).detach().requires_grad_(True)
            final = self.run_from(0, "pre", x, record=rec)
            final = final[torch.arange(final.shape[0], device=final.device), final_pos.to(self.device)]
            diff, _ = self.answer_metrics(final, correct.to(self.device), incorrect.to(self.device), False)
            acts = [r[n] for r in rec for n in names]
            grads = torch.autograd.grad(diff.sum(), acts, allow_unused=True)
        L = self.spec.n_layers
        out = {n: torch.stack([_zeros_if_none(grads[l * len(names) + i], acts[l * len(names) + i])
                               for l in range(L)]) for i, n in enumerate(names)}
        return diff.detach(), out

    def layer_flops(self, point: str, seq_len: int, prefix: int = 0, last_only: bool = False,
                    layer: int | None = None) -> float:
        """Floating-point operations of one row through one block entering at ``point`` (``"pre"`` or ``"mid"``).

        Counted by running :meth:`layer` itself on meta tensors (shapes only, no arithmetic) under torch's FLOP
        counter, so the count follows the code. ``prefix`` positions come from cached keys and values;
        ``last_only`` computes the final query only (the last layer of a sweep). Blocks differ by ``layer`` only in
        a mixture of experts with dense layers (default: the last layer with ``last_only``, else the first).
        """
        layer = (self.spec.n_layers - 1 if last_only else 0) if layer is None else layer
        moe = self.spec.moe  # blocks differ only in whether their MLP is sparse: count one block of each kind
        key = (point, seq_len, prefix, last_only, moe is not None and moe.sparse[layer])
        if key not in self._flop_memo:
            from torch.utils.flop_counter import FlopCounterMode
            meta = self._on_meta()
            s, dev = self.spec, torch.device("meta")
            x = torch.empty(1, seq_len - prefix, s.d_model, device=dev, dtype=self.dtype)
            fp = torch.full((1,), seq_len - 1, dtype=torch.long, device=dev)
            kv = torch.empty(1, prefix, s.n_kv_heads, s.d_head, device=dev, dtype=self.dtype)
            join = (lambda l, p: (x, fp) if p == "mid" else None) if point == "mid" else None  # noqa: E731
            with FlopCounterMode(display=False) as counter:
                meta.layer(layer, None if point == "mid" else x, fp, last_only=last_only, prefix=prefix,
                           prefix_kv=(lambda _l: (kv, kv)) if prefix else None, join=join)
            self._flop_memo[key] = float(counter.get_total_flops())
        return self._flop_memo[key]

    def _on_meta(self) -> Runner:
        """A copy of this runner whose tensors are on the meta device (shapes without storage)."""
        meta = copy.copy(self)
        to_meta = lambda v: v.to("meta") if isinstance(v, Tensor) else v  # noqa: E731
        for k, v in vars(self).items():
            if isinstance(v, Tensor):
                setattr(meta, k, to_meta(v))
        meta.w = replace(self.w, **{k: to_meta(v) for k, v in vars(self.w).items()})
        meta._onednn, meta._rope_cache = False, {}
        return meta


def _append(x: Tensor | None, fp: Tensor | None, new: tuple[Tensor, Tensor] | None) -> tuple[Tensor | None, Tensor | None]:
    """Rows ``new`` = (residual streams, final positions) appended to the batch (x, fp)."""
    if new is None:
        return x, fp
    if x is None:
        return new
    return torch.cat([x, new[0]]), (None if fp is None else torch.cat([fp, new[1]]))


def _at(x: Tensor, pos: Tensor) -> Tensor:
    """Each row's position ``pos[i]``: (B, T, D) → (B, 1, D)."""
    return x[torch.arange(x.shape[0], device=x.device), pos][:, None]


def _zeros_if_none(g: Tensor | None, like: Tensor | None) -> Tensor:
    assert like is not None
    return torch.zeros_like(like) if g is None else g
