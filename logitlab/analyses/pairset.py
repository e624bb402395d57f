"""Clean/corrupted pairs as activation patching and attribution patching see them, and their summaries.

A :class:`PairSet` holds one set of pairs sharing one token length, patched exactly (the patched logit
difference per component and pair); an :class:`AtPSet` the first-order estimates of the same patches
(:func:`first_order`: two cached forwards and one forward + backward for every component at once; :func:`atp_set`
builds the set). Both
normalise each pair by its own gap, leaving out pairs below :data:`MIN_GAP`. :func:`pool_positions` lines up the
positions of sets whose prompts differ (templates pooled by role); :func:`summarise` gives the paired mean,
standard error and bootstrap CI of one or more sets.

Cached forwards: exact patching and the first-order estimate of a set of pairs both start from one cached forward
of the clean and of the corrupted prompts (:func:`pair_caches`). Callers that patch and estimate the same pairs,
or patch them in several rounds (:mod:`logitlab.analyses.patching_plan`), compute those caches once and pass them
on (:func:`join_caches` puts the rounds' caches of one group together): no pair runs through the cached forward
twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.model.readout import CACHE_BATCH_DIM, CleanCache, wide
from logitlab.model.runner import Runner
from logitlab.screen import ESTIMATED, EXACT
from logitlab.stats import Paired, paired

__all__ = ["MIN_GAP", "WHATS", "PairSet", "AtPSet", "PatchingSummary", "PairCaches", "pair_caches", "join_caches",
           "first_order", "atp_set", "pool_positions", "summarise"]

#: Pairs whose |clean − corrupted| logit difference is below this (logits) are not normalised, only counted.
MIN_GAP = 1.0
#: The kinds of patched components.
WHATS = ("resid", "attn", "mlp", "heads")


@dataclass(frozen=True)
class PairSet:
    """Raw patching of one set of pairs sharing one token length (not normalised), every pair kept.

    ``label`` is ``"reference"`` or the template; ``tokens`` the first clean prompt's token strings, ``roles``
    the position labels used for pooling.
    """

    label: str
    template: int  # -1 for the reference pairs
    tokens: tuple[str, ...]
    roles: tuple[str, ...]
    clean: Float[Tensor, " pair"]  # each pair's clean logit difference (clean answers)
    corrupted: Float[Tensor, " pair"]  # the corrupted prompt's, on the clean answers
    resid: Float[Tensor, "layer pos pair"]  # patched logit difference
    attn: Float[Tensor, "layer pos pair"]
    mlp: Float[Tensor, "layer pos pair"]
    heads: Float[Tensor, "layer head pair"]
    min_gap: float = MIN_GAP
    # Per kind, the (layer, width) cells patched exactly when not all of them were (the others hold
    # corrupted + the first-order estimate; see :mod:`logitlab.analyses.patching_plan`). None: every cell exact.
    exact_cells: dict[str, Tensor] | None = None

    def is_exact(self, what: str) -> Tensor:
        """(layer, width) bool: the cells of ``what`` patched exactly."""
        x = getattr(self, what)
        if self.exact_cells is None or what not in self.exact_cells:
            return torch.ones(x.shape[:2], dtype=torch.bool)
        return self.exact_cells[what].cpu()

    @property
    def n(self) -> int:
        return int(self.clean.shape[0])

    @property
    def used(self) -> Tensor:
        """(pair,) bool: pairs whose gap is at least ``min_gap``."""
        return (self.clean - self.corrupted).abs() >= self.min_gap

    @property
    def n_used(self) -> int:
        return int(self.used.sum())

    def normalised(self, what: str) -> Float[Tensor, "layer width used_pair"]:
        """(patched − corrupted) / (clean − corrupted) of the used pairs, each by its own gap."""
        u = self.used
        x = getattr(self, what)[..., u]
        return (x - self.corrupted[u]) / (self.clean[u] - self.corrupted[u])


@dataclass(frozen=True)
class AtPSet(PairSet):
    """First-order estimates for one set of pairs sharing one token length (not normalised), every pair kept.

    Aligned with the :class:`PairSet` exact patching computes for the same pairs (same fields: ``label`` is
    ``"reference"`` or the template, ``tokens`` the first clean prompt's token strings, ``roles`` the pooling
    labels), except that ``resid``/``attn``/``mlp`` ((layer, pos, pair): (a_clean − a_corr) · ∂m/∂a) and ``heads``
    ((layer, head, pair), summed over positions) hold the estimated *change* patched − corrupted of the clean
    answers' logit difference, not the patched value.
    """

    def normalised(self, what: str) -> Float[Tensor, "layer width used_pair"]:
        """estimate / (clean − corrupted) of the used pairs, each by its own gap (as :meth:`PairSet.normalised`)."""
        u = self.used
        return getattr(self, what)[..., u] / (self.clean[u] - self.corrupted[u])


@dataclass(frozen=True)
class PatchingSummary:
    """Normalised patching of one set of pairs (reference, one template, or pooled), over its used pairs."""

    label: str  # "reference", the template, or "pooled"
    tokens: tuple[str, ...]  # position labels
    n_pairs: int  # pairs used
    n_excluded: int  # pairs below the gap
    clean_logit_diff: float  # mean over the used pairs
    corrupted_logit_diff: float
    # mean (layer, pos) or (layer, head), stderr, ci (..., 2); None when no pair is used
    resid: Paired | None
    attn: Paired | None
    mlp: Paired | None
    heads: Paired | None
    # Per kind, the (layer, width) cells whose every set patched them exactly (absent kind: all of them).
    exact_cells: dict[str, Tensor] | None = None

    def to_dict(self, what: str) -> dict[str, Any]:
        """One results section's numbers; empty lists when no pair is used. ``method`` labels each cell
        ``exact`` or ``estimated`` (:mod:`logitlab.screen`)."""
        s: Paired | None = getattr(self, what)
        nums = ([], [], []) if s is None else (s.mean.tolist(), s.stderr.tolist(), s.ci.tolist())
        out: dict[str, Any] = {"values": nums[0], "stderr": nums[1], "ci": nums[2],
                               "n_pairs": self.n_pairs, "n_excluded": self.n_excluded}
        if s is not None:
            cells = (self.exact_cells or {}).get(what)
            exact = torch.ones(s.mean.shape, dtype=torch.bool) if cells is None else cells
            out["method"] = [[EXACT if e else ESTIMATED for e in row] for row in exact.tolist()]
        if what != "heads":
            out = {"tokens": list(self.tokens), **out}
        if what == "resid":
            out.update(clean_logit_diff=self.clean_logit_diff, corrupted_logit_diff=self.corrupted_logit_diff)
        return out


def pool_positions(roles: list[tuple[str, ...]]) -> list[tuple[str, list[int]]]:
    """The pooled positions of groups with role sequences ``roles``: (label, the position in each group).

    Identical sequences pool position by position; otherwise the positions shared from the start while the
    roles agree, and from the end while they agree (the final position always).
    """
    if len(set(roles)) == 1:
        return [(r, [p] * len(roles)) for p, r in enumerate(roles[0])]
    shortest = min(len(r) for r in roles)
    head = 0
    while head < shortest and len({r[head] for r in roles}) == 1:
        head += 1
    out = [(roles[0][p], [p] * len(roles)) for p in range(head)]
    tail: list[tuple[str, list[int]]] = []  # from the final position backwards
    for back in range(1, shortest - head + 1):
        labels = {r[-back] for r in roles}
        if len(labels) > 1 and back > 1:
            break
        tail.append((labels.pop() if len(labels) == 1 else "[final]", [len(r) - back for r in roles]))
        if tail[-1][0] == "[final]":
            break
    return out + tail[::-1]


def summarise(label: str, tokens: tuple[str, ...], sets: list[PairSet], pos: list[list[int]] | None) -> PatchingSummary:
    """Summarise ``sets`` pooled: positions ``pos[k]`` of each set (None: all, one set).

    With no used pair the numbers are None and the logit differences are the means over all pairs.
    """
    used = torch.cat([s.used for s in sets])
    clean, corr = torch.cat([s.clean for s in sets]), torch.cat([s.corrupted for s in sets])
    n_used = int(used.sum())
    norm: dict[str, Paired | None] = dict.fromkeys(WHATS)
    exact: dict[str, Tensor] = {}
    for what in WHATS if n_used else ():
        parts, cells = [], []
        for k, s in enumerate(sets):
            x, e = s.normalised(what), s.is_exact(what)  # (L, width, used), (L, width)
            if what != "heads" and pos is not None:
                cols = [p[k] for p in pos]
                x, e = x[:, cols], e[:, cols]
            parts.append(x)
            cells.append(e)
        norm[what] = paired(torch.cat(parts, -1))
        if any(s.exact_cells is not None for s in sets):
            exact[what] = torch.stack(cells).all(0)
    if n_used:
        clean, corr = clean[used], corr[used]
    return PatchingSummary(label, tokens, n_used, len(used) - n_used, float(clean.mean()), float(corr.mean()),
                           norm["resid"], norm["attn"], norm["mlp"], norm["heads"], exact or None)


#: The clean and the corrupted run of a set of pairs (on the runner's device), in the pairs' order.
PairCaches = tuple[CleanCache, CleanCache]


def pair_caches(runner: Runner, clean_tokens: Tensor, corrupted_tokens: Tensor) -> PairCaches:
    """One cached forward of the clean prompts and one of the corrupted prompts."""
    dev = runner.device
    with torch.no_grad():
        return runner.run_with_cache(clean_tokens.to(dev)), runner.run_with_cache(corrupted_tokens.to(dev))


def join_caches(parts: Sequence[PairCaches]) -> PairCaches:
    """The caches of disjoint sets of pairs of one token length (in order) as one, concatenated over the batch."""
    if len(parts) == 1:
        return parts[0]

    def cat(caches: list[CleanCache]) -> CleanCache:
        out: dict[str, Tensor | None] = {}
        for f in fields(CleanCache):
            xs = [getattr(c, f.name) for c in caches]
            out[f.name] = None if xs[0] is None else torch.cat(xs, CACHE_BATCH_DIM[f.name])
        return CleanCache(**out)  # type: ignore[arg-type]
    return cat([p[0] for p in parts]), cat([p[1] for p in parts])


def first_order(runner: Runner, clean_tokens: Tensor, corrupted_tokens: Tensor, correct: Tensor,
                incorrect: Tensor, caches: PairCaches | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Clean and corrupted logit differences (pair,) and the first-order effects of every patch.

    Returns ``(clean, corrupted, effects)`` with ``effects`` keyed by ``resid``/``attn``/``mlp`` (layer, pos,
    pair) and ``heads`` (layer, head, pair), in at least float32 (float64 for a float64 runner). Two cached
    forwards (none when ``caches``, :func:`pair_caches` of these pairs, are given) and one forward + backward,
    whatever the number of pairs.
    """
    dev = runner.device
    corr_t = corrupted_tokens.to(dev)
    correct, incorrect = correct.to(dev), incorrect.to(dev)
    n, T = corr_t.shape
    fp = torch.full((n,), T - 1, device=dev)  # every pair ends at T-1
    clean, corr = caches if caches is not None else pair_caches(runner, clean_tokens, corr_t)
    with torch.no_grad():
        clean_ld = runner.answer_metrics(clean.resid_final[:, T - 1], correct, incorrect, False)[0]
        corr_ld = runner.answer_metrics(corr.resid_final[:, T - 1], correct, incorrect, False)[0]
    _, grads = runner.grad_run(corr_t, fp, correct, incorrect)  # ∂m/∂a at the corrupted run, every layer
    with torch.no_grad():
        # Differences in at least float32: in bfloat16 a - b would round before the product.
        d = lambda name: wide(getattr(clean, name)) - wide(getattr(corr, name))  # noqa: E731  (layer, B, T, ...)
        effects = {
            what: torch.einsum("lbpd,lbpd->lpb", d(name), wide(grads[name]))  # (layer, pos, pair)
            for what, name in (("resid", "resid_pre"), ("attn", "attn_out"), ("mlp", "mlp_out"))}
        effects["heads"] = torch.einsum("lbphe,lbphe->lhb", d("z"), wide(grads["z"]))  # (layer, head, pair)
    bad = [what for what, x in effects.items() if not bool(torch.isfinite(x).all())]
    if bad:
        raise LogitlabError(f"attribution patching produced non-finite estimates for {', '.join(bad)}",
                            "the gradients overflow in this dtype; load the model in float32")
    return wide(clean_ld).cpu(), wide(corr_ld).cpu(), {k: v.cpu() for k, v in effects.items()}


def atp_set(runner: Runner, label: str, template: int, tokens: tuple[str, ...], roles: tuple[str, ...],
            clean_tokens: Tensor, corrupted_tokens: Tensor, correct: Tensor, incorrect: Tensor,
            min_gap: float, caches: PairCaches | None = None) -> AtPSet:
    """The :class:`AtPSet` of one set of pairs: :func:`first_order` of them (``caches``: their cached runs, if
    already computed), labelled as their :class:`PairSet`.

    The one builder of first-order sets: attribution patching (:mod:`logitlab.analyses.atp`) and the patching
    screen (:mod:`logitlab.analyses.patching_plan`) both call it, so their estimates of the same pairs agree.
    """
    clean, corr, e = first_order(runner, clean_tokens, corrupted_tokens, correct, incorrect, caches)
    return AtPSet(label=label, template=template, tokens=tokens, roles=roles, clean=clean, corrupted=corr,
                  resid=e["resid"], attn=e["attn"], mlp=e["mlp"], heads=e["heads"], min_gap=min_gap)
