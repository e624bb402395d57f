"""The protocol every backend implements, and the capabilities by which analyses choose how to run.

Two backends compute a model's activations:

* :class:`~logitlab.model.runner.Runner` — logitlab's own staged forward pass over the bridge's processed
  weights. It can start mid-model (``SWEEP``: batched ablation and patching in :mod:`logitlab.sweep`) and run
  with autograd through the same code (``GRAD``).
* :class:`~logitlab.model.hooked.HookRunner` — the fallback for other architectures TransformerLens supports:
  activations from the bridge's hooks, interventions as one hooked forward each (``HOOKED_LOOPS``).

Both implement :class:`Backend` (a cached clean run, logits, and the shared read-out of
:class:`~logitlab.model.readout.Readout`). An analysis that needs more asks for a capability with
:func:`require`, which raises a :class:`~logitlab.errors.LogitlabError` naming the model and what it lacks,
instead of branching on the backend's class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.model.readout import CleanCache
from logitlab.model.spec import ArchSpec, Weights

__all__ = ["Backend", "SWEEP", "GRAD", "HOOKED_LOOPS", "CAPABILITIES", "require", "has"]

#: Start a forward pass at any layer's pre/mid/post point with edited residual streams (batched sweeps).
SWEEP = "sweep"
#: Run the forward pass with autograd (gradients of a metric with respect to activations).
GRAD = "grad"
#: Run one intervention at a time as a hooked TransformerLens forward (slow, general).
HOOKED_LOOPS = "hooked_loops"

CAPABILITIES = {
    SWEEP: "start the forward pass mid-model (batched ablation and patching)",
    GRAD: "gradients through the forward pass",
    HOOKED_LOOPS: "interventions as hooked TransformerLens forward passes",
}


@runtime_checkable
class Backend(Protocol):
    """What every backend provides; the capabilities say what else it can do."""

    spec: ArchSpec
    w: Weights
    capabilities: frozenset[str]

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def run_with_cache(self, tokens: Tensor) -> CleanCache:
        """One forward pass keeping every activation the analyses read."""
        ...

    def logits(self, tokens: Tensor) -> Tensor:
        """Full logits at every position, (B, T, vocab)."""
        ...

    def last_logits(self, tokens: Tensor, final_pos: Tensor) -> Tensor:
        """Full logits at each row's final position, (B, vocab)."""
        ...

    def final_norm(self, resid: Tensor) -> tuple[Tensor, Tensor]: ...

    def unembed(self, resid: Tensor) -> Tensor: ...

    def answer_metrics(self, resid_final: Tensor, correct: Tensor, incorrect: Tensor, with_loss: bool,
                       progress: Callable[[float], None] | None = None) -> tuple[Tensor, Tensor | None]: ...


def has(backend: Any, capability: str) -> bool:
    """Whether ``backend`` (or a model holding one as ``.runner``) has ``capability``."""
    backend = getattr(backend, "runner", backend)
    return capability in getattr(backend, "capabilities", frozenset())


def require(model: Any, capability: str, for_what: str) -> None:
    """Raise a :class:`LogitlabError` unless ``model``'s backend has ``capability`` (needed ``for_what``)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}")
    if has(model, capability):
        return
    backend = getattr(model, "runner", model)
    name = getattr(model, "name", None) or getattr(backend.spec, "model_type", "this model")
    raise LogitlabError(
        f"{for_what} needs a backend that can {CAPABILITIES[capability]}; model {name!r} "
        f"({backend.spec.model_type}) runs on {type(backend).__name__}, which cannot",
        "this analysis is available for logitlab's own architectures (see docs/models.md, 'Families on the staged "
        "path')")
