"""logitlab's own forward pass over a bridge's processed weights, with entry points for interventions.

Why not run every intervention through TransformerLens hooks? A sweep then needs one full forward per
intervention, recomputing layers the intervention cannot change and full-vocabulary logits the metric never
reads. This runner exposes the transformer as stages (embed → per layer: attention, post-attention norm,
MLP → final norm) so a sweep can start at the layer an intervention touches, batch many interventions
together, and score only the answer logits. Its outputs are tested against the Hugging Face and bridge
forward passes for every supported architecture.

Shapes: batch B, positions T, heads H, KV heads K, d_model D, d_head dh.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from logitlab.model.spec import ArchSpec, Weights

__all__ = ["Runner", "CleanCache"]


@dataclass(frozen=True)
class CleanCache:
    """Activations of one forward pass (all positions, all layers)."""

    embed: Float[Tensor, "batch pos d_model"]  # token embedding (scaled)
    pos_embed: Float[Tensor, "batch pos d_model"] | None
    resid_pre: Float[Tensor, "layer batch pos d_model"]
    attn_pre: Float[Tensor, "layer batch pos d_model"]  # sum of heads + b_O, before any post-norm
    attn_out: Float[Tensor, "layer batch pos d_model"]  # what attention adds to the residual stream
    post_attn_scale: Float[Tensor, "layer batch pos"] | None
    resid_mid: Float[Tensor, "layer batch pos d_model"]
    mlp_out: Float[Tensor, "layer batch pos d_model"]
    resid_final: Float[Tensor, "batch pos d_model"]
    final_scale: Float[Tensor, "batch pos"]
    z: Float[Tensor, "layer batch pos head d_head"]
    pattern: Float[Tensor, "layer batch head pos pos"]


def _logsumexp_(x: Tensor) -> Tensor:
    """logsumexp over the last dim (float32), overwriting ``x`` (no temporary as large as ``x``)."""
    if x.dtype != torch.float32:
        return torch.logsumexp(x.float(), dim=-1)
    m = x.amax(-1, keepdim=True).clamp_(min=torch.finfo(x.dtype).min)  # (an all -inf row stays finite)
    return x.sub_(m).exp_().sum(-1).log_() + m.squeeze(-1)


def _onednn_linear_works() -> bool:
    """Whether oneDNN's float32 matrix product is available here and agrees with ``F.linear`` on a probe.

    ``LOGITLAB_ONEDNN=0`` in the environment turns it off (e.g. to compare with the default BLAS).
    """
    if os.environ.get("LOGITLAB_ONEDNN", "1") == "0":
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, W, b = (torch.randn(*shape, generator=g) for shape in ((3, 5, 64), (48, 64), (48,)))
        got = torch.ops.mkldnn._linear_pointwise(x, W, b, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return got.dtype == torch.float32 and bool(torch.allclose(got, F.linear(x, W, b), rtol=1e-5, atol=1e-5))


class Runner:
    """A decoder-only transformer forward pass split into stages."""

    hooked = False  # True for the TransformerBridge-hook fallback (logitlab.model.hooked)

    def __init__(self, spec: ArchSpec, weights: Weights) -> None:
        self.spec = spec
        # Store the unembedding as contiguous (vocab, d_model) rows seen through a transpose: answer columns
        # and vocabulary chunks of W_U are then contiguous blocks (no copy per sweep chunk).
        self.w = replace(weights, W_U=weights.W_U.T.contiguous().T)
        self._rope_cache: dict[tuple[int, float, str], tuple[Tensor, Tensor]] = {}
        self._W_U = self.w.W_U.T  # (vocab, D), contiguous
        self._b_U = self.w.b_U if bool(self.w.b_U.any()) else None  # skipped when all zero
        # Fused norms (one kernel) where the scale is not needed; float32 only, so that other dtypes keep
        # normalising in float32 as the reference implementations do.
        self._fused_norm = self.dtype == torch.float32
        self._onednn = self.device.type == "cpu" and self.dtype == torch.float32 and _onednn_linear_works()
        if not self.hooked:
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

    def _linear(self, x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
        """``x @ W.T + b`` for (out, in) rows ``W``.

        float32 on CPU goes through oneDNN's matrix product when it is available and exact on a probe: on
        some CPUs it runs at more than twice the speed of the default BLAS (measured 460–480 vs 200–220
        GFLOP/s on 2 AMD EPYC cores, benchmarks/bench_battery.py prints both), with float32 arithmetic
        throughout.
        """
        if self._onednn:
            return torch.ops.mkldnn._linear_pointwise(x, W, b, "none", [], "")
        return F.linear(x, W, b)

    @property
    def device(self) -> torch.device:
        return self.w.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        return self.w.W_U.dtype

    # ---- pieces -------------------------------------------------------------------------------------
    def _norm(self, x: Tensor, w: Tensor | None = None, b: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalise over the last dim in float32; returns (output, scale) with scale (..., )."""
        xf = x.float()
        if self.spec.normalization == "LN":
            xf = xf - xf.mean(-1, keepdim=True)
        scale = (xf.pow(2).mean(-1, keepdim=True) + self.spec.eps).sqrt()
        out = xf / scale
        if w is not None:
            out = out * w.float()
        if b is not None:
            out = out + b.float()
        return out.to(x.dtype), scale.squeeze(-1)

    def _normed(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        """The output of :meth:`_norm` alone, as one fused kernel where the dtype allows."""
        if not self._fused_norm:
            return self._norm(x, w, b)[0]
        if self.spec.normalization == "LN":
            return F.layer_norm(x, x.shape[-1:], w, b, self.spec.eps)
        out = F.rms_norm(x, x.shape[-1:], w, self.spec.eps)
        return out if b is None else out + b

    def _rms(self, x: Tensor, w: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.spec.eps) * w.float()).to(x.dtype)

    def _act(self, x: Tensor) -> Tensor:
        if self.spec.act_fn == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        if self.spec.act_fn == "gelu":
            return F.gelu(x)
        return F.silu(x)

    def _rope(self, T: int, base: float) -> tuple[Tensor, Tensor]:
        key = (T, base, str(self.device))
        if key not in self._rope_cache:
            dh = self.spec.rotary_dim or self.spec.d_head
            inv = 1.0 / (base ** (torch.arange(0, dh, 2, dtype=torch.int64, device=self.device).float() / dh))
            freqs = torch.arange(T, device=self.device).float()[:, None] * inv[None, :]  # (T, dh/2)
            emb = torch.cat([freqs, freqs], dim=-1)  # (T, dh)
            self._rope_cache[key] = (emb.cos(), emb.sin())
        cos, sin = self._rope_cache[key]
        return cos.to(self.dtype), sin.to(self.dtype)

    @staticmethod
    def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # x: (B, T, heads, dh); cos/sin: (T, rd) shared or (B, T, rd) per row. Rotate-half convention of
        # the Hugging Face Llama/Gemma/GPT-NeoX code; only the leading rd dims rotate (GPT-NeoX: rd < dh).
        if cos.dim() == 2:
            cos, sin = cos[None], sin[None]
        rd = cos.shape[-1]
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        half = rd // 2
        rot = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        out = x_rot * cos[:, :, None, :] + rot * sin[:, :, None, :]
        return out if rd == x.shape[-1] else torch.cat([out, x_pass], dim=-1)

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
        if s.qk_norm:
            k = self._rms(k, self.w.k_norm_w[layer])
        if s.positional == "rotary":
            cos, sin = self._rope(start + x.shape[1], s.rotary_base[layer])
            k = self._apply_rope(k, cos[start:], sin[start:])
        return k, v

    def keys_values(self, layer: int, resid_pre: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor]:
        """The keys and values (B, T, K, dh) layer ``layer`` computes from ``resid_pre`` (positions 0…T-1).

        A sweep whose items share their first positions with a cached run passes these as ``prefix_kv``.
        """
        return self._keys_values(layer, self._normed(resid_pre, self.w.ln1_w[layer], self.w.ln1_b[layer]), 0)

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
        T = P + Tx
        x = self._normed(resid_pre, w.ln1_w[layer], w.ln1_b[layer])
        rows = torch.arange(B, device=x.device)
        xq = x if query_pos is None else x[rows, query_pos - P][:, None]  # (B, Tq, D)
        bias = None if self._b_qkv is None else self._b_qkv[layer, : H * dh]
        q = self._linear(xq, self._W_qkv[layer, : H * dh], bias).unflatten(-1, (H, dh))  # (B, Tq, H, dh)
        k, v = self._keys_values(layer, x, P)  # (B, Tx, K, dh)
        if prefix_kv is not None:
            k, v = torch.cat([prefix_kv[0], k], dim=1), torch.cat([prefix_kv[1], v], dim=1)
        if s.qk_norm:
            q = self._rms(q, w.q_norm_w[layer])
        idx = torch.arange(T, device=resid_pre.device)
        qidx = idx[None, P:, None] if query_pos is None else query_pos[:, None, None]  # (1 or B, Tq, 1)
        if s.positional == "rotary":
            cos, sin = self._rope(T, s.rotary_base[layer])
            q = self._apply_rope(q, cos[P:], sin[P:]) if query_pos is None else \
                self._apply_rope(q, cos[query_pos][:, None], sin[query_pos][:, None])
        allowed = idx[None, None, :] <= qidx  # causal: (1 or B, Tq, T)
        window = s.sliding_window[layer]
        if window is not None:
            allowed = allowed & (qidx - idx[None, None, :] < window)
        if not need_pattern:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=allowed[:, None], scale=s.attn_scale,
                                               enable_gqa=H != s.n_kv_heads)
            return z.transpose(1, 2), None
        group = H // s.n_kv_heads
        if group > 1:  # grouped KV heads: each KV head serves `group` consecutive query heads
            k = k.repeat_interleave(group, dim=2)
            v = v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * s.attn_scale  # (B, H, Tq, T)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        pattern = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # (B, Tq, H, dh)
        return z, pattern

    def heads_to_attn_pre(self, layer: int, z: Float[Tensor, "batch pos head d_head"]) -> Tensor:
        """Sum of the heads' outputs plus the output bias (before any post-attention norm)."""
        return self._linear(z.flatten(-2), self._W_O[layer], None if self._b_O is None else self._b_O[layer])

    def post_attention(self, layer: int, attn_pre: Tensor) -> tuple[Tensor, Tensor | None]:
        """What attention adds to the residual stream, and the post-norm scale (None without post-norms)."""
        if not self.spec.post_norms:
            return attn_pre, None
        out, scale = self._norm(attn_pre, self.w.post1_w[layer])
        return out, scale

    def mlp(self, layer: int, resid_mid: Float[Tensor, "batch pos d_model"]) -> Tensor:
        """What the MLP (and its post-norm, if any) adds to the residual stream."""
        w = self.w
        x = self._normed(resid_mid, w.ln2_w[layer], w.ln2_b[layer])
        b_in = None if self._b_in is None else self._b_in[layer]
        if self._W_gate is not None:
            hidden = self._act(self._linear(x, self._W_gate[layer])).mul_(self._linear(x, self._W_in[layer], b_in))
        else:
            hidden = self._act(self._linear(x, self._W_in[layer], b_in))
        out = self._linear(hidden, self._W_out[layer], None if self._b_out is None else self._b_out[layer])
        if self.spec.post_norms:
            out = self._normed(out, w.post2_w[layer])
        return out

    def block(self, layer: int, resid_pre: Tensor, query_pos: Tensor | None = None,
              prefix_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """One transformer block; with ``query_pos`` only that position per row, returned as (B, D).

        ``prefix_kv``: see :meth:`attention` (``resid_pre`` then starts at the first position after the prefix).
        """
        z, _ = self.attention(layer, resid_pre, query_pos, need_pattern=False, prefix_kv=prefix_kv)
        attn_out, _ = self.post_attention(layer, self.heads_to_attn_pre(layer, z))
        if query_pos is not None:
            P = 0 if prefix_kv is None else prefix_kv[0].shape[1]
            resid_pre = resid_pre[torch.arange(resid_pre.shape[0], device=resid_pre.device), query_pos - P][:, None]
        mid = resid_pre + attn_out
        out = mid + self.mlp(layer, resid_pre if self.spec.parallel else mid)
        return out if query_pos is None else out[:, 0]

    @property
    def attn_entry_stage(self) -> str:
        """Where a sweep re-enters after changing a layer's attention output (see :meth:`after_attention`)."""
        return "post" if self.spec.parallel else "mid"

    def after_attention(self, resid_pre: Tensor, attn_out: Tensor, mlp_out: Tensor) -> Tensor:
        """The residual stream to re-enter at :attr:`attn_entry_stage` once attention's output is ``attn_out``.

        Sequential blocks: resid_mid (the MLP runs next, on it). Parallel blocks: the MLP reads resid_pre, which
        did not change, so its cached output ``mlp_out`` still holds and the block's output is complete.
        """
        if self.spec.parallel:
            return resid_pre + attn_out + mlp_out
        return resid_pre + attn_out

    def final_norm(self, resid: Tensor) -> tuple[Tensor, Tensor]:
        return self._norm(resid, self.w.lnf_w, self.w.lnf_b)

    # ---- whole passes -------------------------------------------------------------------------------
    def run_with_cache(self, tokens: Int[Tensor, "batch pos"]) -> CleanCache:
        """One forward pass keeping every activation the analyses read."""
        emb, pos = self.embed(tokens)
        x = emb if pos is None else emb + pos
        names = ("resid_pre", "attn_pre", "attn_out", "resid_mid", "mlp_out", "z", "pattern", "post_scale")
        acts: dict[str, list[Tensor]] = {n: [] for n in names}
        for layer in range(self.spec.n_layers):
            resid_pre = x
            z, pattern = self.attention(layer, x)
            attn_pre = self.heads_to_attn_pre(layer, z)
            attn_out, post_scale = self.post_attention(layer, attn_pre)
            mid = x + attn_out  # for parallel blocks: resid_pre + attn_out (no norm reads it)
            mlp_out = self.mlp(layer, x if self.spec.parallel else mid)
            x = mid + mlp_out
            for n, v in zip(names, (resid_pre, attn_pre, attn_out, mid, mlp_out, z, pattern, post_scale)):
                acts[n].append(v)
        _, final_scale = self.final_norm(x)
        post = torch.stack(acts["post_scale"]) if self.spec.post_norms else None
        return CleanCache(
            embed=emb, pos_embed=pos, resid_pre=torch.stack(acts["resid_pre"]), attn_pre=torch.stack(acts["attn_pre"]),
            attn_out=torch.stack(acts["attn_out"]), post_attn_scale=post, resid_mid=torch.stack(acts["resid_mid"]),
            mlp_out=torch.stack(acts["mlp_out"]), resid_final=x, final_scale=final_scale,
            z=torch.stack(acts["z"]), pattern=torch.stack(acts["pattern"]),
        )

    def run_from(self, layer: int, stage: str, x: Tensor, final_pos: Tensor | None = None) -> Tensor:
        """Continue a forward pass from an entry point; returns the final residual stream.

        Args:
            layer: the layer the entry point belongs to.
            stage: ``"pre"`` (x is resid_pre of ``layer``), ``"mid"`` (x is resid_mid of ``layer``: run its
                MLP next) or ``"post"`` (x is resid_post of ``layer``: run ``layer + 1`` next).
            x: the residual stream at the entry point (B, T, D).
            final_pos: if given, only each row's final position is returned, (B, D), and the last block
                computes nothing else (earlier layers still run every position: later queries read them).
        """
        L = self.spec.n_layers
        start, x = self._enter(layer, stage, x)
        for l in range(start, L):
            x = self.block(l, x, final_pos if (final_pos is not None and l == L - 1) else None)
        if final_pos is not None and start >= L:
            x = x[torch.arange(x.shape[0], device=x.device), final_pos]
        return x

    def _enter(self, layer: int, stage: str, x: Tensor) -> tuple[int, Tensor]:
        """The first layer to run from an entry point, and the residual stream entering it."""
        if stage not in ("pre", "mid", "post"):
            raise ValueError(f"unknown stage {stage!r}")
        if stage == "mid" and self.spec.parallel:
            raise ValueError("parallel blocks have no 'mid' entry; re-enter at 'post' (see after_attention)")
        if stage == "mid":
            x = x + self.mlp(layer, x)
        return (layer if stage == "pre" else layer + 1), x

    def trace_keys_values(self, layer: int, stage: str, x: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
        """Run ``x`` (an entry point's residual stream, see :meth:`run_from`) to the last layer, returning the keys
        and values of every layer whose attention it reaches: what items sharing these positions need."""
        start, x = self._enter(layer, stage, x)
        out = {}
        for l in range(start, self.spec.n_layers):
            out[l] = self.keys_values(l, x)
            if l < self.spec.n_layers - 1:
                x = self.block(l, x)
        return out

    def logits(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
        """Full logits at every position (for tests and small inputs; sweeps never call this)."""
        return self.unembed(self.run_from(0, "pre", self.embed_sum(tokens)))

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Full-vocabulary logits of final residual streams."""
        return self.final_norm(resid)[0] @ self.w.W_U + self.w.b_U

    def embed_sum(self, tokens: Tensor) -> Tensor:
        """The residual stream entering layer 0."""
        emb, pos = self.embed(tokens)
        return emb if pos is None else emb + pos

    def answer_metrics(
        self, resid_final: Float[Tensor, "n d_model"], correct: Int[Tensor, " n"], incorrect: Int[Tensor, "n k"],
        with_loss: bool, progress: Callable[[float], None] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logit difference (correct − mean incorrect) and, if asked, −log p(correct), from final residuals.

        Only the answer columns of the unembedding are used for the logit difference; the loss needs the
        log-partition function, computed in blocks of rows × vocabulary so no (n, vocab) matrix is held at once
        (``progress`` is called with the rows finished).
        """
        w = self.w
        normed, _ = self.final_norm(resid_final)  # (n, D)
        lc = (normed * w.W_U[:, correct].T).sum(-1) + w.b_U[correct]
        li = torch.einsum("nd,dnk->nk", normed, w.W_U[:, incorrect]) + w.b_U[incorrect]
        diff = lc - li.mean(-1)
        if not with_loss:
            return diff, None
        return diff, self.log_partition(normed, progress) - lc.float()

    def log_partition(self, normed: Float[Tensor, "n d_model"],
                      progress: Callable[[float], None] | None = None) -> Float[Tensor, " n"]:
        """logsumexp of the logits of final-normed residuals, float32, in cache-sized blocks."""
        w = self.w
        n, V = normed.shape[0], w.W_U.shape[1]
        rows, cols = (4096, 32768) if normed.device.type == "cuda" else (512, 4096)
        out = torch.empty(n, dtype=torch.float32, device=normed.device)
        for r in range(0, n, rows):
            x = normed[r:r + rows]
            lse = torch.full((x.shape[0],), -math.inf, dtype=torch.float32, device=normed.device)
            for c in range(0, V, cols):
                part = self._linear(x, self._W_U[c:c + cols], None if self._b_U is None else self._b_U[c:c + cols])
                lse = torch.logaddexp(lse, _logsumexp_(part))
            out[r:r + rows] = lse
            if progress is not None:
                progress(float(x.shape[0]))
        return out
