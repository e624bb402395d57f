"""Console helpers shared by the command-line entry points.

The libraries' log messages and per-load progress bars are silenced (logitlab shows its own progress), but
Python warnings are not: a warning can be the only sign that a number is off (TransformerLens warns, for
instance, when an architecture's norms cannot be folded), so it must reach the user. Loading the built-in
model (dequantising its GGUF file, booting its bridge, or reading cached weights), loading every tiny test
architecture and running the battery raise no warning at all, with every filter set to ``always``; a warning
found noisy later is filtered here by its exact message and module, never all of them at once.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    """Silence the libraries' log messages and per-load progress bars (not their Python warnings)."""
    for name in ("transformers", "transformer_lens", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
