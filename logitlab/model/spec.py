"""The architecture facts logitlab's forward pass needs, read from a processed TransformerBridge.

Only architectures on an allow-list are accepted: each one's forward pass is tested against the Hugging Face
forward pass. Anything else raises rather than guess (a plausible wrong number is the worst bug here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.model.moe import MoE, read_gpt_oss_moe_weights, read_moe, read_moe_weights
from logitlab.model.rotary import ROPE_TYPES, Rotary, cfg_value as _cfg, read_rotary

__all__ = ["ArchSpec", "Rotary", "Weights", "SUPPORTED_MODEL_TYPES", "KEEPS_VALUE_BIASES", "ROPE_TYPES", "read_spec",
           "read_weights", "read_rotary"]

# model_type (HF config) -> family. Gemma-2's final logit soft-cap makes the logits a non-linear function of the
# residual stream: its direct attributions decompose the logit difference before the cap (docs/models.md).
SUPPORTED_MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama",
                         "qwen3": "llama", "gemma2": "gemma2", "gemma3_text": "gemma3", "gpt_neox": "neox",
                         "olmo2": "olmo2", "phi3": "phi3", "granite": "granite", "qwen3_moe": "moe",
                         "olmoe": "moe", "mixtral": "moe", "gpt_oss": "gpt_oss"}

#: Model types with attention sinks: each pattern row sums to less than 1, so a value bias adds (row sum) · b_V to z,
#: not b_V, and cannot be folded into the output bias. The bridge is booted without that fold for these
#: (``model/bridge.py``), and ``read_weights`` refuses a bridge processed otherwise.
KEEPS_VALUE_BIASES = frozenset({"gpt_oss"})


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """Shape and wiring of a decoder-only transformer, as logitlab runs it (built by keyword only)."""

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    normalization: Literal["LN", "RMS"]
    eps: float
    positional: Literal["learned", "rotary"]
    rotary: tuple[Rotary, ...]  # per layer (empty for learned positions)
    sliding_window: tuple[int | None, ...]  # per layer
    act_fn: Literal["gelu_tanh", "gelu", "silu"]
    gated_mlp: bool
    post_norms: bool  # Gemma-2/3 "sandwich" norms after attention and MLP
    qk_norm: bool
    attn_scale: float
    embed_scale: float
    parallel: bool = False  # GPT-NeoX/Pythia: attention and MLP both read resid_pre
    attn_softcap: float | None = None  # Gemma-2: attention scores become tanh(s / cap) · cap before the softmax
    final_softcap: float | None = None  # Gemma-2: logits become tanh(l / cap) · cap (attributions: before it)
    pre_norms: bool = True  # False: no norm before attention and MLP (OLMo-2: post-norms only)
    qk_norm_all_heads: bool = False  # OLMo-2: one RMSNorm over all heads' queries (keys), not one per head
    # Granite: each block adds residual_multiplier · (attention, MLP output) and the logits are divided by
    # logits_scaling. read_weights folds both into the weights (W_O, b_O, W_out, b_out; W_U, b_U), so what a
    # component writes to the residual stream is what the read-out sees and the logits are the model's own.
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    moe: MoE | None = None  # mixtures of experts: the router and experts of the sparse blocks (model/moe.py)
    attn_sinks: bool = False  # gpt-oss: a learned logit per head joins each row's softmax (Weights.sinks, kernels.py)

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise LogitlabError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.moe is not None and (self.post_norms or self.parallel or len(self.moe.sparse) != self.n_layers):
            raise LogitlabError("mixtures of experts are supported in sequential pre-norm blocks only")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.model_type, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads, "d_model": self.d_model, "d_head": self.d_head,
                "d_vocab": self.d_vocab, "normalization": self.normalization,
                "post_attention_norm": self.post_norms, "parallel_attn_mlp": self.parallel}


@dataclass(frozen=True)
class Weights:
    """Processed (LayerNorm-folded, centred) weights in TransformerLens layout, stacked over layers.

    Norm weights are *effective* multipliers (Gemma's ``1 + w`` already applied).
    """

    W_E: Tensor  # (vocab, d_model)
    W_pos: Tensor | None  # (n_ctx, d_model)
    W_Q: Tensor  # (layer, head, d_model, d_head)
    W_K: Tensor  # (layer, kv_head, d_model, d_head)
    W_V: Tensor  # (layer, kv_head, d_model, d_head)
    b_Q: Tensor  # (layer, head, d_head)
    b_K: Tensor  # (layer, kv_head, d_head)
    b_V: Tensor  # (layer, kv_head, d_head)
    W_O: Tensor  # (layer, head, d_head, d_model)
    b_O: Tensor  # (layer, d_model)
    W_in: Tensor  # (layer, d_model, d_mlp)
    W_gate: Tensor | None  # (layer, d_model, d_mlp)
    b_in: Tensor  # (layer, d_mlp)
    W_out: Tensor  # (layer, d_mlp, d_model)
    b_out: Tensor  # (layer, d_model)
    ln1_w: Tensor  # (layer, d_model)
    ln1_b: Tensor
    ln2_w: Tensor
    ln2_b: Tensor
    post1_w: Tensor | None  # (layer, d_model) post-attention norm
    post2_w: Tensor | None  # (layer, d_model) post-MLP norm
    q_norm_w: Tensor | None  # (layer, d_head), or (layer, head · d_head) for a norm over all heads
    k_norm_w: Tensor | None
    lnf_w: Tensor  # (d_model,)
    lnf_b: Tensor
    W_U: Tensor  # (d_model, vocab)
    b_U: Tensor  # (vocab,)
    # Mixtures of experts (model/moe.py), zeros on dense layers; W_in, W_gate, W_out then hold the dense layers'.
    W_router: Tensor | None = None  # (layer, expert, d_model)
    W_exp_gate: Tensor | None = None  # (layer, expert, d_model, d_expert)
    W_exp_in: Tensor | None = None  # (layer, expert, d_model, d_expert)
    W_exp_out: Tensor | None = None  # (layer, expert, d_expert, d_model)
    # gpt-oss: router and expert biases (MoE.biases), and each head's attention-sink logit (ArchSpec.attn_sinks)
    b_router: Tensor | None = None  # (layer, expert)
    b_exp_gate: Tensor | None = None  # (layer, expert, d_expert)
    b_exp_in: Tensor | None = None  # (layer, expert, d_expert)
    b_exp_out: Tensor | None = None  # (layer, expert, d_model)
    sinks: Tensor | None = None  # (layer, head)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Weights:
        """These weights on ``device`` in ``dtype`` (tensors already there are shared, not copied).

        The result and ``self`` together hold both copies until the caller drops ``self``: a large model is read
        in its final dtype and device in the first place (``read_weights``, ``cache.load_weights``).
        """
        moved = {k: (v.to(device=device, dtype=dtype) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        return Weights(**moved)


@dataclass(frozen=True, kw_only=True)
class _Shape:
    """The shape facts every family reads the same way."""

    model_type: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int

    def as_kwargs(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "d_model": self.d_model, "d_head": self.d_head, "d_vocab": self.d_vocab}


def read_spec(hf_config: Any) -> ArchSpec:
    """Read the architecture from a Hugging Face config; raise on anything not supported."""
    model_type = getattr(hf_config, "model_type", None)
    family = SUPPORTED_MODEL_TYPES.get(model_type)
    if family is None:
        raise LogitlabError(
            f"architecture {model_type!r} is not supported by logitlab",
            f"supported model types: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}",
        )
    n_layers = int(_cfg(hf_config, "num_hidden_layers", "n_layer"))
    n_heads = int(_cfg(hf_config, "num_attention_heads", "n_head"))
    d_model = int(_cfg(hf_config, "hidden_size", "n_embd"))
    shape = _Shape(model_type=model_type, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                   d_head=int(_cfg(hf_config, "head_dim", default=d_model // n_heads)),
                   d_vocab=int(hf_config.vocab_size))
    return _READERS[family](hf_config, shape)


def _read_gpt2(cfg: Any, s: _Shape) -> ArchSpec:
    """GPT-2: LayerNorm, learned positions, full multi-head attention, GELU MLP."""
    act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(cfg.activation_function)
    if act is None or getattr(cfg, "scale_attn_by_inverse_layer_idx", False) \
            or getattr(cfg, "reorder_and_upcast_attn", False) or not getattr(cfg, "scale_attn_weights", True):
        raise LogitlabError("this GPT-2 variant (activation or attention scaling options) is not supported")
    return ArchSpec(**s.as_kwargs(), n_kv_heads=s.n_heads, normalization="LN", eps=float(cfg.layer_norm_epsilon),
                    positional="learned", rotary=(), sliding_window=(None,) * s.n_layers, act_fn=act,
                    gated_mlp=False, post_norms=False, qk_norm=False, attn_scale=1.0 / math.sqrt(s.d_head),
                    embed_scale=1.0)


def _read_neox(cfg: Any, s: _Shape) -> ArchSpec:
    """GPT-NeoX/Pythia: LayerNorm, partial rotary, attention and MLP in parallel (by default)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    factor = float(params.get("partial_rotary_factor", getattr(cfg, "rotary_pct", 1.0)))
    rotary = read_rotary(cfg, None, s.d_head, partial=factor)
    act = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh"}.get(cfg.hidden_act)
    if act is None:
        raise LogitlabError(f"activation {cfg.hidden_act!r} is not supported")
    return ArchSpec(**s.as_kwargs(), n_kv_heads=s.n_heads, normalization="LN", eps=float(cfg.layer_norm_eps),
                    positional="rotary", rotary=(rotary,) * s.n_layers,
                    sliding_window=(None,) * s.n_layers, act_fn=act, gated_mlp=False, post_norms=False,
                    qk_norm=False, attn_scale=s.d_head ** -0.5, embed_scale=1.0,
                    parallel=bool(getattr(cfg, "use_parallel_residual", True)))


def _gated_act(cfg: Any) -> str:
    name = _cfg(cfg, "hidden_activation", "hidden_act")
    act = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(name)
    if act is None:
        raise LogitlabError(f"activation {name!r} is not supported")
    return act


def _softcap(cfg: Any, name: str) -> float | None:
    cap = getattr(cfg, name, None)
    if cap is None:
        return None
    if not float(cap) > 0:
        raise LogitlabError(f"{name} = {cap!r}: a soft-cap must be a positive number (or null for none)")
    return float(cap)


def _read_gemma2(cfg: Any, s: _Shape) -> ArchSpec:
    """Gemma-2: as Gemma-3 without query/key norms, one rotary embedding, and soft-capped attention scores and
    logits (``attn_logit_softcapping``, ``final_logit_softcapping``)."""
    act = _gated_act(cfg)
    if getattr(cfg, "use_bidirectional_attention", False):
        raise LogitlabError("use_bidirectional_attention is set: only causal attention is supported")
    layer_types = getattr(cfg, "layer_types", None) or \
        ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(s.n_layers)]
    unknown = sorted(set(layer_types) - {"sliding_attention", "full_attention"})
    if unknown:
        raise LogitlabError(f"layer types {unknown} are not supported")
    window = _cfg(cfg, "sliding_window")
    return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                    normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                    rotary=(read_rotary(cfg, None, s.d_head),) * s.n_layers,
                    sliding_window=tuple(window if t == "sliding_attention" else None for t in layer_types),
                    act_fn=act, gated_mlp=True, post_norms=True, qk_norm=False,
                    attn_scale=float(cfg.query_pre_attn_scalar) ** -0.5, embed_scale=float(s.d_model) ** 0.5,
                    attn_softcap=_softcap(cfg, "attn_logit_softcapping"),
                    final_softcap=_softcap(cfg, "final_logit_softcapping"))


def _read_gemma3(cfg: Any, s: _Shape) -> ArchSpec:
    """Gemma-3: RMSNorm (1 + w), sandwich norms, query/key norms, per-layer sliding windows and rotary bases."""
    act = _gated_act(cfg)
    if getattr(cfg, "use_bidirectional_attention", False):
        raise LogitlabError("use_bidirectional_attention is set: only causal attention is supported")
    for cap in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, cap, None) is not None:
            raise LogitlabError(f"{cap} is set: soft-capping is supported on Gemma-2 only (no Gemma-3 checkpoint "
                                "uses it, and it is not tested there)")
    layer_types = getattr(cfg, "layer_types", None) or ["full_attention"] * s.n_layers
    window = _cfg(cfg, "sliding_window")
    return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                    normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                    rotary=tuple(read_rotary(cfg, t, s.d_head) for t in layer_types),
                    sliding_window=tuple(window if t == "sliding_attention" else None for t in layer_types),
                    act_fn=act, gated_mlp=True, post_norms=True, qk_norm=True,
                    attn_scale=float(cfg.query_pre_attn_scalar) ** -0.5, embed_scale=float(s.d_model) ** 0.5)


def _read_llama(cfg: Any, s: _Shape) -> ArchSpec:
    """Llama, Mistral, Qwen2, Qwen3: RMSNorm, rotary, grouped KV heads, gated MLP (Qwen3: query/key norms)."""
    act = _gated_act(cfg)
    window = _cfg(cfg, "sliding_window")
    use_window = getattr(cfg, "use_sliding_window", window is not None) and window is not None
    if s.model_type == "qwen2" and use_window:
        raise LogitlabError("Qwen2 with sliding-window attention is not supported")
    if getattr(cfg, "mlp_bias", False):
        raise LogitlabError("MLP biases on Llama-style models are not supported")
    return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                    normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                    rotary=(read_rotary(cfg, None, s.d_head),) * s.n_layers,
                    sliding_window=tuple(window if use_window else None for _ in range(s.n_layers)),
                    act_fn=act, gated_mlp=True, post_norms=False,
                    qk_norm=s.model_type == "qwen3",  # per-head RMSNorm on queries and keys, before the rotation
                    attn_scale=s.d_head ** -0.5, embed_scale=1.0)


def _read_olmo2(cfg: Any, s: _Shape) -> ArchSpec:
    """OLMo-2: RMSNorm after attention and after the MLP and none before them, RMSNorm over all heads' queries
    (and all KV heads' keys) together before the rotary embedding, rotary, gated MLP."""
    act = _gated_act(cfg)
    return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                    normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                    rotary=(read_rotary(cfg, None, s.d_head),) * s.n_layers, sliding_window=(None,) * s.n_layers,
                    act_fn=act, gated_mlp=True, post_norms=True, qk_norm=True, qk_norm_all_heads=True,
                    pre_norms=False, attn_scale=s.d_head ** -0.5, embed_scale=1.0)


def _read_phi3(cfg: Any, s: _Shape) -> ArchSpec:
    """Phi-3: the Llama layout with fused query/key/value and gate/up projections (split by TransformerLens), an
    optional partial rotary embedding (``partial_rotary_factor``), longrope scaling, an optional sliding window."""
    act = _gated_act(cfg)
    params = getattr(cfg, "rope_parameters", None) or {}
    partial = float(params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0) or 1.0))
    window = getattr(cfg, "sliding_window", None)
    return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                    normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                    rotary=(read_rotary(cfg, None, s.d_head, partial=partial),) * s.n_layers,
                    sliding_window=(None if window is None else int(window),) * s.n_layers,
                    act_fn=act, gated_mlp=True, post_norms=False, qk_norm=False, attn_scale=s.d_head ** -0.5,
                    embed_scale=1.0)


def _positive(cfg: Any, name: str) -> float:
    value = float(getattr(cfg, name, 1.0))
    if not value > 0 or not math.isfinite(value):
        raise LogitlabError(f"{name} = {value!r}: logitlab needs a positive finite multiplier")
    return value


def _read_granite(cfg: Any, s: _Shape) -> ArchSpec:
    """Granite: the Llama layout with ``embedding_multiplier`` (scales the token embedding),
    ``attention_multiplier`` (the attention scale, instead of 1/√d_head), ``residual_multiplier`` (scales what each
    attention and MLP adds to the residual stream) and ``logits_scaling`` (logits are divided by it)."""
    act = _gated_act(cfg)
    if getattr(cfg, "mlp_bias", False):
        raise LogitlabError("mlp_bias is set: MLP biases on Granite models are not supported")
    return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                    normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                    rotary=(read_rotary(cfg, None, s.d_head),) * s.n_layers, sliding_window=(None,) * s.n_layers,
                    act_fn=act, gated_mlp=True, post_norms=False, qk_norm=False,
                    attn_scale=_positive(cfg, "attention_multiplier"),
                    embed_scale=_positive(cfg, "embedding_multiplier"),
                    residual_multiplier=_positive(cfg, "residual_multiplier"),
                    logits_scaling=_positive(cfg, "logits_scaling"))


def _read_moe(cfg: Any, s: _Shape) -> ArchSpec:
    """Mixtures of experts: Qwen3-MoE (the Qwen3 layout: per-head query/key norms; dense layers by
    ``mlp_only_layers``/``decoder_sparse_step``), OLMoE (the Llama layout with query/key RMSNorm over all heads
    together) and Mixtral (the Mistral layout), each layer's MLP replaced by a sparse block (model/moe.py)."""
    moe = read_moe(cfg, s.model_type, s.n_layers)
    if s.model_type == "olmoe":
        if getattr(cfg, "clip_qkv", None) is not None:
            raise LogitlabError(f"clip_qkv = {cfg.clip_qkv!r}: clipping queries, keys and values is not supported")
        if getattr(cfg, "sliding_window", None) is not None:
            raise LogitlabError("sliding_window is set: OLMoE attends over the whole context in Hugging Face")
        return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                        normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                        rotary=(read_rotary(cfg, None, s.d_head),) * s.n_layers, sliding_window=(None,) * s.n_layers,
                        act_fn=_gated_act(cfg), gated_mlp=True, post_norms=False, qk_norm=True,
                        qk_norm_all_heads=True, attn_scale=s.d_head ** -0.5, embed_scale=1.0, moe=moe)
    return replace(_read_llama(cfg, s), qk_norm=s.model_type == "qwen3_moe", moe=moe)


#: The gpt-oss config keys logitlab reads or knows to be irrelevant to the forward pass it runs (besides the keys every
#: transformers config has); any other key is refused by name. ``hidden_act`` is not used by the Hugging Face
#: modules (the experts apply their clamped SwiGLU); ``attention_dropout``, ``initializer_range``,
#: ``router_aux_loss_coef`` and ``output_router_logits`` act in training only; ``experts_per_token`` and
#: ``initial_context_length`` are duplicates the released config.json files carry and transformers ignores
#: (the first must equal ``num_experts_per_tok``); ``quantization_config`` is how the checkpoint is stored
#: (transformers dequantises it on load).
_GPT_OSS_KEYS = frozenset({
    "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "head_dim", "hidden_act",
    "hidden_size", "initializer_range", "intermediate_size", "layer_types", "max_position_embeddings",
    "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads", "num_local_experts",
    "output_router_logits", "rms_norm_eps", "rope_parameters", "router_aux_loss_coef", "sliding_window",
    "swiglu_alpha", "swiglu_limit", "tie_word_embeddings", "use_cache", "vocab_size", "experts_per_token",
    "initial_context_length", "quantization_config"})
_GENERIC_KEYS = frozenset({
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label",
    "is_encoder_decoder", "label2id", "model_type", "output_attentions", "output_hidden_states", "problem_type",
    "return_dict", "transformers_version", "tokenizer_class", "_attn_implementation_autoset"})


def _read_gpt_oss(cfg: Any, s: _Shape) -> ArchSpec:
    """gpt-oss: RMSNorm, grouped KV heads with biases on the query, key, value and output projections, a learned
    attention-sink logit per head, sliding-window and full attention alternating by ``layer_types``, yarn rotary,
    every MLP a sparse block (router with a bias, softmax over the top-k logits, experts with biases and a clamped
    SwiGLU: model/moe.py). Config keys outside a known list are refused by name."""
    unknown = sorted(set(cfg.to_dict()) - _GPT_OSS_KEYS - _GENERIC_KEYS)
    if unknown:
        raise LogitlabError(f"gpt_oss: config options {unknown} are not supported by logitlab",
                            "refused rather than guess what they change in the forward pass")
    if getattr(cfg, "experts_per_token", None) not in (None, cfg.num_experts_per_tok):
        raise LogitlabError(f"gpt_oss: experts_per_token = {cfg.experts_per_token} differs from "
                            f"num_experts_per_tok = {cfg.num_experts_per_tok} (transformers uses the latter)")
    layer_types = list(getattr(cfg, "layer_types", None) or ())
    unknown = sorted(set(layer_types) - {"sliding_attention", "full_attention"})
    if unknown or len(layer_types) != s.n_layers:
        raise LogitlabError(f"gpt_oss: layer_types {layer_types} (expected one of sliding_attention, "
                            f"full_attention per layer, {s.n_layers} layers)")
    window = getattr(cfg, "sliding_window", None)
    if window is None and "sliding_attention" in layer_types:
        raise LogitlabError("gpt_oss: sliding_attention layers without a sliding_window")
    return ArchSpec(**s.as_kwargs(), n_kv_heads=int(_cfg(cfg, "num_key_value_heads", default=s.n_heads)),
                    normalization="RMS", eps=float(cfg.rms_norm_eps), positional="rotary",
                    rotary=(read_rotary(cfg, None, s.d_head),) * s.n_layers,
                    sliding_window=tuple(int(window) if t == "sliding_attention" else None for t in layer_types),
                    act_fn="silu", gated_mlp=True, post_norms=False, qk_norm=False, attn_scale=s.d_head ** -0.5,
                    embed_scale=1.0, moe=read_moe(cfg, s.model_type, s.n_layers), attn_sinks=True)


_READERS: dict[str, Callable[[Any, _Shape], ArchSpec]] = {
    "gpt2": _read_gpt2, "neox": _read_neox, "gemma2": _read_gemma2, "gemma3": _read_gemma3, "llama": _read_llama,
    "olmo2": _read_olmo2, "phi3": _read_phi3, "granite": _read_granite, "moe": _read_moe, "gpt_oss": _read_gpt_oss}


def _norm_params(module: Any, offset: bool, d: int) -> tuple[Tensor, Tensor]:
    inner = getattr(module, "original_component", module)
    w = getattr(inner, "weight", None)
    b = getattr(inner, "bias", None)
    w = torch.ones(d) if w is None else w.detach().float().clone()
    if offset:
        w = w + 1.0  # Gemma's RMSNorm multiplies by (1 + weight)
    b = torch.zeros(d) if b is None else b.detach().float().clone()
    return w, b


def _stack_or_zeros(bridge: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    try:
        value = getattr(bridge, name)
    except (AttributeError, ValueError, RuntimeError):
        return torch.zeros(shape)
    return torch.zeros(shape) if value is None else value.detach().float().clone()


def read_weights(bridge: Any, spec: ArchSpec, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Weights:
    """Copy the processed weights out of a TransformerBridge in compatibility mode, in ``dtype`` on ``device``.

    Each weight is read from the bridge in float32 (Granite's multipliers applied there) and converted at once,
    so a lower-precision load never holds a float32 copy of the whole model: only the bridge's own weights and
    one stacked weight (e.g. every layer's ``W_in``) in float32 at a time.
    """
    L, H, K, D, dh = spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_model, spec.d_head

    def take(x: Tensor, mul: float = 1.0, div: float = 1.0) -> Tensor:
        """A copy of ``x`` (never the bridge's own storage) scaled in float32, then in dtype on device."""
        x = x.detach().float()
        x = x * mul if mul != 1.0 else x
        x = x / div if div != 1.0 else x
        return x.to(device=device, dtype=dtype, copy=True)

    offset = bool(getattr(bridge.cfg, "rmsnorm_uses_offset", False))
    W_K = take(bridge.W_K)
    if W_K.shape[1] != K:
        raise LogitlabError(f"unexpected key-weight layout {tuple(W_K.shape)} (expected {K} KV heads)")
    blocks = list(bridge.blocks)
    if spec.pre_norms:
        ln1 = [_norm_params(b.ln1, offset, D) for b in blocks]
        ln2 = [_norm_params(b.ln2, offset, D) for b in blocks]
    else:  # no norm before attention and MLP (the runner skips them; identity weights for the record)
        ln1 = ln2 = [(torch.ones(D), torch.zeros(D))] * L
    lnf = _norm_params(bridge.ln_final, offset, D)
    post1 = post2 = qn = kn = None
    if spec.post_norms:
        post1 = take(torch.stack([_norm_params(b.ln1_post, offset, D)[0] for b in blocks]))
        post2 = take(torch.stack([_norm_params(b.ln2_post, offset, D)[0] for b in blocks]))
    if spec.qk_norm:
        nq, nk = (H * dh, K * dh) if spec.qk_norm_all_heads else (dh, dh)
        qn = take(torch.stack([_norm_params(b.attn.q_norm, offset, nq)[0] for b in blocks]))
        kn = take(torch.stack([_norm_params(b.attn.k_norm, offset, nk)[0] for b in blocks]))
        if qn.shape[-1] != nq or kn.shape[-1] != nk:
            raise LogitlabError(f"unexpected query/key norm sizes {qn.shape[-1]}, {kn.shape[-1]} (expected {nq}, {nk})")
    moe = {} if spec.moe is None else (read_gpt_oss_moe_weights if spec.model_type == "gpt_oss" else
                                       read_moe_weights)(blocks, spec.moe, D)  # experts, and dense layers' MLPs
    sinks = None
    if spec.attn_sinks:
        if spec.model_type in KEEPS_VALUE_BIASES and not getattr(bridge, "logitlab_value_biases_kept", False):
            raise LogitlabError(f"{spec.model_type}: this TransformerBridge was not booted by logitlab, and its "
                                "value biases may have been folded into the output bias, which is wrong with "
                                "attention sinks (pattern rows sum to less than 1)",
                                "pass the bridge before enable_compatibility_mode(), or load the model by path")
        sinks = take(torch.stack([getattr(b.attn, "original_component", b.attn).sinks.detach().float()
                                  for b in blocks]))
        if sinks.shape != (L, H):
            raise LogitlabError(f"unexpected attention-sink shape {tuple(sinks.shape)} (expected {(L, H)})")
    W_gate = (take(moe["W_gate"]) if moe else take(bridge.W_gate)) if spec.gated_mlp else None
    W_in = take(moe["W_in"]) if moe else take(bridge.W_in)
    d_mlp = W_in.shape[-1]
    W_pos = take(bridge.W_pos) if spec.positional == "learned" else None
    m, ls = spec.residual_multiplier, spec.logits_scaling  # Granite's multipliers, folded (see ArchSpec)
    W_U = take(bridge.W_U, div=ls)
    return Weights(
        W_E=take(bridge.W_E), W_pos=W_pos,
        W_Q=take(bridge.W_Q), W_K=W_K, W_V=take(bridge.W_V),
        b_Q=take(_stack_or_zeros(bridge, "b_Q", (L, H, dh))), b_K=take(_stack_or_zeros(bridge, "b_K", (L, K, dh))),
        b_V=take(_stack_or_zeros(bridge, "b_V", (L, K, dh))),
        W_O=take(bridge.W_O, m), b_O=take(_stack_or_zeros(bridge, "b_O", (L, D)), m),
        # the experts and dense MLPs of mixtures of experts have no biases
        W_in=W_in, W_gate=W_gate,
        b_in=take(torch.zeros(L, d_mlp) if moe else _stack_or_zeros(bridge, "b_in", (L, d_mlp))),
        W_out=take(moe["W_out"] if moe else bridge.W_out, m),
        b_out=take(torch.zeros(L, D) if moe else _stack_or_zeros(bridge, "b_out", (L, D)), m),
        ln1_w=take(torch.stack([w for w, _ in ln1])), ln1_b=take(torch.stack([b for _, b in ln1])),
        ln2_w=take(torch.stack([w for w, _ in ln2])), ln2_b=take(torch.stack([b for _, b in ln2])),
        post1_w=post1, post2_w=post2, q_norm_w=qn, k_norm_w=kn, lnf_w=take(lnf[0]), lnf_b=take(lnf[1]),
        W_U=W_U, b_U=take(_stack_or_zeros(bridge, "b_U", (W_U.shape[1],)), div=ls),
        **{k: take(moe[k]) if k in moe else None for k in ("W_router", "W_exp_gate", "W_exp_in", "W_exp_out",
                                                           "b_router", "b_exp_gate", "b_exp_in", "b_exp_out")},
        sinks=sinks,
    )
