"""What every backend shares: the cached activations' layout and the read-out from the residual stream to answers.

Both backends (the staged :class:`~logitlab.model.runner.Runner` and the hooked fallback
:class:`~logitlab.model.hooked.HookRunner`) hold the output weights (final norm, unembedding, ``W_O``/``b_O``,
post-attention norms) and compute from a final residual stream the same things in the same way: the final
norm, full logits, the answers' logit difference and the loss. That code lives here once.

A final-logit soft-cap (Gemma-2: logits → tanh(logits / cap) · cap) is applied here, so logits, logit
difference and loss are the model's own wherever they are read out (clean run, sweeps, patching, gradients).
The pre-cap logit difference (``answer_metrics(..., pre_cap=True)``) is the one direct attributions decompose:
it is linear in the residual stream, the capped one is not.

Shapes: batch B, positions T, heads H, d_model D, d_head dh.
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

from logitlab import answers
from logitlab.model.spec import ArchSpec, Weights

__all__ = ["CACHE_BATCH_DIM", "CleanCache", "Readout", "wide"]


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


#: The dimension that holds the batch in each :class:`CleanCache` field (caches of disjoint prompts are joined along
#: it). A new field needs its entry here; a test checks the table against the annotations above.
CACHE_BATCH_DIM: dict[str, int] = {
    "embed": 0, "pos_embed": 0, "resid_pre": 1, "attn_pre": 1, "attn_out": 1, "post_attn_scale": 1, "resid_mid": 1,
    "mlp_out": 1, "resid_final": 0, "final_scale": 0, "z": 1, "pattern": 1,
}


def wide(x: Tensor) -> Tensor:
    """``x`` in at least float32 (norms and softmaxes run there; float64 stays float64, e.g. for gradient checks)."""
    return x if x.dtype == torch.float64 else x.float()


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


class Readout:
    """Output weights and the read-out from the residual stream: final norm, logits, answer metrics.

    Each backend builds on it and adds the rest of :class:`logitlab.model.backend.Backend`.
    """

    def __init__(self, spec: ArchSpec, weights: Weights) -> None:
        self.spec = spec
        # Store the unembedding as contiguous (vocab, d_model) rows seen through a transpose: answer columns
        # and vocabulary chunks of W_U are then contiguous blocks (no copy per sweep chunk).
        self.w = replace(weights, W_U=weights.W_U.T.contiguous().T)
        self._W_U = self.w.W_U.T  # (vocab, D), contiguous
        self._b_U = self.w.b_U if bool(self.w.b_U.any()) else None  # skipped when all zero
        # Fused norms (one kernel) where the scale is not needed; float32 only, so that other dtypes keep
        # normalising in float32 as the reference implementations do.
        self._fused_norm = self.dtype == torch.float32
        self._onednn = self.device.type == "cpu" and self.dtype == torch.float32 and _onednn_linear_works()

    @property
    def device(self) -> torch.device:
        return self.w.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        return self.w.W_U.dtype

    def _linear(self, x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
        """``x @ W.T + b`` for (out, in) rows ``W``.

        float32 on CPU goes through oneDNN's matrix product when it is available and exact on a probe: on
        some CPUs it runs at more than twice the speed of the default BLAS (measured 460–480 vs 200–220
        GFLOP/s on 2 AMD EPYC cores, benchmarks/bench_battery.py prints both), with float32 arithmetic
        throughout. oneDNN's product has no gradient, so with autograd on it is ``F.linear``.
        """
        if self._onednn and not torch.is_grad_enabled():
            return torch.ops.mkldnn._linear_pointwise(x, W, b, "none", [], "")
        return F.linear(x, W, b)

    def _norm(self, x: Tensor, w: Tensor | None = None, b: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalise over the last dim in float32; returns (output, scale) with scale (..., )."""
        xf = wide(x)
        if self.spec.normalization == "LN":
            xf = xf - xf.mean(-1, keepdim=True)
        scale = (xf.pow(2).mean(-1, keepdim=True) + self.spec.eps).sqrt()
        out = xf / scale
        if w is not None:
            out = out * wide(w)
        if b is not None:
            out = out + wide(b)
        return out.to(x.dtype), scale.squeeze(-1)

    def _normed(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        """The output of :meth:`_norm` alone, as one fused kernel where the dtype allows."""
        if not self._fused_norm:
            return self._norm(x, w, b)[0]
        if self.spec.normalization == "LN":
            return F.layer_norm(x, x.shape[-1:], w, b, self.spec.eps)
        out = F.rms_norm(x, x.shape[-1:], w, self.spec.eps)
        return out if b is None else out + b

    def final_norm(self, resid: Tensor) -> tuple[Tensor, Tensor]:
        """The final norm's output and scale (see :meth:`_norm`)."""
        return self._norm(resid, self.w.lnf_w, self.w.lnf_b)

    def softcap(self, logits: Tensor) -> Tensor:
        """The model's logits from pre-cap ones: tanh(logits / cap) · cap, or unchanged without a cap."""
        cap = self.spec.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Full-vocabulary logits of final residual streams (the model's own: after any soft-cap)."""
        return self.softcap(self.final_norm(resid)[0] @ self.w.W_U + self.w.b_U)

    def answer_metrics(
        self, resid_final: Float[Tensor, "n d_model"], correct: Int[Tensor, " n"], incorrect: Int[Tensor, "n k"],
        with_loss: bool, progress: Callable[[float], None] | None = None, *, pre_cap: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Logit difference (correct − mean incorrect) and, if asked, −log p(correct), from final residuals.

        ``incorrect`` may be padded with :data:`logitlab.answers.PAD` (prompts with fewer incorrect answers).
        On a soft-capped model the logit difference is that of the capped logits (the model's own), unless
        ``pre_cap`` (the one direct attributions decompose); the loss is always the model's own.

        Only the answer columns of the unembedding are used for the logit difference; the loss needs the
        log-partition function, computed in blocks of rows × vocabulary so no (n, vocab) matrix is held at once
        (``progress`` is called with the rows finished).
        """
        w = self.w
        # Read out in float32 whatever the model's dtype: in bfloat16 each answer logit (~20–30) would be
        # rounded to steps of 0.125 before the subtraction.
        normed = wide(self.final_norm(resid_final)[0])  # (n, D)
        lc = (normed * wide(w.W_U[:, correct].T)).sum(-1) + wide(w.b_U[correct])
        cols = answers.columns(incorrect)  # (n, k); padding (fewer incorrect answers) masked below
        li = torch.einsum("nd,dnk->nk", normed, wide(w.W_U[:, cols])) + wide(w.b_U[cols])
        if pre_cap:
            diff = lc - answers.mean_incorrect(li, incorrect)
        lc, li = self.softcap(lc), self.softcap(li)
        if not pre_cap:
            diff = lc - answers.mean_incorrect(li, incorrect)
        if not with_loss:
            return diff, None
        return diff, self.log_partition(normed, progress) - lc

    def log_partition(self, normed: Float[Tensor, "n d_model"],
                      progress: Callable[[float], None] | None = None) -> Float[Tensor, " n"]:
        """logsumexp of the logits (the model's own: after any soft-cap) of final-normed residuals, float32, in
        cache-sized blocks.

        For a model in another dtype each block of the unembedding is widened to float32 as it is used: no float32
        copy of the whole unembedding is held (on an 8B model it would take 2 GB).
        """
        n, V = normed.shape[0], self.w.W_U.shape[1]
        W_U, b_U = self._W_U, self._b_U
        normed = wide(normed)
        rows, cols = (4096, 32768) if normed.device.type == "cuda" else (512, 4096)
        out = torch.empty(n, dtype=torch.float32, device=normed.device)
        for r in range(0, n, rows):
            x = normed[r:r + rows]
            lse = torch.full((x.shape[0],), -math.inf, dtype=torch.float32, device=normed.device)
            for c in range(0, V, cols):
                b = None if b_U is None else wide(b_U[c:c + cols])
                part = self.softcap(self._linear(x, wide(W_U[c:c + cols]), b))
                lse = torch.logaddexp(lse, _logsumexp_(part))
            out[r:r + rows] = lse
            if progress is not None:
                progress(float(x.shape[0]))
        return out
