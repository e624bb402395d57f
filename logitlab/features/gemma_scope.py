"""Gemma Scope 2's own per-layer transcoder files, read as circuit-tracer 0.5's ``load_gemma_scope_2_transcoder``.

Gemma Scope 2 (the JumpReLU transcoders published for Gemma-3) stores one safetensors file per layer:
``w_enc`` (d_model, n_features), transposed relative to circuit-tracer's ``W_enc``; ``w_dec`` (n_features,
d_model); ``b_enc``; ``b_dec``; ``threshold``; and, in the sets with a skip connection,
``affine_skip_connection`` (d_model, d_model), whose transpose is circuit-tracer's ``W_skip`` (circuit-tracer
adds ``x @ W_skip.T``, i.e. ``x @ affine_skip_connection``). circuit-tracer computes
``f = pre · [pre > threshold]`` with ``pre = x @ w_enc + b_enc`` (no ``b_dec`` subtracted from the input) and
``out = f @ w_dec + b_dec (+ x @ affine_skip_connection)``: logitlab's :class:`Transcoder` with
``W_enc = w_enc`` and ``W_skip = affine_skip_connection`` as stored, ``activation="jumprelu"``.

Which files. circuit-tracer reads such a set through its ``config.yaml`` (``model_kind: transcoder_set``,
``feature_input_hook``, ``feature_output_hook``) whose ``transcoders:`` list names each layer's file, in layer
order, and picks this layout when the config's repository name contains ``gemma-scope-2``. A local folder has
no repository, so logitlab tells the layouts apart by their keys, which cannot be confused: ``w_enc`` is this
layout, ``W_enc`` circuit-tracer's own. The files are those of the ``transcoders:`` list when the config has
one (local paths, absolute or relative to the folder; ``hf://`` addresses are refused, logitlab does not
download them), else ``layer_{i}.safetensors``. Refused: a file with both ``w_enc`` and ``W_enc`` or neither, a
set mixing the layouts, a missing or unknown key, a shape that does not fit. The hooks are the config's, read
as for circuit-tracer's own layout (``mlp.hook_in`` converted with the model's pre-MLP norm, see
:mod:`logitlab.features.formats`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.features.dictionary import Transcoder

__all__ = ["layer_files", "read_layers", "read_raw", "RAW_KEYS", "SKIP_KEY"]

#: The tensors of one Gemma Scope 2 transcoder file that circuit-tracer reads (all required) ...
RAW_KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
#: ... and its optional skip connection.
SKIP_KEY = "affine_skip_connection"
_HELP = ("Gemma Scope 2's layout: w_enc (d_model, n_features), w_dec (n_features, d_model), b_enc (n_features,), "
         "b_dec (d_model,), threshold (n_features,), optional affine_skip_connection (d_model, d_model)")


def layer_files(folder: Path, config: dict[str, Any]) -> list[Path]:
    """Each layer's file of a circuit-tracer transcoder folder: its config's ``transcoders:`` list, else
    ``layer_{i}.safetensors``."""
    listed = config.get("transcoders")
    if listed is None:
        files = {int(m.group(1)): p for p in folder.iterdir()
                 if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))}
        if not files or sorted(files) != list(range(len(files))):
            raise LogitlabError(f"{folder}: expected layer_0.safetensors … layer_{{n-1}}.safetensors (or a "
                                f"transcoders: list in config.yaml), found layers {sorted(files)}")
        return [files[i] for i in range(len(files))]
    where = folder / "config.yaml"
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
        raise LogitlabError(f"{where}: transcoders must be a list of file paths, one per layer in layer order; "
                            f"got {listed!r}")
    out = []
    for i, p in enumerate(listed):
        if p.startswith("hf://"):
            raise LogitlabError(f"{where}: layer {i}'s transcoder {p!r} is a hub address, which logitlab does not "
                                "download", "download the files and list their local paths (absolute or "
                                "relative to the folder) under transcoders:")
        path = Path(p).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            raise LogitlabError(f"{where}: layer {i}'s transcoder file {path} does not exist")
        out.append(path)
    return out


def _is_raw(path: Path) -> bool:
    """Whether a layer file is in Gemma Scope 2's layout (``w_enc``) rather than circuit-tracer's (``W_enc``)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except Exception as e:  # noqa: BLE001  safetensors raises its own error types for a damaged file
        raise LogitlabError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    raw, own = "w_enc" in keys, "W_enc" in keys
    if raw and own:
        raise LogitlabError(f"{path} holds both w_enc (Gemma Scope 2's layout) and W_enc (circuit-tracer's); "
                            "which encoder it means is ambiguous")
    if not raw and not own:
        raise LogitlabError(f"{path} holds neither W_enc (circuit-tracer's layout) nor w_enc (Gemma Scope 2's); "
                            f"its tensors: {sorted(keys)}", _HELP)
    return raw


def read_raw(s: dict[str, Tensor], path: Path) -> Transcoder:
    """One layer's transcoder from the tensors of a Gemma Scope 2 file (see the module docstring)."""
    missing, unknown = set(RAW_KEYS) - set(s), set(s) - {*RAW_KEYS, SKIP_KEY}
    if missing or unknown:
        what = [f"lacks {sorted(missing)}"] if missing else []
        what += [f"holds tensors circuit-tracer does not read: {sorted(unknown)}"] if unknown else []
        raise LogitlabError(f"{path} (Gemma Scope 2's layout) {'; '.join(what)}", _HELP)
    if s["b_enc"].ndim != 1 or s["b_dec"].ndim != 1:
        raise LogitlabError(f"{path}: b_enc {tuple(s['b_enc'].shape)} and b_dec {tuple(s['b_dec'].shape)} must be "
                            "vectors", _HELP)
    F, D = int(s["b_enc"].shape[0]), int(s["b_dec"].shape[0])  # as circuit-tracer sizes the transcoder
    want = {"w_enc": (D, F), "w_dec": (F, D), "b_enc": (F,), "b_dec": (D,), "threshold": (F,), SKIP_KEY: (D, D)}
    bad = [f"{k} {tuple(s[k].shape)}, expected {want[k]}" for k in want if k in s and tuple(s[k].shape) != want[k]]
    if bad:
        raise LogitlabError(f"{path} (Gemma Scope 2's layout, {F} features from b_enc, d_model {D} from b_dec): "
                            + "; ".join(bad), _HELP)
    f32 = lambda k: s[k].float().contiguous()  # noqa: E731  circuit-tracer's default dtype
    return Transcoder(W_enc=f32("w_enc"), b_enc=f32("b_enc"), W_dec=f32("w_dec"), b_dec=f32("b_dec"),
                      activation="jumprelu", threshold=f32("threshold"),
                      W_skip=f32(SKIP_KEY) if SKIP_KEY in s else None)  # x @ affine_skip_connection


def read_layers(folder: Path, config: dict[str, Any],
                read_own: Callable[[dict[str, Tensor], Path], Transcoder]) -> list[Transcoder]:
    """Each layer's transcoder of a circuit-tracer folder: files in Gemma Scope 2's layout read by
    :func:`read_raw`, in circuit-tracer's own by ``read_own``; a set in both layouts is refused."""
    from safetensors.torch import load_file
    files = layer_files(folder, config)
    raw = [_is_raw(p) for p in files]
    if len(set(raw)) > 1:
        def which(r: bool) -> list[int]:
            return [i for i, x in enumerate(raw) if x == r]
        raise LogitlabError(f"{folder}: layers {which(True)} are in Gemma Scope 2's layout (w_enc), layers "
                            f"{which(False)} in circuit-tracer's (W_enc); circuit-tracer reads a set in one layout",
                            "list the files of one set")
    return [read_raw(load_file(str(p)), p) if r else read_own(load_file(str(p)), p) for p, r in zip(files, raw)]
