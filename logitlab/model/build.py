"""From a booted bridge to a :class:`~logitlab.model.model.Model`: the staged runner, or the hooked fallback.

Both ways of loading (by name or path in :mod:`logitlab.model.sources`, from an object in
:mod:`logitlab.model.objects`) end here, so a model gives the same numbers however it was loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from logitlab.errors import LogitlabError
from logitlab.model.cache import save_weights
from logitlab.model.hooked import HookRunner, generic_spec, read_output_weights
from logitlab.model.model import DTYPES, Model
from logitlab.model.runner import Runner
from logitlab.model.spec import SUPPORTED_MODEL_TYPES, read_spec, read_weights

__all__ = ["staged", "check_hooked_dtype", "check_supported", "from_bridge"]

log = logging.getLogger(__name__)


def staged(hf_config: Any) -> bool:
    """Whether the model of ``hf_config`` runs on logitlab's own forward pass (else: the hooked fallback)."""
    return getattr(hf_config, "model_type", None) in SUPPORTED_MODEL_TYPES


def check_hooked_dtype(hf_config: Any, dtype: str) -> None:
    """The hook fallback runs the bridge's own forward pass, which logitlab keeps in float32."""
    if not staged(hf_config) and dtype != "float32":
        raise LogitlabError(f"{hf_config.model_type!r} runs through TransformerLens hooks, in float32 only",
                            "pass --dtype float32 (--dtype auto is bfloat16 on CUDA)")


def check_supported(hf_config: Any, dtype: str) -> None:
    """Refuse what cannot load before the (slow) boot: a fallback model in another dtype than float32, and an
    unsupported variant of one of logitlab's own architectures."""
    check_hooked_dtype(hf_config, dtype)
    if staged(hf_config):
        read_spec(hf_config)


def _load_hooked(bridge: Any, hf_config: Any, tok: Any, source: str, name: str, device: str, dtype: str,
                 trust: bool) -> Model:
    """An architecture outside logitlab's own forward pass: analyse it through the bridge's hooks.

    ``bridge`` is in compatibility mode, in eval mode, on ``device``.
    """
    model_type = getattr(hf_config, "model_type", None)
    check_hooked_dtype(hf_config, dtype)
    spec_ = generic_spec(bridge, hf_config)
    runner = HookRunner(spec_, read_output_weights(bridge, spec_).to(device, torch.float32), bridge)
    probe = (torch.arange(1, 9) % spec_.d_vocab)[None].to(device)
    runner.check(probe)
    log.warning("%s (%s) is not one of logitlab's own architectures (%s): analysing it through TransformerLens "
                "hooks, one forward pass per ablation or patch (slow)", name, model_type,
                ", ".join(sorted(SUPPORTED_MODEL_TYPES)))
    return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=runner, device=device, dtype=dtype,
                 bridge=bridge, trust_remote_code=trust)


def from_bridge(bridge: Any, hf_config: Any, tok: Any, source: str, name: str, device: str, dtype: str,
                trust: bool = False, cached: Path | None = None, keep_bridge: bool = True) -> Model:
    """The Model of a bridge in compatibility mode (eval mode): its weights read, or its hooks.

    The weights are copied out of the bridge (``read_weights``) straight into ``dtype`` on ``device``, one
    weight at a time, so a bfloat16 load never holds a float32 copy of the model besides the bridge's own. The
    bridge itself is not changed; it is kept for hooks and interop (it must then be on ``device``), or, with
    ``keep_bridge=False`` (a staged model only), left out of the Model so that the caller can free it: the
    Model boots one again if something asks for it. With ``cached``, the weights read are also written there
    for later loads.
    """
    if not staged(hf_config):
        return _load_hooked(bridge, hf_config, tok, source, name, device, dtype, trust)
    spec_ = read_spec(hf_config)
    weights = read_weights(bridge, spec_, DTYPES[dtype], device)
    if cached is not None:
        try:
            save_weights(cached, weights)
        except OSError as e:
            log.warning("could not cache processed weights at %s: %s", cached, e)
    runner = Runner(spec_, weights)
    return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=runner, device=device, dtype=dtype,
                 bridge=bridge if keep_bridge else None, trust_remote_code=trust)
