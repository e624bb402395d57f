"""How well a dictionary set stands in for the model's MLPs.

Per layer, on given inputs: explained variance of the reconstruction (1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖², y the layer's
true output at the dictionary's output point), L0 (mean number of active features per position) and the dead
fraction (features active at no position). For the whole set, the replacement model's agreement with the
real model: every layer's MLP output replaced by its dictionary's output (no error terms; the BOS position
keeps its own), run to the logits;
KL(real ‖ replacement) and top-1 agreement at each prompt's final position, and the logit difference of the
task's answers in both.

The activations come from logitlab's staged runner: :func:`mlp_io` runs :meth:`Runner.layer` and reads each
layer's MLP input (``pre_norm(layer, 2, resid_mid)``; of resid_pre in parallel blocks) and output. The
replacement pass (:func:`replacement_final`) is the same block written with the runner's public stages, the
MLP swapped; with the real MLP in its place it is the runner's own forward pass (a tested invariant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet, Transcoder

__all__ = ["LayerQuality", "Agreement", "mlp_io", "layer_quality", "replacement_final", "agreement", "staged",
           "jacobian_stats", "mlp_response"]


def staged(model: Any) -> Any:
    """The model's staged runner, or a clear error (dictionaries need logitlab's own forward pass)."""
    from logitlab.model.runner import Runner
    runner = getattr(model, "runner", model)
    if not isinstance(runner, Runner):
        raise LogitlabError(f"dictionaries need logitlab's staged forward pass; model "
                            f"{getattr(model, 'name', '?')!r} runs on {type(runner).__name__}",
                            "supported: logitlab's own architectures (see README: supported architectures)")
    return runner


def mlp_io(model: Any, tokens: Int[Tensor, "batch pos"], layers: list[int] | None = None,
           ) -> dict[int, tuple[Tensor, Tensor]]:
    """Each asked layer's MLP input (``mlp_in``) and output (``mlp_out``), (B, T, D) each, in one forward pass
    that stops after the last asked layer."""
    r = staged(model)
    L = r.spec.n_layers
    want = sorted(set(range(L) if layers is None else layers))
    x = r.embed_sum(tokens.to(r.device))
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for layer in range(want[-1] + 1):
        rec: dict[str, Tensor | None] = {}
        x, _ = r.layer(layer, x, record=rec)
        if layer in want:
            src = rec["resid_pre"] if r.spec.parallel else rec["resid_mid"]
            out[layer] = (r.pre_norm(layer, 2, src), rec["mlp_out"])
    return out


@dataclass(frozen=True)
class LayerQuality:
    """Reconstruction quality of one layer's dictionary on some positions."""

    layer: int
    explained_variance: float
    l0: float
    dead_fraction: float
    n_positions: int

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "explained_variance": self.explained_variance, "l0": self.l0,
                "dead_fraction": self.dead_fraction, "n_positions": self.n_positions}


def layer_stats(tc: Transcoder, x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"]) -> tuple[float, float, Tensor]:
    """(explained variance, L0, per-feature activity counts (F,)) of ``tc`` on inputs ``x`` with targets ``y``."""
    f = tc.encode(x)
    yhat = tc.decode(f, x)
    resid = (y - yhat).double().pow(2).sum()
    total = (y - y.mean(0)).double().pow(2).sum()
    active = f != 0
    return float(1 - resid / total), float(active.sum(-1).double().mean()), active.sum(0)


def mlp_response(runner: Any, layer: int, x: Float[Tensor, "n d_in"], v: Float[Tensor, "n d_in"]) -> Tensor:
    """The MLP's first-order response J·v at inputs ``x`` (``mlp_in``) along ``v``, in the runner's dtype and on its
    device (forward-mode differentiation of :meth:`Runner.mlp`, post-norm included)."""
    w = runner.w.W_U
    with torch.enable_grad():
        _, jv = torch.func.jvp(lambda t: runner.mlp(layer, t[None], normed=True)[0], (x.to(w.device, w.dtype),),
                               (v.to(w.device, w.dtype),))
    return jv.detach()


def jacobian_stats(runner: Any, layer: int, tc: Transcoder, x: Float[Tensor, "n d_in"], seed: int = 0
                   ) -> tuple[float, float]:
    """How well ``tc`` reproduces the MLP's first-order response at inputs ``x`` (``mlp_in``, model units):
    for one random direction v per position (scaled to that input's norm), the mean cosine between the MLP's
    J·v and the transcoder's J_tc·v, and the median of |J·v − J_tc·v| / |J·v|. Both by forward-mode
    differentiation; J_tc holds nothing (a JumpReLU's step has derivative 0), so it is the active features'
    encoder × decoder plus any skip. Returns (mean cosine, median relative error)."""
    w = runner.w.W_U
    x = x.to(w.device, w.dtype)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=g).to(w.device, w.dtype)
    v = v / v.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)
    tcw = tc.to(w.device, w.dtype)
    with torch.enable_grad():
        _, jt = torch.func.jvp(lambda t: tcw.decode(tcw.encode(t), t), (x,), (v,))
    jv, jt = mlp_response(runner, layer, x, v).double(), jt.double()
    cos = torch.nn.functional.cosine_similarity(jv, jt, dim=-1)
    rel = (jv - jt).norm(dim=-1) / jv.norm(dim=-1).clamp(min=1e-12)
    return float(cos.mean()), float(rel.median())


def layer_quality(dset: DictionarySet, model: Any, tokens: Int[Tensor, "batch pos"],
                  mask: Tensor | None = None) -> list[LayerQuality]:
    """Explained variance, L0 and dead fraction of every layer's dictionary on ``tokens`` (positions where
    ``mask`` (B, T) is true; default: all but position 0, whose BOS activations are outliers)."""
    dset.check(model, check_name=False)
    if mask is None:
        mask = torch.ones(tokens.shape, dtype=torch.bool)
        mask[:, 0] = False
    io = mlp_io(model, tokens)
    m = mask.to(tokens.device)
    out = []
    for layer, tc in enumerate(dset.layers):
        x_in, y_out = io[layer]
        x = (y_out if dset.input_point == "mlp_out" else x_in)[m].float()
        ev, l0, counts = layer_stats(tc.to(x.device), x, y_out[m].float())
        out.append(LayerQuality(layer, ev, l0, float((counts == 0).double().mean()), int(m.sum())))
    return out


def replacement_final(model: Any, tokens: Int[Tensor, "batch pos"],
                      mlp: Callable[[int, Tensor, Tensor], Tensor]) -> Float[Tensor, "batch pos d_model"]:
    """The final residual stream when each layer's MLP output is ``mlp(layer, mlp_in, true_mlp_out)``.

    The block as :meth:`Runner.layer` wires it, from the runner's public stages: attention, its post-norm, then
    the MLP (on resid_mid; on resid_pre in parallel blocks).
    """
    r = staged(model)
    x = r.embed_sum(tokens.to(r.device))
    for layer in range(r.spec.n_layers):
        z, _ = r.attention(layer, x, None, False)
        attn_out, _ = r.post_attention(layer, r.heads_to_attn_pre(layer, z))
        src = x if r.spec.parallel else x + attn_out
        mlp_out = mlp(layer, r.pre_norm(layer, 2, src), r.mlp(layer, src))
        x = x + attn_out + mlp_out
    return x


@dataclass(frozen=True)
class Agreement:
    """The replacement model (dictionaries in place of the MLPs, no error terms) against the real model."""

    kl: float  # mean KL(real ‖ replacement) of the next-token distributions at the final positions, in nats
    top1: float  # fraction of prompts whose top next token is the same
    logit_diff_real: float  # mean logit difference (correct − mean incorrect) of the real model
    logit_diff_replacement: float  # the same in the replacement model
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        return {"kl": self.kl, "top1": self.top1, "logit_diff_real": self.logit_diff_real,
                "logit_diff_replacement": self.logit_diff_replacement, "n_prompts": self.n_prompts}


def agreement(dset: DictionarySet, model: Any, tokens: Int[Tensor, "batch pos"], final_pos: Int[Tensor, " batch"],
              correct: Int[Tensor, " batch"] | None = None, incorrect: Int[Tensor, "batch k"] | None = None,
              error_terms: bool = False, keep_first: bool = True) -> Agreement:
    """KL, top-1 agreement and logit difference of the replacement model against the real one.

    ``error_terms``: add each layer's error (true output − reconstruction), which must give KL 0 (a check).
    ``keep_first``: position 0 (BOS, the attention sink, with outlier activations no dictionary is trained
    on) keeps the real MLP outputs, as circuit-tracer leaves its features out.
    """
    r = staged(model)
    dset.check(model, check_name=False)
    ds = dset.to(r.device, torch.float32)

    def swap(layer: int, mlp_in: Tensor, true_out: Tensor) -> Tensor:
        tc = ds.layers[layer]
        x = (true_out if ds.input_point == "mlp_out" else mlp_in).float()
        out = tc(x).to(true_out.dtype)
        if keep_first:
            out[:, 0] = true_out[:, 0]
        return out + (true_out - out) if error_terms else out

    rows = torch.arange(tokens.shape[0])
    fp = final_pos.to(r.device)
    real = r.run_from(0, "pre", r.embed_sum(tokens.to(r.device)))[rows, fp]  # (B, D)
    repl = replacement_final(model, tokens, swap)[rows, fp]
    lp_real = torch.log_softmax(r.unembed(real).double(), -1)
    lp_repl = torch.log_softmax(r.unembed(repl).double(), -1)
    kl = (lp_real.exp() * (lp_real - lp_repl)).sum(-1)
    top1 = (lp_real.argmax(-1) == lp_repl.argmax(-1)).double()
    ld_real = ld_repl = float("nan")
    if correct is not None and incorrect is not None:
        c, i = correct.to(r.device), incorrect.to(r.device)
        ld_real = float(r.answer_metrics(real, c, i, False)[0].double().mean())
        ld_repl = float(r.answer_metrics(repl, c, i, False)[0].double().mean())
    return Agreement(float(kl.mean()), float(top1.mean()), ld_real, ld_repl, int(tokens.shape[0]))
