"""Tokenizers: a model folder's own (fast path for the built-in model), and a private copy of one in memory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from logitlab.errors import LogitlabError

__all__ = ["load_tokenizer", "copy_tokenizer"]

log = logging.getLogger(__name__)


def load_tokenizer(source: str, builtin: bool, trust_remote_code: bool) -> Any:
    """The tokenizer of a model folder.

    For the built-in model's folder (written by logitlab) the tokenizer class is built straight from
    ``tokenizer.json`` by the tokenizers library: ``from_pretrained`` would first re-parse that file in Python
    to rebuild the same tokenizer (2.4 s instead of 0.8 s for Gemma's 262k tokens). The integration tests
    check that both give the same tokenizer.
    """
    from transformers import AutoTokenizer
    if builtin:
        try:
            from transformers.models.auto.tokenization_auto import tokenizer_class_from_name
            config = json.loads((Path(source) / "tokenizer_config.json").read_text(encoding="utf-8"))
            cls = tokenizer_class_from_name(config.pop("tokenizer_class"))
            config.pop("backend", None)
            return cls(tokenizer_file=str(Path(source) / "tokenizer.json"), name_or_path=source, **config)
        except Exception as e:  # noqa: BLE001  anything unexpected: the general path below
            log.debug("direct tokenizer load failed (%s); using from_pretrained", e)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def copy_tokenizer(tokenizer: Any, folder: str, trust: bool) -> Any:
    """A copy of ``tokenizer`` loaded from ``folder`` (so the bridge can re-load it and may change the copy)."""
    from transformers import AutoTokenizer
    try:
        tokenizer.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001  save or load can fail in many ways for custom tokenizers
        raise LogitlabError(f"cannot copy the tokenizer ({type(tokenizer).__name__}): {type(e).__name__}: {e}",
                            "pass a transformers tokenizer (PreTrainedTokenizerBase)") from e
