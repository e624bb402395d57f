"""logitlab's user cache: where it lives, and the processed-weights cache of local model folders.

Booting the TransformerLens bridge is the slow part of a load. Its processed weights (LayerNorm folded,
writing weights and the unembedding centred, value biases folded) are therefore kept per local folder, keyed
by the folder's files (names, sizes, times) and the versions of transformer-lens, transformers and logitlab:
a later load of the same folder reads them straight into the runner. Hub names have no stable local identity
and are not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path

from logitlab._io import atomic_write
from logitlab._version import __version__
from logitlab.model.spec import Weights

__all__ = ["cache_dir", "sha256", "processed_key", "processed_path", "save_weights", "load_weights",
           "WEIGHTS_FORMAT"]

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = 1  # bump when the cached Weights layout changes


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


def processed_path(source: str) -> Path | None:
    """Where the processed weights of ``source`` are (or would be) cached; None for a source with no key."""
    key = processed_key(source)
    return cache_dir() / "processed" / f"{key}.safetensors" if key else None


def save_weights(path: Path, weights: Weights) -> None:
    """Write ``weights`` (each tensor that is set) to ``path`` as safetensors, atomically."""
    from safetensors.torch import save
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in vars(weights).items() if v is not None}
    with atomic_write(path, "wb") as f:
        f.write(save(state))


def load_weights(path: Path) -> Weights | None:
    """The cached weights at ``path``, or None (with a warning) if the file cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        log.warning("ignoring unreadable processed-weights cache %s (%s)", path, e)
        return None
    names = [f.name for f in fields(Weights)]
    return Weights(**{n: state.get(n) for n in names})
