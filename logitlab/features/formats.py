"""Dictionaries on disk: circuit-tracer's transcoder folders and SAELens's SAE folders, read and written.

circuit-tracer (per-layer transcoders, ``model_kind: transcoder_set``): a folder with ``config.yaml``
(``model_kind``, ``feature_input_hook``, ``feature_output_hook``, optional ``model_name``, ``activation``, ``k``)
and ``layer_{i}.safetensors`` holding ``W_enc`` and ``W_dec``, each stored (n_features, d_model), ``b_enc``,
``b_dec``, optional ``activation_function.threshold`` (JumpReLU; else ReLU, or TopK with ``k``) and ``W_skip``
(stored (d_out, d_in): circuit-tracer computes ``x @ W_skip.T``). A ``transcoders:`` list in the config names the
layer files instead; files in Gemma Scope 2's own layout (``w_enc``, …) are read by
:mod:`logitlab.features.gemma_scope`. Cross-layer transcoders
(``model_kind: cross_layer_transcoder``) are refused: logitlab's graphs use per-layer transcoders.

SAELens (one dictionary per folder): ``cfg.json`` (``d_in``, ``d_sae``, ``architecture``, ``apply_b_dec_to_input``,
``normalize_activations``, ``hook_name``/``model_name`` at the top or under ``metadata``) and
``sae_weights.safetensors`` (``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_out), ``b_enc``, ``b_dec``,
``threshold``, transcoders' ``W_skip`` (d_out, d_in)). A set is a folder of such folders, one per layer (the
layer is read from the hook name). Architectures: ``standard``, ``jumprelu``, ``topk`` (SAEs) and
``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``, ``jumprelu_skip_transcoder``. An SAE that
subtracts ``b_dec`` from its input (``apply_b_dec_to_input``) gets it folded into ``b_enc``
(``b_enc − b_dec @ W_enc``: the same pre-activations).

Hook points (TransformerLens names, with or without the ``blocks.{i}.`` prefix): the MLP's input
``ln2.hook_normalized`` / ``mlp.hook_in`` → ``mlp_in``; its output ``hook_mlp_out`` (and ``mlp.hook_out`` on
models without a post-MLP norm) → ``mlp_out``. Refused by name: residual-stream points (``hook_resid_pre``,
``hook_resid_mid``, ``hook_resid_post``), attention (``attn.hook_z``, ``hook_attn_out``), ``hook_mlp_in``
(before the MLP's norm in TransformerLens) and anything else.

The MLP's input. logitlab's ``mlp_in`` is the pre-MLP norm's output *without* its weight (and bias): the staged
runner folds them into the MLP, as TransformerLens does with ``fold_ln``. ``ln2.hook_normalized`` is that point
(TransformerLens's RMSNorm hooks it before the weight; circuit-tracer's nnsight backend maps it on Gemma-2/3 to
the norm's output before ``1 + weight``), read and written without conversion (a TransformerLens LayerNorm hooks
it after its weight and bias on an unfolded model: the name is still read as ``mlp_in``, and LayerNorm models are
written on ``mlp.hook_in`` when the model is given). ``mlp.hook_in`` is what the MLP
reads on an *unfolded* model, as circuit-tracer (its TransformerLens backend loads with ``fold_ln=False``, its
nnsight backend reads the Hugging Face norm's output) and SAELens (``from_pretrained_no_processing``) run it:
``y = x · w + b`` with ``x`` logitlab's ``mlp_in`` and ``w``, ``b`` the pre-MLP norm's effective weight (Gemma:
``1 + weight``) and bias (LayerNorm only). A dictionary on ``mlp.hook_in`` is converted with the model's
unfolded norm (:func:`mlp_norm`): read, ``W_enc = w[:, None] · W_enc'``, ``b_enc = b_enc' + b @ W_enc'`` (the same
pre-activations), and a skip connection likewise (``W_skip = w[:, None] · W_skip'``, ``b_dec = b_dec' + b @ W_skip'``);
written, the inverse, refused where ``w`` is about 0. Without a model, a file on ``mlp.hook_in`` is refused.

What is written for ``mlp_in`` (:func:`input_hook`): ``mlp.hook_in`` with the model given (circuit-tracer's
nnsight backend maps only that name on Llama, Qwen and the other families), except on Gemma-2/3, where
``ln2.hook_normalized`` is exact and the only name it maps on Gemma-2; ``ln2.hook_normalized`` without a model.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from logitlab._io import atomic_write
from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet, Transcoder
from logitlab.features.gemma_scope import read_layers

__all__ = ["load_dictionaries", "load_circuit_tracer", "save_circuit_tracer", "load_saelens", "save_saelens",
           "hook_point", "input_hook", "mlp_norm"]

log = logging.getLogger(__name__)

_IN_HOOKS = ("ln2.hook_normalized", "mlp.hook_in")
_OUT_HOOKS = ("hook_mlp_out", "mlp.hook_out")
_REFUSED = {
    "hook_resid_pre": "the residual stream before the layer",
    "hook_resid_mid": "the residual stream before the MLP's norm",
    "hook_resid_post": "the residual stream after the layer",
    "hook_mlp_in": "the MLP block's input before its norm in TransformerLens",
    "attn.hook_z": "attention heads' outputs",
    "hook_attn_out": "attention's output",
}
SUPPORTED_HELP = ("supported hook points: the MLP's input (ln2.hook_normalized, mlp.hook_in) and its output "
                  "(hook_mlp_out); residual-stream and attention dictionaries are not supported")


def hook_point(hook: str, layer: int | None = None) -> tuple[str, int | None]:
    """(logitlab point, layer) of a TransformerLens hook name; raises a :class:`LogitlabError` for any other point."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook)
    name, at = (m.group(2), int(m.group(1))) if m else (hook, layer)
    if layer is not None and at is not None and at != layer:
        raise LogitlabError(f"hook {hook!r} belongs to layer {at}, but the file is for layer {layer}")
    if name in _IN_HOOKS:
        return "mlp_in", at
    if name in _OUT_HOOKS:
        return "mlp_out", at
    what = _REFUSED.get(name, "a point logitlab does not read dictionaries at")
    raise LogitlabError(f"unsupported hook point {hook!r} ({what})", SUPPORTED_HELP)


def _check_hooks(hooks: set[str], model: Any) -> None:
    if model is not None and model.spec.post_norms and any(h.endswith("mlp.hook_out") for h in hooks):
        raise LogitlabError(f"mlp.hook_out is before the post-MLP norm of {model.name!r}; logitlab's mlp_out "
                            "(hook_mlp_out) is after it", SUPPORTED_HELP)


# ---- the MLP's input: logitlab's mlp_in and mlp.hook_in -------------------------------------------------------
#: Families on which circuit-tracer's nnsight backend maps ``ln2.hook_normalized`` (the norm's output before its
#: weight, i.e. logitlab's mlp_in exactly); on the others it maps only ``mlp.hook_in``.
_EXACT_INPUT = ("gemma2", "gemma3_text")
_HOOK_IN = "mlp.hook_in"
_NORMALIZED = "ln2.hook_normalized"
_TINY = 1e-6  # |w| below this fraction of max |w|: dividing by the norm weight is ill-posed


def input_hook(model: Any = None) -> str:
    """The TransformerLens hook name logitlab writes for a transcoder's input (see the module docstring)."""
    if model is None or model.spec.model_type in _EXACT_INPUT:
        return _NORMALIZED
    return _HOOK_IN


def _reads_hook_in(hook: str) -> bool:
    return re.sub(r"^blocks\.\d+\.", "", hook) == _HOOK_IN


def mlp_norm(model: Any) -> tuple[Tensor, Tensor]:
    """(w, b), each (layer, d_model): the pre-MLP norms' effective weight (Gemma: ``1 + weight``) and bias (zero for
    RMSNorm) before folding, so that ``mlp.hook_in = mlp_in · w + b`` on an unfolded model.

    logitlab keeps only folded weights, so they are read from the model's checkpoint (``model.source``), through a
    TransformerLens bridge booted without processing (its ``ln2``, as ``read_weights`` reads norms); the
    checkpoint is checked against the loaded model (its MLP input weights with the norm folded in must be the
    model's). Models without a pre-MLP norm (OLMo-2) give ones and zeros.
    """
    spec = model.spec
    L, D = spec.n_layers, spec.d_model
    if not spec.pre_norms:
        return torch.ones(L, D, dtype=torch.float64), torch.zeros(L, D, dtype=torch.float64)
    from transformer_lens.model_bridge import TransformerBridge

    from logitlab.model.hub import load_hf
    from logitlab.model.spec import _norm_params
    need = (f"converting between logitlab's mlp_in and mlp.hook_in needs the unfolded pre-MLP norm weights of "
            f"{model.name!r}, read from its checkpoint {model.source!r}")
    hint = ("load the model by name or path (a model loaded from an object in memory keeps only folded weights); "
            "dictionaries on ln2.hook_normalized need no conversion")
    try:
        hf, tok = load_hf(model.source, bool(getattr(model, "_trust", False)))
    except LogitlabError as e:
        raise LogitlabError(f"{need}, which cannot be loaded: {e.args[0]}", hint) from e
    try:
        bridge = TransformerBridge.boot_transformers(model.source, hf_model=hf, tokenizer=tok)  # not processed
        offset = bool(getattr(bridge.cfg, "rmsnorm_uses_offset", False))
        norms = [_norm_params(block.ln2, offset, D) for block in bridge.blocks]
    except Exception as e:  # noqa: BLE001  any architecture whose bridge has no ln2
        raise LogitlabError(f"{need}: TransformerLens's unprocessed bridge gives none "
                            f"({type(e).__name__}: {e})", hint) from e
    w = torch.stack([n[0] for n in norms]).double()  # (layer, d_model)
    b = torch.stack([n[1] for n in norms]).double()
    runner_w = getattr(model.runner, "w", None)
    # the staged runner's W_in holds the weight folded in (mixtures of experts: not checked)
    if runner_w is not None and spec.moe is None:
        folded = w[:, :, None] * bridge.W_in.detach().double()  # (layer, d_model, d_mlp)
        if spec.normalization == "LN":  # TransformerLens centres what reads a LayerNorm's (mean-zero) output
            folded = folded - folded.mean(1, keepdim=True)
        have = runner_w.W_in.detach().double().cpu()
        err = float((have - folded).abs().max()) if have.shape == folded.shape else float("inf")
        tol = (1e-4 if model.dtype == "float32" else 2e-2) * float(folded.abs().max())
        if not err <= tol:
            raise LogitlabError(f"the checkpoint {model.source!r} is not the loaded model {model.name!r}: its MLP "
                                f"input weights with the pre-MLP norm folded in differ from the model's by {err:.2e}",
                                hint)
    return w, b


def _convert(tc: Transcoder, w: Tensor, b: Tensor, layer: int, to_hook_in: bool) -> Transcoder:
    """``tc`` rewritten from logitlab's ``mlp_in`` to ``mlp.hook_in = mlp_in · w + b`` (``to_hook_in``) or back,
    with the same pre-activations and output (computed in float64, returned in ``tc``'s dtype)."""
    dt = tc.W_enc.dtype
    w, b = w.to(tc.W_enc.device, torch.float64), b.to(tc.W_enc.device, torch.float64)
    W, S = tc.W_enc.double(), None if tc.W_skip is None else tc.W_skip.double()
    b_enc, b_dec = tc.b_enc.double(), tc.b_dec.double()
    if to_hook_in:
        small = w.abs() <= _TINY * float(w.abs().max())
        if bool(small.any()):
            idx = small.nonzero().flatten().tolist()
            raise LogitlabError(f"layer {layer}: the pre-MLP norm's weight is about 0 at {len(idx)} coordinate(s) "
                                f"{idx[:5]}, so a dictionary on logitlab's mlp_in cannot be rewritten for mlp.hook_in "
                                "(the norm's output after that weight) by dividing by it",
                                "write it on ln2.hook_normalized instead: save without the model")
        W = W / w[:, None]  # (x·w + b) @ (W / w) = x @ W + b @ (W / w)
        b_enc = b_enc - b @ W
        if S is not None:
            S = S / w[:, None]
            b_dec = b_dec - b @ S
    else:
        b_enc = b_enc + b @ W  # read on x·w + b: x @ (w·W) + b @ W + b_enc
        W = w[:, None] * W
        if S is not None:
            b_dec = b_dec + b @ S
            S = w[:, None] * S
    return replace(tc, W_enc=W.to(dt), b_enc=b_enc.to(dt), b_dec=b_dec.to(dt),
                   W_skip=None if S is None else S.to(dt))


def _from_hook_in(layers: list[Transcoder], which: list[int], model: Any, where: Path) -> list[Transcoder]:
    """``layers`` with those in ``which`` (read on mlp.hook_in) converted to logitlab's mlp_in."""
    if not which:
        return layers
    if model is None:
        raise LogitlabError(f"{where} reads mlp.hook_in, the MLP's input after its norm's weight on an unfolded "
                            "model; converting it to logitlab's mlp_in needs that weight, from the model",
                            "pass the model it was trained on: load_dictionaries(path, model)")
    if len(layers) != model.spec.n_layers or layers[0].d_in != model.spec.d_model:
        raise LogitlabError(f"{where} covers {len(layers)} layers of width {layers[0].d_in}; model {model.name!r} "
                            f"has {model.spec.n_layers} of width {model.spec.d_model}")
    w, b = mlp_norm(model)
    return [_convert(tc, w[i], b[i], i, to_hook_in=False) if i in which else tc for i, tc in enumerate(layers)]


def _to_hook_in(dset: DictionarySet, model: Any) -> tuple[str, tuple[Transcoder, ...]]:
    """(input hook name, layers) of a transcoder set as written for ``model`` (see :func:`input_hook`)."""
    hook = input_hook(model)
    if hook != _HOOK_IN:
        return hook, dset.layers
    dset.check(model, check_name=False)
    w, b = mlp_norm(model)
    return hook, tuple(_convert(tc, w[i], b[i], i, to_hook_in=True) for i, tc in enumerate(dset.layers))


# ---- circuit-tracer -------------------------------------------------------------------------------------------
def load_circuit_tracer(folder: str | Path, model: Any = None) -> DictionarySet:
    """A per-layer transcoder set from circuit-tracer's local format (see the module docstring)."""
    import yaml
    folder = Path(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    kind = config.get("model_kind")
    if kind == "cross_layer_transcoder":
        raise LogitlabError(f"{folder} holds a cross-layer transcoder; logitlab reads per-layer transcoders "
                            "(model_kind: transcoder_set) only")
    if kind != "transcoder_set":
        raise LogitlabError(f"{folder / 'config.yaml'}: unknown model_kind {kind!r} (expected transcoder_set)")
    hooks = {config.get("feature_input_hook", ""), config.get("feature_output_hook", "")}
    points = tuple(hook_point(config.get(key, "?"))[0] for key in ("feature_input_hook", "feature_output_hook"))
    if points != ("mlp_in", "mlp_out"):
        raise LogitlabError(f"{folder}: a transcoder set must read the MLP's input and write its output; its hooks "
                            f"{sorted(hooks)} are {points[0]} → {points[1]}", SUPPORTED_HELP)
    _check_hooks(hooks, model)

    def read_own(s: dict[str, Tensor], path: Path) -> Transcoder:  # circuit-tracer's own layout
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(s)
        if missing:
            raise LogitlabError(f"{path} lacks {sorted(missing)}")
        threshold = s.get("activation_function.threshold")
        k = config.get("k", int(s["k"]) if "k" in s else None)
        act = "jumprelu" if threshold is not None else ("topk" if config.get("activation") == "topk" else "relu")
        skip = s.get("W_skip")
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        return Transcoder(
            W_enc=f32(s["W_enc"]).T.contiguous(), b_enc=f32(s["b_enc"]), W_dec=f32(s["W_dec"]).contiguous(),
            b_dec=f32(s["b_dec"]), activation=act, threshold=f32(threshold), k=int(k) if act == "topk" else None,
            W_skip=None if skip is None else f32(skip).T.contiguous())

    layers = read_layers(folder, config, read_own)  # Gemma Scope 2's own layout: logitlab.features.gemma_scope
    if _reads_hook_in(config["feature_input_hook"]):
        layers = _from_hook_in(layers, list(range(len(layers))), model, folder)
    return DictionarySet(layers=tuple(layers), kind="transcoder", model=config.get("model_name"),
                         d_model=layers[0].d_in)


def save_circuit_tracer(dset: DictionarySet, folder: str | Path, model: Any = None) -> Path:
    """Write a transcoder set in circuit-tracer's local format (readable by its ``load_transcoder_set``).

    With ``model`` (the loaded model the set is for) the input is written as circuit-tracer's backends read it on
    that model: ``mlp.hook_in`` with the norm weight divided out, or ``ln2.hook_normalized`` on Gemma-2/3;
    without, ``ln2.hook_normalized`` (see the module docstring).
    """
    if dset.kind != "transcoder":
        raise LogitlabError("circuit-tracer's format holds transcoders; this set is an SAE set")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hook, layers = _to_hook_in(dset, model)
    acts = {tc.activation for tc in layers}
    config: dict[str, Any] = {"model_kind": "transcoder_set", "feature_input_hook": hook,
                              "feature_output_hook": "hook_mlp_out"}
    if dset.model:
        config["model_name"] = dset.model
    if acts == {"topk"}:
        config.update(activation="topk", k=layers[0].k)
    for i, tc in enumerate(layers):
        state = {"W_enc": tc.W_enc.T, "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
        if tc.threshold is not None:
            state["activation_function.threshold"] = tc.threshold
        if tc.k is not None:
            state["k"] = torch.tensor(tc.k)
        if tc.W_skip is not None:
            state["W_skip"] = tc.W_skip.T
        _save_tensors(state, folder / f"layer_{i}.safetensors")
    import yaml
    with atomic_write(folder / "config.yaml", "w") as f:
        f.write(yaml.safe_dump(config, sort_keys=False))
    return folder


def _save_tensors(state: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save
    with atomic_write(path, "wb") as f:
        f.write(save({k: v.detach().cpu().contiguous() for k, v in state.items()}))


# ---- SAELens --------------------------------------------------------------------------------------------------
_SAE_ARCH = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}
_TC_ARCH = {"transcoder": "relu", "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu",
            "jumprelu_skip_transcoder": "jumprelu"}


def _read_saelens_one(folder: Path) -> tuple[Transcoder, str, str, int | None, str | None, set[str], str]:
    """(dictionary, input point, output point, layer, model name, raw hooks, raw input hook) of one SAELens
    folder (the dictionary as stored: not yet converted from mlp.hook_in)."""
    from safetensors.torch import load_file
    cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
    meta = {**cfg, **(cfg.get("metadata") or {})}
    arch = cfg.get("architecture", "standard")
    if arch not in _SAE_ARCH and arch not in _TC_ARCH:
        raise LogitlabError(f"{folder}: unsupported SAELens architecture {arch!r} (supported: "
                            f"{', '.join([*_SAE_ARCH, *_TC_ARCH])})")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, False, "expected_average_only_in"):
        raise LogitlabError(f"{folder}: normalize_activations {norm!r} rescales each input by its own norm, which "
                            "a linear replacement cannot represent; supported: none")
    if norm == "expected_average_only_in":
        log.warning("%s: normalize_activations 'expected_average_only_in' is read as SAELens reads a folder: "
                    "without rescaling (the factor must already be folded into the weights)", folder)
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise LogitlabError(f"{folder}: reshape_activations {cfg['reshape_activations']!r} is not supported")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise LogitlabError(f"{folder}: rescale_acts_by_decoder_norm is not supported")
    hook = meta.get("hook_name") or meta.get("hook_point")
    if not hook:
        raise LogitlabError(f"{folder / 'cfg.json'} names no hook_name")
    p_in, layer = hook_point(hook)
    hooks = {hook}
    s = {k: v.float() for k, v in load_file(str(folder / "sae_weights.safetensors")).items()}
    W_enc, W_dec, b_enc, b_dec = s["W_enc"], s["W_dec"], s["b_enc"], s["b_dec"]
    if tuple(W_enc.shape) != (cfg["d_in"], cfg["d_sae"]):
        raise LogitlabError(f"{folder}: W_enc {tuple(W_enc.shape)} does not match d_in {cfg['d_in']}, d_sae "
                            f"{cfg['d_sae']}")
    threshold = s.get("threshold")
    if arch in _TC_ARCH:
        hook_out = meta.get("hook_name_out")
        if not hook_out:
            raise LogitlabError(f"{folder / 'cfg.json'}: a transcoder needs hook_name_out")
        p_out, layer_out = hook_point(hook_out)
        if layer_out != layer:
            raise LogitlabError(f"{folder}: reads layer {layer} and writes layer {layer_out}")
        hooks.add(hook_out)
        act = _TC_ARCH[arch]
        skip = s.get("W_skip")
        W_skip = None if skip is None else skip.T.contiguous()  # SAELens stores (d_out, d_in)
    else:
        p_out, act, W_skip = p_in, _SAE_ARCH[arch], None
        if cfg.get("apply_b_dec_to_input", True):
            b_enc = b_enc - b_dec @ W_enc  # (x − b_dec) @ W_enc + b_enc, folded
    if act == "jumprelu":
        if threshold is None:
            raise LogitlabError(f"{folder}: a JumpReLU dictionary needs a threshold")
        threshold = threshold.clamp(min=0)  # SAELens: relu(pre) · [pre > t] = pre · [pre > max(t, 0)]
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 0) if act == "topk" else None
    tc = Transcoder(W_enc=W_enc.contiguous(), b_enc=b_enc, W_dec=W_dec.contiguous(), b_dec=b_dec, activation=act,
                    threshold=threshold if act == "jumprelu" else None, k=k, W_skip=W_skip)
    return tc, p_in, p_out, layer, meta.get("model_name"), hooks, hook


def load_saelens(folder: str | Path, model: Any = None) -> DictionarySet:
    """A dictionary set from SAELens's format: one folder (one layer), or a folder of such folders."""
    folder = Path(folder)
    subs = [folder] if (folder / "cfg.json").exists() else sorted(
        p for p in folder.iterdir() if (p / "cfg.json").exists())
    if not subs:
        raise LogitlabError(f"{folder} holds no SAELens dictionary (cfg.json + sae_weights.safetensors)")
    read = [_read_saelens_one(p) for p in subs]
    by_layer: dict[int, Any] = {}
    for sub, r in zip(subs, read):
        if r[3] is None:
            raise LogitlabError(f"{sub}: its hook name gives no layer (expected blocks.{{i}}.…)")
        if r[3] in by_layer:
            raise LogitlabError(f"{folder}: two dictionaries for layer {r[3]}")
        by_layer[r[3]] = r
    if sorted(by_layer) != list(range(len(by_layer))):
        raise LogitlabError(f"{folder}: a set needs one dictionary for each layer 0…n-1; found layers "
                            f"{sorted(by_layer)}")
    points = {(r[1], r[2]) for r in read}
    if len(points) != 1:
        raise LogitlabError(f"{folder}: the layers read and write different points: {sorted(points)}")
    p_in, p_out = points.pop()
    kind = "transcoder" if p_in != p_out else "sae"
    if (kind == "sae" and p_in != "mlp_out") or (kind == "transcoder" and (p_in, p_out) != ("mlp_in", "mlp_out")):
        raise LogitlabError(f"{folder}: dictionaries reading {p_in} and writing {p_out} are not supported",
                            "supported: transcoders mlp_in → mlp_out and SAEs on mlp_out (hook_mlp_out)")
    _check_hooks(set().union(*(r[5] for r in read)), model)
    names = {r[4] for r in read if r[4]}
    layers = [by_layer[i][0] for i in range(len(by_layer))]
    if kind == "transcoder":
        layers = _from_hook_in(layers, [i for i in by_layer if _reads_hook_in(by_layer[i][6])], model, folder)
    return DictionarySet(layers=tuple(layers), kind=kind, input_point=p_in, output_point="mlp_out",
                         model=names.pop() if len(names) == 1 else None, d_model=layers[0].d_in)


def save_saelens(dset: DictionarySet, folder: str | Path, model: Any = None) -> Path:
    """Write a set in SAELens's format: ``folder/layer_{i}/`` with ``cfg.json`` and ``sae_weights.safetensors``.

    A transcoder set's input is written as :func:`save_circuit_tracer` writes it (``model``: the loaded model it
    is for); an SAE set reads ``hook_mlp_out`` and needs no model.
    """
    folder = Path(folder)
    hook, layers = _to_hook_in(dset, model) if dset.kind == "transcoder" else ("", dset.layers)
    for i, tc in enumerate(layers):
        sub = folder / f"layer_{i}"
        sub.mkdir(parents=True, exist_ok=True)
        if tc.threshold is not None and bool((tc.threshold < 0).any()):
            raise LogitlabError(f"layer {i}: SAELens's JumpReLU cannot hold a negative threshold")
        state = {"W_enc": tc.W_enc, "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
        if tc.threshold is not None:
            state["threshold"] = tc.threshold
        meta: dict[str, Any] = {"model_name": dset.model, "hook_name": f"blocks.{i}.hook_mlp_out"}
        if dset.kind == "transcoder":
            if tc.activation == "topk":
                raise LogitlabError("SAELens has no TopK transcoder architecture")
            arch = ("jumprelu_" if tc.activation == "jumprelu" else "") + ("skip_" if tc.W_skip is not None else "") \
                + "transcoder"
            meta.update(hook_name=f"blocks.{i}.{hook}", hook_name_out=f"blocks.{i}.hook_mlp_out")
            if hook == _HOOK_IN:  # the MLP's input after the norm's weight: an unfolded model
                meta["model_from_pretrained_kwargs"] = {"fold_ln": False}
            if tc.W_skip is not None:
                state["W_skip"] = tc.W_skip.T
        else:
            if tc.W_skip is not None:
                raise LogitlabError("an SAE has no skip connection")
            arch = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[tc.activation]
        cfg: dict[str, Any] = {"architecture": arch, "d_in": tc.d_in, "d_sae": tc.n_features, "dtype": "float32",
                               "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
                               "reshape_activations": "none", "metadata": meta}
        if dset.kind == "transcoder":
            cfg["d_out"] = tc.d_out
        if tc.k is not None:
            cfg["k"] = tc.k
        _save_tensors(state, sub / "sae_weights.safetensors")
        with atomic_write(sub / "cfg.json", "w") as f:
            f.write(json.dumps(cfg, indent=1))
    return folder


# ---- one entry point ------------------------------------------------------------------------------------------
def load_dictionaries(name_or_path: str | Path, model: Any = None, check_name: bool = True) -> DictionarySet:
    """Load a dictionary set from a folder (circuit-tracer's or SAELens's format) or a hub repository name.

    A name that is not an existing path is downloaded with ``huggingface_hub.snapshot_download`` (``owner/repo``,
    or ``owner/repo//subfolder``), only where the hub is reachable. With ``model`` the set is checked against it
    (layers, width, hook points and, with ``check_name``, the model it was trained on); a transcoder set on
    ``mlp.hook_in`` needs it, to be converted to logitlab's ``mlp_in`` (see the module docstring).
    """
    path = Path(name_or_path).expanduser()
    if not path.exists():
        path = _download(str(name_or_path))
    if (path / "config.yaml").exists():
        dset = load_circuit_tracer(path, model)
    elif (path / "cfg.json").exists() or any((p / "cfg.json").exists() for p in path.iterdir() if p.is_dir()):
        dset = load_saelens(path, model)
    else:
        raise LogitlabError(f"{path} holds no dictionaries: expected circuit-tracer's config.yaml + "
                            "layer_{i}.safetensors, or SAELens's cfg.json + sae_weights.safetensors")
    if model is not None:
        dset.check(model, check_name)
    return dset


def _download(name: str) -> Path:
    from logitlab.model.hub import hub_reachable
    if not re.fullmatch(r"[\w.-]+/[\w.-]+(//[\w./-]+)?", name):
        raise LogitlabError(f"{name!r} is neither an existing folder nor a hub repository name (owner/repo)")
    if not hub_reachable():
        raise LogitlabError(
            f"{name!r} is not a local folder and the Hugging Face hub cannot be reached to download it",
            "pass a folder in circuit-tracer's or SAELens's format, e.g. one written by "
            "`logitlab train-transcoders --out DIR`")
    from huggingface_hub import snapshot_download
    repo, _, sub = name.partition("//")
    local = snapshot_download(repo, allow_patterns=[f"{sub}/*" if sub else "*"] + ([f"{sub}/**"] if sub else []))
    return Path(local) / sub if sub else Path(local)
