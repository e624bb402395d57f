"""Dictionaries on disk: circuit-tracer's transcoder folders and SAELens's SAE folders, read and written.

circuit-tracer (per-layer transcoders, ``model_kind: transcoder_set``): a folder with ``config.yaml``
(``model_kind``, ``feature_input_hook``, ``feature_output_hook``, optional ``model_name``, ``activation``, ``k``)
and ``layer_{i}.safetensors`` holding ``W_enc`` and ``W_dec``, each stored (n_features, d_model), ``b_enc``,
``b_dec``, optional ``activation_function.threshold`` (JumpReLU; else ReLU, or TopK with ``k``) and ``W_skip``
(stored (d_out, d_in): circuit-tracer computes ``x @ W_skip.T``). Cross-layer transcoders
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

logitlab's ``mlp_in`` is the normalised input with the norm's weight folded into the MLP (as TransformerLens
computes ``ln2.hook_normalized`` with ``fold_ln``); a dictionary trained on an unfolded model's norm output
needs that weight folded into its ``W_enc`` first.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from logitlab._io import atomic_write
from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet, Transcoder

__all__ = ["load_dictionaries", "load_circuit_tracer", "save_circuit_tracer", "load_saelens", "save_saelens",
           "hook_point"]

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


# ---- circuit-tracer -------------------------------------------------------------------------------------------
def load_circuit_tracer(folder: str | Path, model: Any = None) -> DictionarySet:
    """A per-layer transcoder set from circuit-tracer's local format (see the module docstring)."""
    import yaml
    from safetensors.torch import load_file
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
    files = {int(m.group(1)): p for p in folder.iterdir() if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))}
    if not files or sorted(files) != list(range(len(files))):
        raise LogitlabError(f"{folder}: expected layer_0.safetensors … layer_{{n-1}}.safetensors, found layers "
                            f"{sorted(files)}")
    layers = []
    for i in range(len(files)):
        s = load_file(str(files[i]))
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(s)
        if missing:
            raise LogitlabError(f"{files[i]} lacks {sorted(missing)}")
        threshold = s.get("activation_function.threshold")
        k = config.get("k", int(s["k"]) if "k" in s else None)
        act = "jumprelu" if threshold is not None else ("topk" if config.get("activation") == "topk" else "relu")
        skip = s.get("W_skip")
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        layers.append(Transcoder(
            W_enc=f32(s["W_enc"]).T.contiguous(), b_enc=f32(s["b_enc"]), W_dec=f32(s["W_dec"]).contiguous(),
            b_dec=f32(s["b_dec"]), activation=act, threshold=f32(threshold), k=int(k) if act == "topk" else None,
            W_skip=None if skip is None else f32(skip).T.contiguous()))
    return DictionarySet(layers=tuple(layers), kind="transcoder", model=config.get("model_name"),
                         d_model=layers[0].d_in)


def save_circuit_tracer(dset: DictionarySet, folder: str | Path) -> Path:
    """Write a transcoder set in circuit-tracer's local format (readable by its ``load_transcoder_set``)."""
    if dset.kind != "transcoder":
        raise LogitlabError("circuit-tracer's format holds transcoders; this set is an SAE set")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    acts = {tc.activation for tc in dset.layers}
    config: dict[str, Any] = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
                              "feature_output_hook": "hook_mlp_out"}
    if dset.model:
        config["model_name"] = dset.model
    if acts == {"topk"}:
        config.update(activation="topk", k=dset.layers[0].k)
    for i, tc in enumerate(dset.layers):
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


def _read_saelens_one(folder: Path) -> tuple[Transcoder, str, str, int | None, str | None, set[str]]:
    """(dictionary, input point, output point, layer, model name, raw hooks) of one SAELens folder."""
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
    return tc, p_in, p_out, layer, meta.get("model_name"), hooks


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
    layers = tuple(by_layer[i][0] for i in range(len(by_layer)))
    return DictionarySet(layers=layers, kind=kind, input_point=p_in, output_point="mlp_out",
                         model=names.pop() if len(names) == 1 else None, d_model=layers[0].d_in)


def save_saelens(dset: DictionarySet, folder: str | Path) -> Path:
    """Write a set in SAELens's format: ``folder/layer_{i}/`` with ``cfg.json`` and ``sae_weights.safetensors``."""
    folder = Path(folder)
    for i, tc in enumerate(dset.layers):
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
            meta.update(hook_name=f"blocks.{i}.mlp.hook_in", hook_name_out=f"blocks.{i}.hook_mlp_out")
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
    (layers, width, hook points and, with ``check_name``, the model it was trained on).
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
