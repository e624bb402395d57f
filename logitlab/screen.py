"""Screening: a cheap estimate for every cell, the exact computation only where it can matter.

A sweep over every head (ablation) or every (layer, position) (patching) costs one partial forward pass per
cell and pair. Most cells do nothing. A screen ranks the cells by a cheap first-order estimate (one forward and
one backward pass for all cells, :mod:`logitlab.analyses.atp`), then computes exactly:

* the ``top`` cells by |estimate| (the candidates for every finding), and
* a seeded random ``sample`` of the other cells, so that what the screen leaves out is measured, not assumed.

Every cell of the result says how it was computed (:data:`EXACT` or :data:`ESTIMATED`). Findings read exact
cells only; a claim about "the largest" cell also needs it to be larger than :attr:`Screen.bound`, the largest
size any screened-out cell can be expected to have: the largest |estimate| left out plus the largest estimation
error seen on the random sample (and never below the largest |exact| value of the sample itself).

Deterministic: the sample is drawn from a fixed seed with a CPU generator (the same cells on every machine);
ties in |estimate| are broken by cell index.

Example:
    >>> s = select(estimate.flatten(), top=12, sample=8)
    >>> exact_values = compute(s.exact_index)            # only those cells
    >>> s = s.measured(estimate.flatten(), exact_full)   # exact_full: NaN outside s.exact
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.registry import setting

__all__ = ["EXACT", "ESTIMATED", "SCREEN_SEED", "Screen", "ScreenSettings", "select", "methods"]

EXACT = "exact"
ESTIMATED = "estimated"
#: The screen's sampling seed (fixed: the same cells on every machine and run).
SCREEN_SEED = 20251206


@dataclass(frozen=True)
class ScreenSettings:
    """What head ablation and activation patching compute exactly, and what they screen first."""

    exact: bool = setting(False, "every ablation and patching cell computed exactly (no screening)", flag="--exact",
                          commands=("run", "circuit"),
                          help="Compute every head ablation and every patching cell exactly, without screening "
                               "(slower; the default screens and says which numbers are exact).")
    screen_top: int = setting(8, "cells per map computed exactly because their estimate is largest",
                              flag="--screen-top", commands=("run", "circuit"),
                              help="Cells per map (heads, or layer × position) computed exactly because their "
                                   "first-order estimate is largest.")
    screen_sample: int = setting(8, "cells per map computed exactly at random (seeded), to measure what the screen "
                                    "leaves out", flag="--screen-sample", commands=("run", "circuit"),
                                 help="Further cells per map computed exactly at random (seeded), to measure what "
                                      "the screen leaves out.")

    def __post_init__(self) -> None:
        if self.screen_top < 0 or self.screen_sample < 0:
            raise LogitlabError("screen_top and screen_sample must be ≥ 0", "--exact computes every cell")


@dataclass(frozen=True)
class Screen:
    """Which cells a screen computes exactly and, once they are computed, how well the estimate did.

    ``flagged``: the top cells by |estimate|; ``sampled``: the random sample of the others; ``exact`` =
    flagged | sampled. The measured fields are None until :meth:`measured` is called.
    """

    estimator: str
    flagged: Bool[Tensor, " cell"]
    sampled: Bool[Tensor, " cell"]
    left_out_max_estimate: float  # the largest |estimate| among the cells not computed exactly (0 if none)
    sample_max_error: float | None = None  # max |exact − estimate| over the sampled cells
    sample_max_exact: float | None = None  # max |exact| over the sampled cells
    max_error: float | None = None  # max |exact − estimate| over every exact cell

    @property
    def exact(self) -> Bool[Tensor, " cell"]:
        return self.flagged | self.sampled

    @property
    def exact_index(self) -> Tensor:
        return self.exact.nonzero().flatten()

    @property
    def complete(self) -> bool:
        """Every cell is exact (nothing was screened out)."""
        return bool(self.exact.all())

    @property
    def bound(self) -> float | None:
        """How large a screened-out cell can be expected to be (None before :meth:`measured`; 0 if complete)."""
        if self.complete:
            return 0.0
        if self.sample_max_error is None:
            return None
        return max(self.left_out_max_estimate + self.sample_max_error, self.sample_max_exact or 0.0)

    def measured(self, estimate: Float[Tensor, " cell"], exact: Float[Tensor, " cell"]) -> Screen:
        """This screen with its measured errors; ``exact`` holds the exact values of the exact cells (others
        are ignored)."""
        err = (exact.double() - estimate.double()).abs()
        s, e = self.sampled, self.exact
        return replace(self, sample_max_error=float(err[s].max()) if bool(s.any()) else 0.0,
                       sample_max_exact=float(exact[s].abs().max()) if bool(s.any()) else 0.0,
                       max_error=float(err[e].max()) if bool(e.any()) else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The ``screen`` entry of a results section (JSON-able)."""
        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)
        return {"estimator": self.estimator, "n_cells": int(self.flagged.numel()),
                "n_flagged": int(self.flagged.sum()), "n_sampled": int(self.sampled.sum()),
                "n_exact": int(self.exact.sum()), "left_out_max_estimate": num(self.left_out_max_estimate),
                "sample_max_error": num(self.sample_max_error), "sample_max_exact": num(self.sample_max_exact),
                "max_error": num(self.max_error), "bound": num(self.bound)}


def select(estimate: Float[Tensor, " cell"], top: int, sample: int, estimator: str = "first-order",
           always: Bool[Tensor, " cell"] | None = None, seed: int = SCREEN_SEED) -> Screen:
    """Flag the ``top`` cells by |estimate| (and every cell of ``always``), and sample ``sample`` of the rest.

    ``top`` ≥ the number of cells (or a negative ``top``) flags every cell: the screen is then complete.
    """
    est = estimate.detach().double().cpu().abs()
    n = est.numel()
    flagged = torch.zeros(n, dtype=torch.bool)
    if top < 0 or top >= n:
        flagged[:] = True
    elif top > 0:
        # Stable order: larger |estimate| first, ties by index.
        order = sorted(range(n), key=lambda i: (-float(est[i]), i))
        flagged[order[:top]] = True
    if always is not None:
        flagged |= always.cpu().bool()
    rest = (~flagged).nonzero().flatten()
    sampled = torch.zeros(n, dtype=torch.bool)
    if sample > 0 and len(rest):
        g = torch.Generator().manual_seed(seed)
        pick = rest[torch.randperm(len(rest), generator=g)[:sample]]
        sampled[pick] = True
    left = ~(flagged | sampled)
    return Screen(estimator, flagged, sampled, float(est[left].max()) if bool(left.any()) else 0.0)


def methods(screen: Screen | None, shape: tuple[int, ...]) -> list[Any]:
    """The per-cell method labels (nested lists of ``shape``): all exact without a screen."""
    flat = [EXACT] * math.prod(shape) if screen is None else \
        [EXACT if bool(x) else ESTIMATED for x in screen.exact.tolist()]
    for size in reversed(shape[1:]):
        flat = [flat[i:i + size] for i in range(0, len(flat), size)]
    return flat
