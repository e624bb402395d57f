"""Prompts with different numbers of incorrect answers: padded id tensors and the masked mean over them.

A task may give one prompt one incorrect answer (" he") and another two (" he", " she"). Their ids are held as
one (n, k_max) tensor padded with :data:`PAD`; every logit difference is ``correct − mean over the prompt's own
incorrect answers``, computed by :func:`mean_incorrect`, which ignores the padding. Still linear in the logits,
so attributions stay exact.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["PAD", "columns", "weights", "mean_incorrect"]

#: Id of a missing incorrect answer in a padded (n, k_max) tensor.
PAD = -1


def columns(ids: Int[Tensor, "n k"]) -> Int[Tensor, "n k"]:
    """``ids`` with padding replaced by a valid id (0), for indexing; combine with :func:`weights`."""
    return ids.clamp(min=0)


def weights(ids: Int[Tensor, "n k"], dtype: torch.dtype = torch.float32) -> Float[Tensor, "n k"]:
    """1 / (number of incorrect answers) for each real answer, 0 for padding: the masked mean's weights."""
    real = (ids != PAD).to(dtype)
    return real / real.sum(-1, keepdim=True).clamp(min=1)


def mean_incorrect(values: Float[Tensor, "n k"], ids: Int[Tensor, "n k"]) -> Float[Tensor, " n"]:
    """Mean of ``values`` (e.g. logits at :func:`columns` of ``ids``) over each row's real incorrect answers."""
    return (values * weights(ids, values.dtype).to(values.device)).sum(-1)
