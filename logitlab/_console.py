"""Console helpers shared by the command-line entry points."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    """Silence the libraries' warnings and per-load progress bars (logitlab shows its own progress)."""
    warnings.filterwarnings("ignore")
    for name in ("transformers", "transformer_lens", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
