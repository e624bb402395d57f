"""Mixtures of experts (Qwen3-MoE, OLMoE, Mixtral, gpt-oss) on logitlab's own forward pass.

A sparse block replaces a layer's MLP: a router (one linear map, no bias) gives each token a logit per expert, a
softmax turns them into probabilities (in float32), the ``top_k`` largest are kept (and divided by their sum where
the model renormalises them: ``norm_topk_prob``, always on Mixtral), and the block's output is the sum of the kept
experts' gated MLPs, each times its weight. This is what the Hugging Face modules compute.

gpt-oss differs in three places (``MoE.topk_softmax``, ``MoE.swiglu``, the biases): its router has a bias and keeps
the ``top_k`` largest *logits*, then takes the softmax over those k only; each expert has biases on its gate/up and
down projections, and its activation is a clamped SwiGLU: gate ≤ limit, −limit ≤ up ≤ limit,
hidden = (up + 1) · gate · σ(alpha · gate). Its checkpoints store gate and up *interleaved* (even columns gate,
odd columns up) in one (expert, d_model, 2·d_expert) tensor.

**Routing is recomputed, never frozen.** The experts a token uses depend on its input, so every forward pass
(clean run, sweeps, cached prefixes, the graph forward, gradients) routes again: an ablation or a patch upstream of
a block can change which experts the block uses, exactly as in the model. Gradients are those of the model's own
forward pass (autograd through the kept probabilities; the choice of experts is piecewise constant), so they agree
with finite differences away from routing ties.

**Cost.** Every expert of a sparse block is computed for every token and the non-selected ones are weighted by
zero (one batched product per projection, no data-dependent shapes: the same code runs on meta tensors for FLOP
counting and under autograd). That costs ``n_experts / top_k`` times the model's own expert FLOPs (Mixtral 4×,
OLMoE 8×, Qwen3-30B-A3B 16×) and holds ``n_experts · d_expert`` hidden units per token; correct for every model
and fast on small ones.

**Nodes.** A sparse block's output is the layer's ``mlp_out`` (and the graph's MLP node ``M{layer}``): DLA, layer
attribution, ablation, activation patching and circuits treat it as a layer's MLP. Single experts are not nodes
(no per-expert attribution, ablation or patching).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from logitlab.errors import LogitlabError

__all__ = ["MoE", "read_moe", "read_moe_weights", "read_gpt_oss_moe_weights", "route", "moe_forward"]


@dataclass(frozen=True, kw_only=True)
class MoE:
    """The router and experts of a model's sparse blocks."""

    n_experts: int
    top_k: int
    norm_topk_prob: bool  # divide the kept probabilities by their sum
    d_expert: int  # hidden units of one expert
    sparse: tuple[bool, ...]  # per layer: a sparse block (else the layer has a dense MLP)
    # gpt-oss: top-k on the router's logits, then a softmax over the k kept (not a softmax over all, then top-k)
    topk_softmax: bool = False
    # gpt-oss: (alpha, limit) of the experts' clamped SwiGLU (replaces the model's activation); None: act(gate) · up
    swiglu: tuple[float, float] | None = None
    biases: bool = False  # gpt-oss: router and expert biases (b_router, b_exp_gate, b_exp_in, b_exp_out)


#: Config keys about experts and routing that each family's reader understands. Any other key that names experts,
#: routers or top-k selection is refused by name rather than ignored. Training-only keys (the auxiliary loss, router
#: logits in the output, Mixtral's jitter noise, which Hugging Face applies in training mode only) do not change the
#: forward pass logitlab runs (eval mode).
_MOE_KEYS = {
    "qwen3_moe": {"num_experts", "num_local_experts", "num_experts_per_tok", "norm_topk_prob", "moe_intermediate_size",
                  "decoder_sparse_step", "mlp_only_layers", "output_router_logits", "router_aux_loss_coef"},
    "olmoe": {"num_experts", "num_experts_per_tok", "norm_topk_prob", "output_router_logits", "router_aux_loss_coef"},
    "mixtral": {"num_local_experts", "num_experts_per_tok", "output_router_logits", "router_aux_loss_coef",
                "router_jitter_noise"},
    "gpt_oss": {"num_local_experts", "num_experts_per_tok", "output_router_logits", "router_aux_loss_coef",
                "experts_per_token"},
}
_MOE_WORDS = re.compile(r"expert|router|moe|top_?k|shared|sparse|mlp_only|capacity|routed|gating", re.IGNORECASE)


def read_moe(cfg: Any, model_type: str, n_layers: int) -> MoE:
    """The sparse blocks of a Hugging Face config; raise naming any routing option logitlab does not implement."""
    unknown = sorted(k for k in cfg.to_dict() if _MOE_WORDS.search(k) and k not in _MOE_KEYS[model_type])
    if unknown:
        raise LogitlabError(f"{model_type}: expert/router options {unknown} are not supported by logitlab",
                            "only the routing of the released checkpoints is implemented (softmax, top-k, "
                            "optional renormalisation)")
    E, k = int(cfg.num_experts), int(cfg.num_experts_per_tok)  # num_experts: an alias of num_local_experts
    if not 1 <= k <= E:
        raise LogitlabError(f"{model_type}: num_experts_per_tok = {k} with {E} experts")
    if model_type == "gpt_oss":
        alpha, limit = float(cfg.swiglu_alpha), float(cfg.swiglu_limit)
        if not (math.isfinite(alpha) and math.isfinite(limit) and limit > 0):
            raise LogitlabError(f"gpt_oss: swiglu_alpha = {alpha!r}, swiglu_limit = {limit!r}: logitlab needs finite "
                                "values and a positive limit")
        return MoE(n_experts=E, top_k=k, norm_topk_prob=False, d_expert=int(cfg.intermediate_size),
                   sparse=(True,) * n_layers, topk_softmax=True, swiglu=(alpha, limit), biases=True)
    if model_type == "qwen3_moe":
        step, dense = int(cfg.decoder_sparse_step), set(cfg.mlp_only_layers or ())
        if step < 1:
            raise LogitlabError(f"decoder_sparse_step = {step}: must be at least 1")
        sparse = tuple(l not in dense and (l + 1) % step == 0 for l in range(n_layers))
        d_expert, norm = int(cfg.moe_intermediate_size), bool(cfg.norm_topk_prob)
    else:
        sparse, d_expert = (True,) * n_layers, int(cfg.intermediate_size)
        norm = True if model_type == "mixtral" else bool(cfg.norm_topk_prob)
    return MoE(n_experts=E, top_k=k, norm_topk_prob=norm, d_expert=d_expert, sparse=sparse)


def _weight(module: Any) -> Tensor:
    inner = getattr(module, "original_component", module)
    return inner.weight.detach().float().clone()


def read_moe_weights(blocks: list[Any], moe: MoE, d_model: int) -> dict[str, Tensor]:
    """Router and expert weights of every sparse block, and the dense MLPs of the other layers, from the bridge's
    blocks (norm weights folded by TransformerLens into the router, the experts' gate/up and the dense gate/up).

    Returns ``W_in``, ``W_gate``, ``W_out`` (dense layers; zeros on sparse ones, width 0 when every layer is
    sparse), ``W_router`` (layer, expert, d_model) and ``W_exp_gate``, ``W_exp_in`` (layer, expert, d_model,
    d_expert) and ``W_exp_out`` (layer, expert, d_expert, d_model) (zeros on dense layers).
    """
    L, E, f, D = len(blocks), moe.n_experts, moe.d_expert, d_model
    inners = [getattr(b.mlp, "original_component", b.mlp) for b in blocks]
    dense = [m for m, s in zip(inners, moe.sparse) if not s]
    d_mlp = _weight(dense[0].up_proj).shape[0] if dense else 0
    out = {"W_in": torch.zeros(L, D, d_mlp), "W_gate": torch.zeros(L, D, d_mlp), "W_out": torch.zeros(L, d_mlp, D),
           "W_router": torch.zeros(L, E, D), "W_exp_gate": torch.zeros(L, E, D, f), "W_exp_in": torch.zeros(L, E, D, f),
           "W_exp_out": torch.zeros(L, E, f, D)}
    for l, (m, sparse) in enumerate(zip(inners, moe.sparse)):
        if not sparse:
            out["W_gate"][l], out["W_in"][l] = _weight(m.gate_proj).T, _weight(m.up_proj).T
            out["W_out"][l] = _weight(m.down_proj).T
            continue
        gate_up = m.experts.gate_up_proj.detach().float()  # (E, 2f, D): gate rows, then up rows
        down = m.experts.down_proj.detach().float()  # (E, D, f)
        router = _weight(m.gate)
        if gate_up.shape != (E, 2 * f, D) or down.shape != (E, D, f) or router.shape != (E, D):
            raise LogitlabError(f"layer {l}: unexpected expert weight shapes {tuple(gate_up.shape)}, "
                                f"{tuple(down.shape)}, router {tuple(router.shape)} ({E} experts of {f} units)")
        out["W_router"][l] = router
        out["W_exp_gate"][l], out["W_exp_in"][l] = gate_up[:, :f].transpose(1, 2), gate_up[:, f:].transpose(1, 2)
        out["W_exp_out"][l] = down.transpose(1, 2)
    return out


def read_gpt_oss_moe_weights(blocks: list[Any], moe: MoE, d_model: int) -> dict[str, Tensor]:
    """gpt-oss's routers and experts, with their biases, from the bridge's blocks (the pre-MLP norm folded by
    TransformerLens into the router's rows and the experts' gate/up rows, as for the other families).

    Returns :func:`read_moe_weights`' names (the dense ``W_in``, ``W_gate``, ``W_out`` with width 0: every layer is
    sparse) and ``b_router`` (layer, expert), ``b_exp_gate``, ``b_exp_in`` (layer, expert, d_expert),
    ``b_exp_out`` (layer, expert, d_model). Gate and up are de-interleaved: even columns gate, odd columns up.
    """
    L, E, f, D = len(blocks), moe.n_experts, moe.d_expert, d_model
    if not all(moe.sparse):
        raise LogitlabError("gpt_oss: every layer must be a sparse block")
    out = {"W_in": torch.zeros(L, D, 0), "W_gate": torch.zeros(L, D, 0), "W_out": torch.zeros(L, 0, D)}
    for l, b in enumerate(blocks):
        m = getattr(b.mlp, "original_component", b.mlp)
        ex, r = m.experts, getattr(m.router, "original_component", m.router)
        got = {"W_router": r.weight, "b_router": r.bias, "gate_up": ex.gate_up_proj, "b_gate_up": ex.gate_up_proj_bias,
               "W_exp_out": ex.down_proj, "b_exp_out": ex.down_proj_bias}
        want = {"W_router": (E, D), "b_router": (E,), "gate_up": (E, D, 2 * f), "b_gate_up": (E, 2 * f),
                "W_exp_out": (E, f, D), "b_exp_out": (E, D)}
        bad = {k: tuple(v.shape) for k, v in got.items() if tuple(v.shape) != want[k]}
        if bad:
            raise LogitlabError(f"layer {l}: unexpected gpt-oss expert weight shapes {bad} ({E} experts of {f} units)")
        got = {k: v.detach().float() for k, v in got.items()}
        # interleaved: gate_up[..., 2i] is unit i's gate, gate_up[..., 2i + 1] its up projection
        got |= {"W_exp_gate": got["gate_up"][..., ::2], "W_exp_in": got["gate_up"][..., 1::2],
                "b_exp_gate": got["b_gate_up"][..., ::2], "b_exp_in": got["b_gate_up"][..., 1::2]}
        for k in ("W_router", "b_router", "W_exp_gate", "W_exp_in", "W_exp_out", "b_exp_gate", "b_exp_in", "b_exp_out"):
            out.setdefault(k, torch.zeros(L, *got[k].shape))[l] = got[k]
    return out


def route(moe: MoE, w: Any, layer: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The router of sparse block ``layer`` on its normed input ``x`` (..., D): every expert's probability
    (..., E) (float32, or float64), the kept experts (..., top_k) and their weights (..., E), zero elsewhere.

    gpt-oss (``topk_softmax``): the router's logits (plus its bias) choose the ``top_k`` experts and the weights
    are the softmax over those k logits; the probabilities returned are then the softmax over all the logits
    (their order is the logits', so they rank the experts as the router does).
    """
    logits = x @ w.W_router[layer].T  # (..., E)
    if moe.biases:
        logits = logits + w.b_router[layer]
    # float32 as the Hugging Face routers (float64 stays float64, e.g. for gradient checks)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    probs = torch.softmax(logits, dim=-1)
    if moe.topk_softmax:
        top, idx = torch.topk(logits, moe.top_k, dim=-1)
        top = torch.softmax(top, dim=-1)
    else:
        top, idx = torch.topk(probs, moe.top_k, dim=-1)
        if moe.norm_topk_prob:
            top = top / top.sum(-1, keepdim=True)
    return probs, idx, torch.zeros_like(probs).scatter(-1, idx, top)


def _clamped_swiglu(gate: Tensor, up: Tensor, alpha: float, limit: float) -> Tensor:
    """gpt-oss's expert activation: gate ≤ limit, −limit ≤ up ≤ limit, (up + 1) · gate · σ(alpha · gate)."""
    gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return (up + 1) * gate * torch.sigmoid(gate * alpha)


def moe_forward(moe: MoE, w: Any, layer: int, x: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
    """A sparse block's output (..., D) for its normed input ``x`` (..., D); ``w`` holds the weights
    (:func:`read_moe_weights`' names), ``act`` is the experts' activation (gpt-oss: its clamped SwiGLU instead)."""
    weights = route(moe, w, layer, x)[2].to(x.dtype)  # (..., E): zero for experts not kept
    gate = torch.einsum("...d,edf->...ef", x, w.W_exp_gate[layer])  # (..., E, f)
    up = torch.einsum("...d,edf->...ef", x, w.W_exp_in[layer])
    if moe.biases:
        gate, up = gate + w.b_exp_gate[layer], up + w.b_exp_in[layer]
    hidden = act(gate) * up if moe.swiglu is None else _clamped_swiglu(gate, up, *moe.swiglu)  # (..., E, f)
    out = torch.einsum("...ef,efd->...ed", hidden, w.W_exp_out[layer])  # each expert's output (..., E, D)
    if moe.biases:
        out = out + w.b_exp_out[layer]
    return torch.einsum("...e,...ed->...d", weights, out)
