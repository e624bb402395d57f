"""logitlab's user cache: where it lives, and the processed-weights cache of local model folders.

Booting the TransformerLens bridge is the slow part of a load. Its processed weights (LayerNorm folded,
writing weights and the unembedding centred, value biases folded) are therefore kept per local folder, keyed
by the folder's files (names, sizes, times) and the versions of transformer-lens, transformers and logitlab:
a later load of the same folder reads them straight into the runner. Hub names have no stable local identity
and are not cached.

The weights are processed in float32 and cached in float32; a load in a lower precision that had to boot the
bridge caches its own copy (rounded from the float32 processing, so the same numbers as a float32 cache read
in that dtype) under a key of its own. Cached weights are read one tensor at a time, each converted to the
load's dtype and device at once, and written from memory without a serialised copy, so neither a load nor a
cache write holds a second copy of a large model. The unembedding and the MLP matrices are stored in the layout
the runner computes with (:data:`STORED_TRANSPOSED`): loaded, they are views that the runner uses as they are,
with no transposed copy (the unembedding alone is 670 MB on the built-in model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path

import torch

from logitlab._io import atomic_write
from logitlab._version import __version__
from logitlab.model.spec import Weights

__all__ = ["cache_dir", "sha256", "processed_key", "processed_path", "save_weights", "load_weights",
           "WEIGHTS_FORMAT", "STORED_TRANSPOSED"]

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = 2  # bump when the cached Weights layout changes

#: Weights stored with their last two dimensions swapped (under the name + ``.T``): the (out, in) rows the runner's
#: matrix products and the read-out's vocabulary blocks read (:class:`~logitlab.model.readout.Readout`,
#: ``Runner._fuse``). A load returns them as transposed views, so the runner's ``.T.contiguous()`` copies nothing.
STORED_TRANSPOSED = ("W_U", "W_in", "W_gate", "W_out")


def cache_dir() -> Path:
    """The user cache folder (``$LOGITLAB_CACHE``, else ``$XDG_CACHE_HOME/logitlab``, else ``~/.cache/logitlab``)."""
    env = os.environ.get("LOGITLAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logitlab"


def sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def processed_key(source: str) -> str | None:
    """Cache key of a local folder's processed weights: its files' names, sizes and times, and the versions."""
    folder = Path(source)
    if not folder.is_dir():
        return None  # hub models: no stable local identity to key on
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                   if p.suffix in (".safetensors", ".json", ".bin"))
    ident = json.dumps([str(folder.resolve()), files, version("transformer-lens"), version("transformers"),
                        __version__, WEIGHTS_FORMAT])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def processed_path(source: str, dtype: str = "float32") -> Path | None:
    """Where the processed weights of ``source`` in ``dtype`` are (or would be) cached; None for a source with
    no key. float32 keeps the cache's original file name."""
    key = processed_key(source)
    if not key:
        return None
    return cache_dir() / "processed" / (f"{key}.safetensors" if dtype == "float32" else f"{key}-{dtype}.safetensors")


_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


def save_weights(path: Path, weights: Weights) -> None:
    """Write ``weights`` (each tensor that is set) to ``path`` as safetensors, atomically.

    The file is written tensor by tensor from the tensors' own memory (the safetensors library would first
    serialise every tensor into a bytes copy: a second copy of the model).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {(f"{k}.T" if k in STORED_TRANSPOSED else k): (v.transpose(-1, -2) if k in STORED_TRANSPOSED else v)
             for k, v in vars(weights).items() if v is not None}
    header: dict[str, object] = {}
    offset = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        header[k] = {"dtype": _ST_DTYPES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    with atomic_write(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for v in state.values():
            flat = v.detach().to("cpu").contiguous().view(-1)
            f.write(memoryview(flat.view(torch.uint8).numpy()))


def load_weights(path: Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Weights | None:
    """The cached weights at ``path`` in ``dtype`` on ``device``, or None (with a warning) if the file cannot be
    read. Tensors are read one at a time and converted at once (no float32 copy of the whole model)."""
    from safetensors import SafetensorError, safe_open
    names = [f.name for f in fields(Weights)]
    state: dict[str, torch.Tensor | None] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            have = set(f.keys())
            for n in names:
                if n in STORED_TRANSPOSED and f"{n}.T" in have:
                    state[n] = f.get_tensor(f"{n}.T").to(device=device, dtype=dtype).transpose(-1, -2)
                else:
                    state[n] = f.get_tensor(n).to(device=device, dtype=dtype) if n in have else None
    except (OSError, SafetensorError) as e:
        log.warning("ignoring unreadable processed-weights cache %s (%s)", path, e)
        return None
    return Weights(**state)
