"""A grid job's memory estimate and refusal: :mod:`logitlab.model.memory`, which ``load_model`` runs too.

The grid plans its cells with the same estimate (``grid/run.py``: Ray's memory resource; ``grid/job.py``: a
cell refused before loading). ``memory_budget`` is looked up here at call time, so a test can pretend a budget.
"""

from __future__ import annotations

from logitlab.model.memory import (ACTIVATION_MARGIN, ACTIVATION_SHARE, BASE, COLD_LOAD_FACTOR,  # noqa: F401
                                   MemoryEstimate, _config_count, _gguf_count, _safetensors_count, estimate_memory,
                                   gib)
from logitlab.model.memory import check_memory as _check_memory
from logitlab.model.memory import memory_budget as _memory_budget

__all__ = ["MemoryEstimate", "estimate_memory", "check_memory", "memory_budget", "gib"]


def memory_budget(device: str) -> int:
    """Bytes available on ``device`` now: the host's available RAM, or the GPU's free memory."""
    return _memory_budget(device)


def check_memory(est: MemoryEstimate | None, device: str) -> None:
    """Refuse a run whose estimate exceeds what its device (and, for a GPU, the host) has available."""
    _check_memory(est, device, budget=memory_budget)
