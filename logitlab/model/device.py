"""The device and dtype a run uses, and the memory free on a device.

``--device auto`` (the command line's default) is CUDA when available, else the CPU; ``--dtype auto`` is
bfloat16 on a CUDA device that supports it, else float32 (on the CPU bfloat16 matrix products are slower than
float32 ones and the invariants hold more loosely, so float32 stays the CPU default). Both are resolved once,
when a command starts (or by :func:`~logitlab.model.load.load_model`), so what a run records in its config,
and what its report shows, is the device and dtype it actually ran in.
"""

from __future__ import annotations

import os
import re

import torch

from logitlab.errors import LogitlabError

__all__ = ["AUTO", "DTYPE_NAMES", "resolve_device", "device_option", "resolve_dtype", "available_memory"]

AUTO = "auto"
_OPTION = re.compile(r"cpu|cuda(:\d+)?")
#: The dtypes a model loads in, by name (``auto`` resolves to one of them).
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_device(device: str) -> str:
    """``device`` with ``auto`` resolved (``cuda`` when CUDA is available, else ``cpu``); a CUDA device that
    is not available is refused. Other torch devices pass unchanged."""
    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LogitlabError(f"device {device!r} requested but CUDA is not available", "use --device cpu")
    return device


def device_option(device: str) -> str:
    """A ``--device`` option's value resolved: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (else refused)."""
    if device != AUTO and not _OPTION.fullmatch(device):
        raise LogitlabError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N")
    return resolve_device(device)


def resolve_dtype(dtype: str, device: str) -> str:
    """``dtype`` with ``auto`` resolved for the (resolved) ``device``: ``bfloat16`` on a CUDA device that
    supports it, else ``float32``. Other names are checked and pass unchanged."""
    if dtype == AUTO:
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float32"
    if dtype not in DTYPE_NAMES:
        raise LogitlabError(f"unknown dtype {dtype!r}", f"choose auto or one of {', '.join(DTYPE_NAMES)}")
    return dtype


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``: on CUDA the driver's free memory plus what torch's caching
    allocator holds but no tensor uses (it serves new tensors from there first); else the host's available
    RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
