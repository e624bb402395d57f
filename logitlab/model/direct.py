"""A first load of a local safetensors checkpoint straight into logitlab's processed weights.

Method: the other first load (:mod:`logitlab.model.sources`) has Hugging Face load the whole model in float32,
boots a TransformerLens bridge in compatibility mode and copies its processed weights out
(:func:`logitlab.model.spec.read_weights`): the whole model in float32 plus the bridge on the host, 32 GB for an
8B model. Here the checkpoint's tensors are read one at a time in their stored dtype and the same processing is
done per layer in float32, each result converted to the load's dtype and device at once (the embedding and
unembedding in blocks), so the peak is the model in that dtype plus about one layer's weights in float32.

The processing TransformerLens 4.x applies in compatibility mode to these RMSNorm models (its
``ProcessWeights.process_weights``), repeated here operation for operation so the float32 numbers are the same:

* **fold_ln**: each pre-norm's effective scale (``1 + w`` on Gemma) multiplies the weights that read it (the
  query, key and value weights; the MLP's gate and input weights; the unembedding), and the norm becomes the
  identity. RMSNorms have no bias and their inputs are not centred, so nothing else is folded or centred.
  Gemma's post-norms and query/key norms are not folded (they follow a non-linear step): their effective scales
  are kept.
* **center_unembed**: the unembedding minus its mean over the vocabulary, unless the logits are soft-capped
  (Gemma-2's ``final_logit_softcapping``: the cap is not translation-invariant).
* **fold_value_biases**: the value biases (grouped ones repeated for the query heads sharing them) go through
  ``W_O`` into the output bias and become zero.
* Writing weights are not centred (TransformerLens does that for LayerNorm models only); the token embedding
  is the stored one (Gemma's √d_model and Granite's embedding multiplier are applied by the forward pass,
  ``ArchSpec.embed_scale``), and rotary settings (Phi-3's partial rotary and longrope) live in the spec, not the
  weights.

Per family, beyond that:

* **OLMo-2** has no pre-norms (a norm after attention and after the MLP, query/key norms over all heads
  together): nothing is folded. TransformerLens does not fold its final norm either (its adapter does not
  support fold_ln), so the final norm's scale is kept as ``lnf_w`` and the unembedding is centred unscaled. Its
  post-norms and query/key norms are kept as they are. Attention biases are not read here.
* **Phi-3**'s fused ``qkv_proj`` is split into its query, key and value rows (in that order) and ``gate_up_proj``
  into gate rows then up rows, as TransformerLens splits them. Its adapter skips fold_ln but folds the pre-norms
  and the final norm itself (``preprocess_weights``: the same products in float32), so the result is Llama's.
* **Mixtures of experts** (Qwen3-MoE, OLMoE, Mixtral): the pre-MLP norm's scale is folded into the router's rows
  and each expert's gate and input weights (``read_moe_weights`` reads them so from the bridge); the dense MLPs
  of Qwen3-MoE's ``mlp_only_layers`` as Llama's; zeros where a layer has no sparse block (or no dense MLP).
  Mixtral's checkpoints name the expert weights ``w1`` (gate), ``w3`` (up), ``w2`` (down).
* **gpt-oss**: the pre-MLP norm folded into the router's rows and the d_model rows of each expert's interleaved
  ``gate_up_proj`` (E, d_model, 2·d_expert), then split into gate (even columns) and up (odd columns) as
  ``read_gpt_oss_moe_weights`` reads them from the bridge; router and expert biases and the attention sinks as
  stored. Its value biases are **not** folded (attention sinks: pattern rows sum to less than 1; the bridge is
  booted without that fold, ``model/bridge.py``): ``b_V`` as stored, ``b_O`` the output projection's own bias.
* **Granite**: the Llama processing, then its multipliers as ``read_weights`` applies them to the bridge's
  processed weights: ``W_O``, ``b_O`` (after the value biases are folded through the unscaled ``W_O``) and
  ``W_out`` times ``residual_multiplier``, the centred unembedding divided by ``logits_scaling``.

Invariant: for every covered family, :func:`direct_weights` equals ``read_weights`` of the booted bridge field
by field and in memory layout (float32, and rounded to bfloat16 or float16), and so do the logits
(``tests/unit/test_direct_load.py``).

Only what is on the allow-list loads here: the families in :data:`DIRECT_MODEL_TYPES`, a checkpoint whose
tensor names and shapes are exactly the expected ones, in a float dtype, without a quantisation config or
model code of its own.
Anything else returns None with the reason logged, and the caller takes the bridge path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from logitlab.model.spec import KEEPS_VALUE_BIASES, ArchSpec, Weights

__all__ = ["DIRECT_MODEL_TYPES", "direct_reason", "direct_weights"]

log = logging.getLogger(__name__)

#: Hugging Face model types whose first load skips the bridge (all others take the bridge path).
DIRECT_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "olmo2", "phi3",
                                "granite", "qwen3_moe", "olmoe", "mixtral", "gpt_oss"})
_MOE = frozenset({"qwen3_moe", "olmoe", "mixtral", "gpt_oss"})  # mixtures of experts (model/moe.py)
_ALL_HEADS_QK_NORM = frozenset({"olmo2", "olmoe"})  # one query (key) norm over all heads together
_GEMMA = frozenset({"gemma2", "gemma3_text"})  # RMSNorm (1 + w), sandwich norms
_POST_NORMS = _GEMMA | {"olmo2"}  # norms after attention and the MLP
_NO_BIASES = frozenset({"olmo2", "phi3"})  # attention biases are not read here (the bridge path loads them)
_FLOAT_DTYPES = frozenset({"F32", "BF16", "F16"})  # stored dtypes read here (safetensors names)
# Tensors some checkpoints carry that transformers ignores on load (recomputed buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class _Checkpoint:
    """The tensors of a folder's safetensors files (one file, or shards with an index), read one at a time.

    Each read opens its file and closes it again: the file is memory-mapped while open, and a mapping kept open
    through the whole load would keep every page read so far resident (the size of the checkpoint again).
    """

    def __init__(self, folder: Path) -> None:
        from safetensors import SafetensorError, safe_open
        index = folder / "model.safetensors.index.json"
        self.files: dict[str, Path] = {}  # tensor name -> its file
        self._info: dict[str, tuple[tuple[int, ...], str]] = {}  # tensor name -> (shape, stored dtype)
        try:
            if index.is_file():
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            elif (folder / "model.safetensors").is_file():
                weight_map, files = None, ["model.safetensors"]
            else:
                raise _NotCovered("no model.safetensors or model.safetensors.index.json")
            for f in files:
                with safe_open(str(folder / f), framework="pt", device="cpu") as h:
                    for k in h.keys():
                        s = h.get_slice(k)
                        self.files[k], self._info[k] = folder / f, (tuple(s.get_shape()), str(s.get_dtype()))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            # the bridge path reports unreadable weight files with its own message
            raise _NotCovered(f"cannot read the safetensors files: {type(e).__name__}: {e}") from e
        if weight_map is not None:
            missing = sorted(k for k, f in weight_map.items() if self.files.get(k) != folder / f)
            if missing:
                raise _NotCovered(f"the index names tensors its shards do not hold: {missing[:3]}")

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name][0]

    def dtype(self, name: str) -> str:
        """The stored dtype's safetensors name (``F32``, ``BF16``, ...)."""
        return self._info[name][1]

    def get(self, name: str) -> Tensor:
        """The tensor ``name`` in its stored dtype, on the host (a copy: the file is closed again)."""
        from safetensors import safe_open
        with safe_open(str(self.files[name]), framework="pt", device="cpu") as h:
            return h.get_tensor(name).clone()

    def block(self, name: str, rows: slice, cols: slice = slice(None)) -> Tensor:
        """Part of the 2-d tensor ``name`` (only that part is read), in its stored dtype."""
        from safetensors import safe_open
        with safe_open(str(self.files[name]), framework="pt", device="cpu") as h:
            return h.get_slice(name)[rows, cols].clone()


class _NotCovered(Exception):
    """Why a checkpoint is not loaded here (the caller takes the bridge path)."""


def _d_mlp(cfg: Any, spec: ArchSpec) -> int:
    """Hidden units of the dense MLPs (as read_weights: none when every layer is a sparse block)."""
    if spec.moe is not None and all(spec.moe.sparse):
        return 0
    return int(cfg.intermediate_size)


def _experts(spec: ArchSpec, layer: int) -> tuple[str, list[tuple[str, str, str]]]:
    """The router's tensor name in sparse block ``layer`` and each expert's (gate, up, down) tensor names."""
    assert spec.moe is not None
    if spec.model_type == "mixtral":  # w1: gate, w3: up, w2: down
        p, gate, up, down = f"model.layers.{layer}.block_sparse_moe.", "w1", "w3", "w2"
    else:
        p, gate, up, down = f"model.layers.{layer}.mlp.", "gate_proj", "up_proj", "down_proj"
    return p + "gate.weight", [(p + f"experts.{e}.{gate}.weight", p + f"experts.{e}.{up}.weight",
                                p + f"experts.{e}.{down}.weight") for e in range(spec.moe.n_experts)]


def _sparse(spec: ArchSpec, layer: int) -> bool:
    return spec.moe is not None and spec.moe.sparse[layer]


def _expected(cfg: Any, spec: ArchSpec, ckpt: _Checkpoint) -> dict[str, tuple[int, ...]]:
    """Every tensor name the checkpoint must hold, with its shape; optional biases only where present."""
    H, K, D, dh, V = spec.n_heads, spec.n_kv_heads, spec.d_model, spec.d_head, spec.d_vocab
    d_mlp = _d_mlp(cfg, spec)
    mt = spec.model_type
    want: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not _tied(cfg):
        want["lm_head.weight"] = (V, D)
    for i in range(spec.n_layers):
        p = f"model.layers.{i}."
        want |= {p + "post_attention_layernorm.weight": (D,), p + "self_attn.o_proj.weight": (D, H * dh)}
        if mt != "olmo2":  # OLMo-2 has no norm before attention
            want[p + "input_layernorm.weight"] = (D,)
        if mt == "phi3":  # fused projections: query, key, value rows; gate, up rows
            want |= {p + "self_attn.qkv_proj.weight": ((H + 2 * K) * dh, D),
                     p + "mlp.gate_up_proj.weight": (2 * d_mlp, D)}
        else:
            want |= {p + "self_attn.q_proj.weight": (H * dh, D), p + "self_attn.k_proj.weight": (K * dh, D),
                     p + "self_attn.v_proj.weight": (K * dh, D)}
        if mt == "gpt_oss":  # sinks; router and experts with biases, gate/up in one tensor
            E, f = spec.moe.n_experts, spec.moe.d_expert
            q = p + "mlp."
            want |= {p + "self_attn.sinks": (H,), q + "router.weight": (E, D), q + "router.bias": (E,),
                     q + "experts.gate_up_proj": (E, D, 2 * f), q + "experts.gate_up_proj_bias": (E, 2 * f),
                     q + "experts.down_proj": (E, f, D), q + "experts.down_proj_bias": (E, D)}
        elif _sparse(spec, i):
            assert spec.moe is not None
            f = spec.moe.d_expert
            router, experts = _experts(spec, i)
            want[router] = (spec.moe.n_experts, D)
            for gate, up, down in experts:
                want |= {gate: (f, D), up: (f, D), down: (D, f)}
        else:
            want[p + "mlp.down_proj.weight"] = (D, d_mlp)
            if mt != "phi3":
                want |= {p + "mlp.gate_proj.weight": (d_mlp, D), p + "mlp.up_proj.weight": (d_mlp, D)}
        if mt in _GEMMA:
            want[p + "pre_feedforward_layernorm.weight"] = (D,)
        if mt in _POST_NORMS:
            want[p + "post_feedforward_layernorm.weight"] = (D,)
        if spec.qk_norm:  # per head, or (OLMo-2) over all heads together
            nq, nk = (H * dh, K * dh) if spec.qk_norm_all_heads else (dh, dh)
            want |= {p + "self_attn.q_norm.weight": (nq,), p + "self_attn.k_norm.weight": (nk,)}
        for proj, n in (("q", H * dh), ("k", K * dh), ("v", K * dh), ("o", D)):
            if p + f"self_attn.{proj}_proj.bias" in ckpt.files and mt not in _NO_BIASES:
                want[p + f"self_attn.{proj}_proj.bias"] = (n,)
    return want


def _tied(cfg: Any) -> bool:
    return bool(getattr(cfg, "tie_word_embeddings", True))


def _check(cfg: Any, spec: ArchSpec, ckpt: _Checkpoint) -> None:
    """Raise _NotCovered unless the config and the checkpoint are exactly what this module handles."""
    if spec.model_type not in DIRECT_MODEL_TYPES:
        raise _NotCovered(f"model type {spec.model_type!r} is not on the direct-load list")
    if getattr(cfg, "auto_map", None):
        raise _NotCovered("the folder brings its own model code (auto_map)")
    if getattr(cfg, "quantization_config", None) is not None:
        raise _NotCovered("the checkpoint is quantised (quantization_config)")
    mt = spec.model_type
    if (spec.moe is not None) != (mt in _MOE) or spec.positional != "rotary" or spec.parallel \
            or (mt != "granite" and (spec.residual_multiplier != 1.0 or spec.logits_scaling != 1.0)):
        raise _NotCovered("the spec has a feature the direct load does not handle")
    if spec.attn_sinks != (mt == "gpt_oss") or (mt == "gpt_oss" and not all(spec.moe.sparse)):
        raise _NotCovered("unexpected attention or sparse-block layout for this family")
    if spec.post_norms != (mt in _POST_NORMS) or spec.pre_norms != (mt != "olmo2") \
            or spec.qk_norm_all_heads != (mt in _ALL_HEADS_QK_NORM) or spec.normalization != "RMS" \
            or not spec.gated_mlp:
        raise _NotCovered("unexpected norm or MLP layout for this family")
    want = _expected(cfg, spec, ckpt)
    have = {k for k in ckpt.files if not k.endswith(_IGNORED_SUFFIXES)}
    if _tied(cfg):
        have.discard("lm_head.weight")  # tied: transformers reads the embedding, whatever the file holds
    extra, missing = sorted(have - want.keys()), sorted(want.keys() - have)
    if extra or missing:
        raise _NotCovered(f"unexpected tensors {extra[:3]} or missing tensors {missing[:3]}")
    for k, shape in want.items():
        if ckpt.shape(k) != shape:
            raise _NotCovered(f"{k} has shape {ckpt.shape(k)}, expected {shape}")
        if ckpt.dtype(k) not in _FLOAT_DTYPES:
            raise _NotCovered(f"{k} is stored as {ckpt.dtype(k)}")


def direct_reason(source: str | Path, hf_config: Any, spec: ArchSpec) -> str | None:
    """Why ``source`` is not loaded directly (the bridge path then loads it), or None when it is covered."""
    try:
        _check(hf_config, spec, _Checkpoint(Path(source)))
    except _NotCovered as e:
        return str(e)
    return None


def direct_weights(source: str | Path, hf_config: Any, spec: ArchSpec, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> Weights | None:
    """The processed weights of the checkpoint in folder ``source`` in ``dtype`` on ``device``, the same as
    ``read_weights`` of its booted bridge; None (reason logged) when the checkpoint is not covered."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    try:
        ckpt = _Checkpoint(folder)
        _check(hf_config, spec, ckpt)
    except _NotCovered as e:
        log.info("%s: loading through TransformerLens (not covered by the direct load: %s)", source, e)
        return None
    return _read(ckpt, hf_config, spec, dtype, device)


def _fold_value_biases(b_O: Tensor, b_V: Tensor, W_O: Tensor) -> Tensor:
    """``b_O`` plus every head's value bias through its ``W_O``: b_V (kv_head, d_head), W_O (head, d_head, d_model);
    a grouped value bias counts once for each query head that shares it."""
    b_V = torch.repeat_interleave(b_V, dim=0, repeats=W_O.shape[0] // b_V.shape[0])  # (head, d_head)
    return b_O + (b_V[:, :, None] * W_O).sum([0, 1])


# Elements of float32 a block of the embedding or unembedding may hold (64 MiB); blocks of the unembedding are
# whole multiples of 64 columns, so that each column's mean over the vocabulary is summed exactly as over the
# whole matrix (checked to the bit against the bridge path, which centres the whole matrix at once).
_BLOCK = 1 << 24


def _unembedding(unembed: Tensor, final_norm: Tensor | None, centre: bool, scaling: float = 1.0) -> Tensor:
    """Rows of W_U (d_model, vocab) from columns of the stored (vocab, d_model) unembedding, in float32: the final
    norm's scale folded in (unless None: OLMo-2 keeps its final norm), then (``centre``) minus each row's mean over
    the vocabulary, then divided by Granite's ``scaling``. A view of vocab-major storage, the layout TransformerLens
    centres in, so that the float32 means are the same to the bit."""
    W_U = unembed.float() if final_norm is None else unembed.float() * final_norm[None, :]
    W_U = W_U.T  # (d_model block, vocab)
    W_U = W_U - W_U.mean(-1, keepdim=True) if centre else W_U
    return W_U / scaling if scaling != 1.0 else W_U  # after the centring, as read_weights divides the bridge's


def _read(ckpt: _Checkpoint, cfg: Any, spec: ArchSpec, dtype: torch.dtype, device: torch.device | str) -> Weights:
    """The processed weights of a checked checkpoint (module docstring), layer by layer."""
    L, H, K, D, dh = spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_model, spec.d_head
    d_mlp = _d_mlp(cfg, spec)
    offset = spec.model_type in _GEMMA  # Gemma's RMSNorm multiplies by (1 + weight)
    fused = spec.model_type == "phi3"  # qkv_proj and gate_up_proj, split as TransformerLens splits them
    m = spec.residual_multiplier  # Granite's, folded into what each block writes (as read_weights does)

    def f32(name: str) -> Tensor:
        return ckpt.get(name).float()  # a float dtype (checked): widening is exact

    def norm(name: str) -> Tensor:
        w = f32(name)
        return w + 1.0 if offset else w

    def out(*shape: int) -> Tensor:
        return torch.empty(shape, dtype=dtype, device=device)

    def put(dst: Tensor, x: Tensor) -> None:
        dst.copy_(x.to(device=device, dtype=dtype))

    def bias(name: str, *shape: int) -> Tensor:
        return f32(name).reshape(shape) if name in ckpt.files else torch.zeros(shape)

    W_Q, W_K, W_V = out(L, H, D, dh), out(L, K, D, dh), out(L, K, D, dh)
    b_Q, b_K, b_V = out(L, H, dh), out(L, K, dh), out(L, K, dh)
    W_O, b_O = out(L, H, dh, D), out(L, D)
    W_in, W_gate, W_out = out(L, D, d_mlp), out(L, D, d_mlp), out(L, d_mlp, D)
    post1 = post2 = qn = kn = None
    if spec.post_norms:
        post1, post2 = out(L, D), out(L, D)
    if spec.qk_norm:
        qn, kn = (out(L, H * dh), out(L, K * dh)) if spec.qk_norm_all_heads else (out(L, dh), out(L, dh))
    moe: dict[str, Tensor] = {}
    if spec.moe is not None:  # zeros on dense layers, as read_moe_weights
        E, f = spec.moe.n_experts, spec.moe.d_expert
        moe = {"W_router": out(L, E, D), "W_exp_gate": out(L, E, D, f), "W_exp_in": out(L, E, D, f),
               "W_exp_out": out(L, E, f, D)}
        if spec.moe.biases:  # gpt-oss
            moe |= {"b_router": out(L, E), "b_exp_gate": out(L, E, f), "b_exp_in": out(L, E, f),
                    "b_exp_out": out(L, E, D)}
    sinks = out(L, H) if spec.attn_sinks else None
    for i in range(L):
        p = f"model.layers.{i}."
        # Attention: fold the pre-norm's scale into W_Q, W_K, W_V (TransformerLens layout: head, d_model, d_head);
        # OLMo-2 has no pre-norm, nothing is folded.
        g1 = norm(p + "input_layernorm.weight") if spec.pre_norms else None
        # Phi-3: the query, key and value rows of qkv_proj (H·dh + 2·K·dh, D); else one projection at a time
        qkv = f32(p + "self_attn.qkv_proj.weight").split([H * dh, K * dh, K * dh]) if fused else None
        for j, (dst, proj, n) in enumerate(((W_Q, "q", H), (W_K, "k", K), (W_V, "v", K))):
            w = qkv[j] if qkv is not None else f32(p + f"self_attn.{proj}_proj.weight")  # (n·dh, D)
            w = w.reshape(n, dh, D).transpose(1, 2)  # (n, D, dh)
            put(dst[i], w if g1 is None else w * g1[None, :, None])
        del qkv
        put(b_Q[i], bias(p + "self_attn.q_proj.bias", H, dh))
        put(b_K[i], bias(p + "self_attn.k_proj.bias", K, dh))
        wo = f32(p + "self_attn.o_proj.weight").reshape(D, H, dh).permute(1, 2, 0)  # (H, dh, D)
        put(W_O[i], wo * m if m != 1.0 else wo)
        bo = bias(p + "self_attn.o_proj.bias", D)
        if spec.model_type in KEEPS_VALUE_BIASES:  # attention sinks: value biases stay in the values (spec.py)
            put(b_V[i], bias(p + "self_attn.v_proj.bias", K, dh))
        else:
            if p + "self_attn.v_proj.bias" in ckpt.files:
                bo = _fold_value_biases(bo, bias(p + "self_attn.v_proj.bias", K, dh), wo)  # through the unscaled W_O
            put(b_V[i], torch.zeros(K, dh))
        put(b_O[i], bo * m if m != 1.0 else bo)
        del wo
        # MLP: fold the pre-MLP norm's scale into the gate and input weights (d_model, d_mlp); in a sparse block
        # into the router's rows and each expert's gate and input weights (d_model, d_expert).
        if moe:
            for t in moe.values():
                t[i].zero_()  # stays zero on a dense layer
        if spec.model_type == "gpt_oss":  # as read_gpt_oss_moe_weights: gate/up de-interleaved (even: gate)
            g2, q = norm(p + "post_attention_layernorm.weight"), p + "mlp."
            put(moe["W_router"][i], f32(q + "router.weight") * g2[None, :])  # (expert, d_model)
            put(moe["b_router"][i], f32(q + "router.bias"))
            gate_up = f32(q + "experts.gate_up_proj") * g2[None, :, None]  # (expert, d_model, 2·d_expert)
            put(moe["W_exp_gate"][i], gate_up[..., ::2])
            put(moe["W_exp_in"][i], gate_up[..., 1::2])
            b = f32(q + "experts.gate_up_proj_bias")  # (expert, 2·d_expert)
            put(moe["b_exp_gate"][i], b[..., ::2])
            put(moe["b_exp_in"][i], b[..., 1::2])
            put(moe["W_exp_out"][i], f32(q + "experts.down_proj"))  # (expert, d_expert, d_model)
            put(moe["b_exp_out"][i], f32(q + "experts.down_proj_bias"))
            put(sinks[i], f32(p + "self_attn.sinks"))
            del gate_up
        elif _sparse(spec, i):
            g2 = norm(p + "post_attention_layernorm.weight")
            router, experts = _experts(spec, i)
            put(moe["W_router"][i], f32(router) * g2[None, :])  # (expert, d_model)
            for e, (gate, up, down) in enumerate(experts):
                put(moe["W_exp_gate"][i, e], f32(gate).T * g2[:, None])  # (d_model, d_expert)
                put(moe["W_exp_in"][i, e], f32(up).T * g2[:, None])
                put(moe["W_exp_out"][i, e], f32(down).T)  # (d_expert, d_model)
            for t in (W_gate, W_in, W_out):
                t[i].zero_()  # no dense MLP in this layer
        else:
            g2 = norm(p + ("pre_feedforward_layernorm.weight" if offset else "post_attention_layernorm.weight")) \
                if spec.pre_norms else None
            # Phi-3: the gate rows, then the up rows of gate_up_proj (2·d_mlp, D); else one projection at a time
            gate_up = f32(p + "mlp.gate_up_proj.weight").split([d_mlp, d_mlp]) if fused else None
            for j, (dst, proj) in enumerate(((W_gate, "gate"), (W_in, "up"))):
                w = (gate_up[j] if gate_up is not None else f32(p + f"mlp.{proj}_proj.weight")).T  # (D, d_mlp)
                put(dst[i], w if g2 is None else w * g2[:, None])
            del gate_up
            wout = f32(p + "mlp.down_proj.weight").T
            put(W_out[i], wout * m if m != 1.0 else wout)
        if post1 is not None and post2 is not None:
            put(post1[i], norm(p + "post_attention_layernorm.weight"))
            put(post2[i], norm(p + "post_feedforward_layernorm.weight"))
        if qn is not None and kn is not None:
            put(qn[i], norm(p + "self_attn.q_norm.weight"))
            put(kn[i], norm(p + "self_attn.k_norm.weight"))
    # Unembedding: the final norm's scale folded in, then centred over the vocabulary (unless soft-capped), in
    # blocks of columns (whole multiples of 64) read straight from the file; the token embedding in blocks of rows.
    gf = norm("model.norm.weight")
    fold_final = spec.pre_norms  # TransformerLens does not fold OLMo-2's norms: its final norm is kept
    name_U = "model.embed_tokens.weight" if _tied(cfg) else "lm_head.weight"  # (vocab, d_model)
    V = spec.d_vocab
    W_U = torch.empty(V, D, dtype=dtype, device=device).T  # (d_model, vocab), vocab-major as the bridge path's
    step = max(64, _BLOCK // V // 64 * 64)
    for c in range(0, D, step):
        cols = slice(c, min(c + step, D))
        block = ckpt.block(name_U, slice(None), cols)  # (vocab, columns)
        put(W_U[cols], _unembedding(block, gf[cols] if fold_final else None, centre=spec.final_softcap is None,
                                    scaling=spec.logits_scaling))
    W_E = torch.empty(V, D, dtype=dtype, device=device)
    step = max(1, _BLOCK // D)
    for r in range(0, V, step):
        put(W_E[r:r + step], ckpt.block("model.embed_tokens.weight", slice(r, r + step)).float())

    def const(value: float, *shape: int) -> Tensor:  # its own storage: no two fields share memory
        return torch.full(shape, value, dtype=dtype, device=device)
    return Weights(
        W_E=W_E, W_pos=None,
        W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V, W_O=W_O, b_O=b_O,
        W_in=W_in, W_gate=W_gate, b_in=const(0.0, L, d_mlp), W_out=W_out, b_out=const(0.0, L, D),
        # the pre-norms are folded (or absent): identity scales (the final norm's too, unless kept), no biases
        ln1_w=const(1.0, L, D), ln1_b=const(0.0, L, D), ln2_w=const(1.0, L, D), ln2_b=const(0.0, L, D),
        post1_w=post1, post2_w=post2, q_norm_w=qn, k_norm_w=kn, lnf_b=const(0.0, D),
        lnf_w=const(1.0, D) if fold_final else gf.to(device=device, dtype=dtype),
        W_U=W_U, b_U=const(0.0, W_U.shape[1]),
        W_router=moe.get("W_router"), W_exp_gate=moe.get("W_exp_gate"), W_exp_in=moe.get("W_exp_in"),
        W_exp_out=moe.get("W_exp_out"), b_router=moe.get("b_router"), b_exp_gate=moe.get("b_exp_gate"),
        b_exp_in=moe.get("b_exp_in"), b_exp_out=moe.get("b_exp_out"), sinks=sinks,
    )
