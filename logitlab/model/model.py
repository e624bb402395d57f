"""The loaded model every analysis takes: tokenizer, architecture, the backend that runs it, and its bridge."""

from __future__ import annotations

from typing import Any

import torch

from logitlab.model.backend import Backend
from logitlab.model.bridge import boot_bridge
from logitlab.model.hub import load_hf
from logitlab.model.spec import ArchSpec

__all__ = ["Model", "DTYPES"]

#: The dtypes a model loads in, by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Model:
    """A loaded model: tokenizer, architecture, the backend that computes its activations, and its bridge.

    ``runner`` is a :class:`~logitlab.model.backend.Backend`: logitlab's staged
    :class:`~logitlab.model.runner.Runner` for its own architectures, the hooked
    :class:`~logitlab.model.hooked.HookRunner` for the others; analyses that need more than the protocol ask
    for a capability (:func:`logitlab.model.backend.require`).

    The bridge (TransformerLens, compatibility mode) is the source of the processed weights. Once those are
    cached (or when a covered checkpoint is processed without it, :mod:`logitlab.model.direct`), a load reads
    them directly and the bridge is booted only when something asks for it
    (``model.bridge``: hooks, reference loops, TransformerLens interop); a bfloat16 or float16 load by name or
    path frees its bridge after reading the weights, so that only the weights stay in memory. A bridge booted
    on demand is a float32 one on the model's device.
    """

    runner: Backend

    def __init__(self, name: str, source: str, tokenizer: Any, spec: ArchSpec, runner: Backend, device: str,
                 dtype: str, bridge: Any = None, trust_remote_code: bool = False) -> None:
        self.name, self.source, self.tokenizer, self.spec, self.runner = name, source, tokenizer, spec, runner
        self.device, self.dtype, self._bridge, self._trust = device, dtype, bridge, trust_remote_code

    @property
    def bridge(self) -> Any:
        """The TransformerBridge in compatibility mode (booted on first use)."""
        if self._bridge is None:
            hf, tok = load_hf(self.source, self._trust)
            self._bridge = boot_bridge(self.source, hf, tok, self.name, self.device)
        return self._bridge

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.spec.to_dict(), "dtype": self.dtype, "device": self.device}

    def to_str_tokens(self, ids: list[int] | torch.Tensor) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]
