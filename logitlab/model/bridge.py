"""Booting the TransformerLens bridge that processes a model's weights as logitlab reads them."""

from __future__ import annotations

from typing import Any

from logitlab.errors import LogitlabError
from logitlab.model.spec import KEEPS_VALUE_BIASES

__all__ = ["boot_bridge"]


def boot_bridge(source: str, hf: Any, tok: Any, name: str, device: str) -> Any:
    """The TransformerBridge of ``hf`` in compatibility mode (LayerNorm folded, writing weights and unembedding
    centred, value biases folded unless the model has attention sinks), in eval mode, on ``device``. ``hf`` is
    rewritten in place by the boot."""
    from transformer_lens.model_bridge import TransformerBridge
    try:
        bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tok)
        # attention sinks (gpt-oss): pattern rows sum to less than 1, so value biases stay in the values
        keep = getattr(hf.config, "model_type", None) in KEEPS_VALUE_BIASES
        bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=not keep)
        bridge.logitlab_value_biases_kept = keep  # read_weights refuses a sink model's bridge without it
    except Exception as e:
        raise LogitlabError(f"TransformerLens could not wrap {name!r}: {type(e).__name__}: {e}") from e
    bridge.eval()
    if device != "cpu":
        bridge.to(device)
    return bridge
