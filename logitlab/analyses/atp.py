"""Attribution patching (AtP): activation patching linearised, every component from one backward pass.

Method (Nanda 2023, "Attribution patching: activation patching at industrial scale"; Kramár et al. 2024,
"AtP*: an efficient and scalable method for localizing LLM behaviour to components"). Exact patching
(:mod:`logitlab.analyses.patching`) puts one clean activation into the corrupted run and scores the clean
prompt's answers: the logit difference ``m`` (correct − masked mean of the incorrect answers, at the final
position, :meth:`~logitlab.model.readout.Readout.answer_metrics`). AtP replaces each of those forward passes by
the first-order Taylor expansion of ``m`` around the corrupted run:

    m(patch a) − m(corrupted) ≈ (a_clean − a_corrupted) · ∂m/∂a |corrupted run

The same components as exact patching: ``resid_pre``, the attention output (after any post-attention norm)
and the MLP output per (layer, position), and each head's ``z`` summed over positions (exact head patching
replaces a head's z at every position). The same pairs: the reference pairs and
:func:`logitlab.task.generated_pairs` (one set per template and token length), so every estimate lines up
1:1 with the :class:`~logitlab.analyses.patching.PairSet` of :func:`activation_patching`. The same
normalisation: each pair by its own gap, estimate / (clean − corrupted); pairs with |gap| < ``min_gap``
(:data:`~logitlab.analyses.patching.MIN_GAP`) are left out of every normalised number and counted.

Cost per set of pairs (batched over the pairs): one cached forward of the clean prompts and one of the
corrupted prompts (activation differences), one forward + backward of the corrupted prompts
(:meth:`Runner.grad_run`: ∂m/∂a at every activation at once) — independent of the number of components,
where exact patching runs L·(3T + H) partial forward passes per pair.

Where the linearisation is exact, and where not:

* Heads on pre-norm models: a head's z reaches the attention output through ``W_O`` (linear), so a layer's
  head estimates sum to its attention-output estimates summed over positions (tested). On post-norm models
  (Gemma 3) z passes the post-attention norm first: the gradient flows through it (autograd), and the
  estimate's error includes that norm's nonlinearity as well as the later layers'.
* The attention output on post-norm models is taken *after* the post-attention norm (as in exact patching,
  where patching it is well defined): AtP on it linearises through later layers only.
* Positions where clean and corrupted activations agree (those before the first differing token), and the
  last layer's attention and MLP outputs at non-final positions (they never reach the final position),
  estimate exactly 0, as exact patching gives exactly the corrupted score there (tested).
* Left out of AtP*: the QK fix (recomputing the attention softmax exactly for changed queries and keys; it
  needs the gradient at the attention pattern, which the fused attention kernel of :meth:`Runner.grad_run`
  does not expose) and GradDrop. Saturated attention therefore shows up as large misses on heads whose
  effect goes through their pattern.

Comparison with exact patching (``exact=``, the :class:`PatchingResult` of the same pairs): on the
normalised per-component means, per kind. Heads (the headline): the mean over every used pair of every set.
Positions (resid, attn, mlp): the reference pairs if one of them is used, else the generated groups pooled
on their shared positions (:func:`~logitlab.analyses.patching.pool_positions`), as ``values`` in the
results. Both methods use the same pairs (the AtP sets' used mask). Statistics over the flattened
(layer, width) components: Pearson r, Spearman r (Pearson of average ranks), the overlap of the top
``k = min(10, n)`` components ranked by |value| (fraction of shared components) and the 5 worst misses by
|AtP − exact|. A correlation of a constant vector is undefined: None.

Invariants (tested): as α → 0, exactly patching ``a_corr + α (a_clean − a_corr)`` changes the metric by
α × the estimate (float64, every component of every architecture kind); batched over pairs equals one pair
at a time; the exact zeros and the head sum above; per-head, MLP and embedding node scores equal
TransformerLens 4.3's ``attribution_patch`` (which takes the same convention: denoising, gradient at the
corrupted run), post-norm Gemma 3 included.

``to_dict()`` (JSON-able, no NaN)::

    {"method": "atp", "n_pairs": int, "n_excluded": int, "min_gap": float,
     "heads": {"pairs": "all", "n_pairs": int, "atp": [[float]] (layer × head),
               # with exact= only:
               "exact": [[float]], "pearson": float | None, "spearman": float | None,
               "top_k": int, "top_k_overlap": float, "worst": [{"label": "L1H2", "atp": float, "exact": float}]},
     "resid": {"pairs": "reference" | "pooled", "tokens": [str], "n_pairs": int, "atp": [[float]] (layer × pos),
               ...the same comparison keys (labels "L3 pos 5 ' is'")},
     "attn": {...as resid}, "mlp": {...as resid}}

``n_pairs``/``n_excluded`` at the top count every pair of every set; ``atp``/``exact`` are ``[]`` and the
statistics None when a kind has no used pair.

Example:
    >>> from logitlab import load_model, load_task, tokenize_task
    >>> from logitlab.analyses.patching import activation_patching
    >>> model = load_model("builtin")
    >>> tt = tokenize_task(load_task("pronouns"), model.tokenizer)
    >>> exact = activation_patching(model, tt, max_pairs=2)
    >>> res = attribution_patching(model, tt, exact=exact, max_pairs=2)
    >>> res.heads.comparison.pearson            # AtP vs exact over every head (0.91 on this model)
    >>> res.heads.atp                           # (layer, head) mean normalised estimate
    >>> res.reference.heads                     # (layer, head, pair) raw estimates, like exact.reference.heads
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses.pairset import MIN_GAP, AtPSet, PairSet, atp_set, pool_positions
from logitlab.analyses.patching import PatchingResult
from logitlab.errors import LogitlabError
from logitlab.model.backend import GRAD, require
from logitlab.model.load import Model
from logitlab.results.circuit import AtPKind, AttributionPatching
from logitlab.task import MAX_PAIRS_PER_TEMPLATE, TokenizedTask, generated_pairs

__all__ = ["AtPSet", "Miss", "Comparison", "AtPSummary", "AtPResult", "attribution_patching", "TOP_K", "N_WORST"]

#: At most this many components are compared by their top-|value| ranking.
TOP_K = 10
#: How many of the worst misses (largest |AtP − exact|) a comparison lists.
N_WORST = 5


@dataclass(frozen=True)
class Miss:
    """One component where AtP and exact patching disagree most."""

    label: str  # "L1H2" or "L3 pos 5 ' is'"
    atp: float
    exact: float


@dataclass(frozen=True)
class Comparison:
    """AtP against exact patching over one kind's components (normalised means)."""

    pearson: float | None  # None when undefined (fewer than 2 components, or a constant vector)
    spearman: float | None
    top_k: int
    top_k_overlap: float  # fraction of the top-k |AtP| components among the top-k |exact| ones
    worst: tuple[Miss, ...]  # largest |AtP − exact| first


@dataclass(frozen=True)
class AtPSummary:
    """One kind's mean normalised estimates over its pairs, and the comparison when exact patching is given."""

    what: str  # "heads", "resid", "attn" or "mlp"
    pairs: str  # "all" (heads), "reference" or "pooled"
    tokens: tuple[str, ...]  # position labels (empty for heads)
    n_pairs: int  # used pairs behind the means
    atp: Float[Tensor, "layer width"] | None  # None when no pair is used
    exact: Float[Tensor, "layer width"] | None  # None without exact patching or without a used pair
    comparison: Comparison | None
    compared: bool = False  # exact patching was given (the dict then has the comparison keys)

    def labels(self) -> list[str]:
        """Component labels, layer-major (the order of ``atp.flatten()``)."""
        if self.atp is None:
            return []
        L, W = self.atp.shape
        if self.what == "heads":
            return [f"L{l}H{h}" for l in range(L) for h in range(W)]
        return [f"L{l} pos {p} {self.tokens[p]!r}" for l in range(L) for p in range(W)]

    def to_dict(self) -> AtPKind:
        out: dict[str, Any] = {"pairs": self.pairs}
        if self.what != "heads":
            out["tokens"] = list(self.tokens)
        out.update(n_pairs=self.n_pairs, atp=[] if self.atp is None else _floats(self.atp))
        if self.compared:
            c = self.comparison
            out.update(exact=[] if self.exact is None else _floats(self.exact),
                       pearson=None if c is None else c.pearson, spearman=None if c is None else c.spearman,
                       top_k=0 if c is None else c.top_k, top_k_overlap=None if c is None else c.top_k_overlap,
                       worst=[] if c is None else [{"label": m.label, "atp": m.atp, "exact": m.exact} for m in c.worst])
        return cast(AtPKind, out)


@dataclass(frozen=True)
class AtPResult:
    """Per-pair estimates aligned with exact patching's sets, and per-kind summaries.

    ``reference``: the task's explicit pairs (None without); ``groups``: the generated pairs, one set per
    (template, token length), in the order of :func:`activation_patching`'s ``groups``.
    """

    reference: AtPSet | None
    groups: tuple[AtPSet, ...]
    heads: AtPSummary
    resid: AtPSummary
    attn: AtPSummary
    mlp: AtPSummary
    min_gap: float = MIN_GAP

    @property
    def sets(self) -> tuple[AtPSet, ...]:
        return ((self.reference,) if self.reference is not None else ()) + self.groups

    @property
    def n_pairs(self) -> int:
        """Used pairs over every set."""
        return sum(s.n_used for s in self.sets)

    @property
    def n_excluded(self) -> int:
        """Pairs below the gap over every set."""
        return sum(s.n - s.n_used for s in self.sets)

    def to_dict(self) -> AttributionPatching:
        """The layout in the module docstring."""
        return cast(AttributionPatching, {"method": "atp", "n_pairs": self.n_pairs, "n_excluded": self.n_excluded, "min_gap": self.min_gap,
                **{what: getattr(self, what).to_dict() for what in ("heads", "resid", "attn", "mlp")}})


def attribution_patching(model: Model, task: TokenizedTask, exact: PatchingResult | None = None,
                         generated: bool = True, min_gap: float = MIN_GAP,
                         max_pairs: int = MAX_PAIRS_PER_TEMPLATE) -> AtPResult:
    """AtP estimates of patching every component for the reference pairs and, if ``generated``, the pairs
    built from the task's templates (at most ``max_pairs`` per template): the pairs of
    :func:`activation_patching` with the same arguments.

    With ``exact`` (that function's result on the same pairs) each kind is compared with it; a result on other
    pairs raises :class:`LogitlabError`. When ``exact`` chose its own generated pairs (a precision target) or
    screened them, its pairs are used (``generated`` and ``max_pairs`` are then ignored), and its first-order
    estimates when it made them; the comparison then covers the cells it patched exactly. A backend without
    gradients raises too.
    """
    require(model, GRAD, "attribution patching")
    ref = None
    if task.clean_tokens is not None:
        assert task.corrupted_tokens is not None and task.pair_correct_ids is not None
        assert task.pair_incorrect_ids is not None
        tokens = tuple(model.to_str_tokens(task.clean_tokens[0]))
        ref = atp_set(model.runner, "reference", -1, tokens, tokens, task.clean_tokens, task.corrupted_tokens,
                      task.pair_correct_ids, task.pair_incorrect_ids, min_gap)
    # With exact patching given: its generated pairs (it may have used fewer, precision-targeted), and its
    # first-order estimates of them when its screen computed them already.
    chosen = exact is not None and (exact.precision is not None or exact.estimates is not None)
    pairs = exact.pair_groups if chosen and exact.pair_groups is not None else (
        generated_pairs(task, max_pairs) if generated and max_pairs > 0 else ())
    if chosen and exact.estimates is not None:
        groups = exact.estimates
    else:
        groups = tuple(
            atp_set(model.runner, g.template_text, g.template, tuple(model.to_str_tokens(g.clean_tokens[0])),
                    g.roles, g.clean_tokens, g.corrupted_tokens, g.correct_ids, g.incorrect_ids, min_gap)
            for g in pairs)
    if exact is not None:
        _check_aligned(ref, groups, exact)
    exact_ref = None if exact is None else exact.reference
    exact_groups = None if exact is None else exact.groups
    summaries = {"heads": _head_summary(ref, groups, exact_ref, exact_groups)}
    for what in ("resid", "attn", "mlp"):
        summaries[what] = _position_summary(what, ref, groups, exact_ref, exact_groups)
    return AtPResult(ref, groups, summaries["heads"], summaries["resid"], summaries["attn"], summaries["mlp"],
                     min_gap)


# ---- the estimate ----------------------------------------------------------------------------------------


def _check_aligned(ref: AtPSet | None, groups: tuple[AtPSet, ...], exact: PatchingResult) -> None:
    """Raise unless ``exact`` patched the same pairs: same sets, sizes, tokens and (to float noise) scores."""
    hint = "run activation_patching and attribution_patching with the same task, generated and max_pairs"
    mine = ([ref] if ref is not None else []) + list(groups)
    theirs = ([exact.reference] if exact.reference is not None else []) + list(exact.groups)
    if len(mine) != len(theirs) or (ref is None) != (exact.reference is None):
        raise LogitlabError(f"exact patching covers {len(theirs)} set(s) of pairs, attribution patching "
                            f"{len(mine)}", hint)
    for a, b in zip(mine, theirs):
        if (a.label, a.template, a.n, a.tokens, a.roles) != (b.label, b.template, b.n, b.tokens, b.roles):
            raise LogitlabError(f"exact patching's set {b.label!r} ({b.n} pairs) is not attribution patching's "
                                f"{a.label!r} ({a.n} pairs)", hint)
        for name in ("clean", "corrupted"):
            x, y = getattr(a, name), getattr(b, name).float()
            diff = float((x - y).abs().max())
            if diff > 1e-3 * max(1.0, float(y.abs().max())):
                raise LogitlabError(f"set {a.label!r}: the {name} logit differences of exact patching differ from "
                                    f"these by up to {diff:.3g} (another model or other pairs?)", hint)


# ---- summaries and the comparison ------------------------------------------------------------------------


def _exact_normalised(s: PairSet, what: str, used: Tensor) -> Tensor:
    """(patched − corrupted) / (clean − corrupted) of exact patching for the pairs ``used``; NaN at the cells
    the screen left to the estimate (they are not exact patching's numbers)."""
    x = (getattr(s, what)[..., used].float() - s.corrupted[used]) / (s.clean[used] - s.corrupted[used])
    return torch.where(s.is_exact(what)[..., None], x, torch.full_like(x, math.nan))


def _head_summary(ref: AtPSet | None, groups: tuple[AtPSet, ...], exact_ref: PairSet | None,
                  exact_groups: tuple[PairSet, ...] | None) -> AtPSummary:
    """Heads: the mean over every used pair of every set."""
    sets = ([ref] if ref is not None else []) + list(groups)
    exact_sets = None if exact_groups is None else ([exact_ref] if exact_ref is not None else []) + list(exact_groups)
    n_used, compared = sum(s.n_used for s in sets), exact_sets is not None
    if not n_used:
        return AtPSummary("heads", "all", (), 0, None, None, None, compared)
    atp = torch.cat([s.normalised("heads") for s in sets], -1).mean(-1)  # (layer, head)
    ex = None
    if exact_sets is not None:
        ex = torch.cat([_exact_normalised(e, "heads", s.used) for s, e in zip(sets, exact_sets)], -1).mean(-1)
    summ = AtPSummary("heads", "all", (), n_used, atp.float(), None if ex is None else ex.float(), None, compared)
    return _with_comparison(summ)


def _position_summary(what: str, ref: AtPSet | None, groups: tuple[AtPSet, ...], exact_ref: PairSet | None,
                      exact_groups: tuple[PairSet, ...] | None) -> AtPSummary:
    """Positions: the reference pairs if one is used, else the groups pooled on their shared positions."""
    compared = exact_groups is not None
    live = [k for k, g in enumerate(groups) if g.n_used]
    if ref is not None and (ref.n_used or not live):
        chosen, pos, label, tokens = [(ref, exact_ref)], None, "reference", ref.tokens
    elif groups:
        keep = live or list(range(len(groups)))
        pooled = pool_positions([groups[k].roles for k in keep])
        chosen = [(groups[k], None if exact_groups is None else exact_groups[k]) for k in keep]
        pos, label, tokens = [p for _, p in pooled], "pooled", tuple(lab for lab, _ in pooled)
    else:  # no pair at all
        return AtPSummary(what, "reference", (), 0, None, None, None, compared)
    n_used = sum(s.n_used for s, _ in chosen)
    if not n_used:
        return AtPSummary(what, label, tokens, 0, None, None, None, compared)
    atp_parts, exact_parts = [], []
    for k, (s, e) in enumerate(chosen):
        cols = slice(None) if pos is None else [p[k] for p in pos]  # this set's position of each pooled one
        atp_parts.append(s.normalised(what)[:, cols])
        if e is not None:
            exact_parts.append(_exact_normalised(e, what, s.used)[:, cols])
    atp = torch.cat(atp_parts, -1).mean(-1).float()  # (layer, pos)
    ex = torch.cat(exact_parts, -1).mean(-1).float() if compared else None
    return _with_comparison(AtPSummary(what, label, tokens, n_used, atp, ex, None, compared))


def _with_comparison(s: AtPSummary) -> AtPSummary:
    if s.atp is None or s.exact is None:
        return s
    return AtPSummary(s.what, s.pairs, s.tokens, s.n_pairs, s.atp, s.exact, _compare(s.atp, s.exact, s.labels()),
                      s.compared)


def _compare(atp: Tensor, exact: Tensor, labels: list[str]) -> Comparison:
    """AtP against exact patching over the components exact patching computed (NaN: screened out, skipped)."""
    a, e = atp.flatten().double(), exact.flatten().double()
    keep = torch.isfinite(e)
    if not bool(keep.all()):
        idx = keep.nonzero().flatten().tolist()
        a, e, labels = a[keep], e[keep], [labels[i] for i in idx]
    k = min(TOP_K, a.numel())
    top = lambda x: set(torch.sort(x.abs(), descending=True, stable=True).indices[:k].tolist())  # noqa: E731
    overlap = len(top(a) & top(e)) / k if k else 0.0
    miss = torch.sort((a - e).abs(), descending=True, stable=True).indices[:N_WORST].tolist()
    worst = tuple(Miss(labels[i], float(a[i]), float(e[i])) for i in miss)
    return Comparison(_pearson(a, e), _spearman(a, e), k, overlap, worst)


def _pearson(x: Tensor, y: Tensor) -> float | None:
    """Pearson correlation of two vectors; None when undefined (fewer than 2 values or a constant vector)."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return None
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    if den == 0.0 or not math.isfinite(den):
        return None
    return max(-1.0, min(1.0, float((x * y).sum()) / den))


def _ranks(x: Tensor) -> Tensor:
    """0-based ranks of a vector's values, ties given their average rank (float64)."""
    x = x.double().flatten()
    order = torch.sort(x, stable=True).indices
    r = torch.empty_like(x)
    r[order] = torch.arange(x.numel(), dtype=torch.float64)
    _, group, counts = torch.unique(x, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, group, r)
    return (sums / counts)[group]


def _spearman(x: Tensor, y: Tensor) -> float | None:
    """Spearman correlation: Pearson of the average ranks; None when undefined."""
    return _pearson(_ranks(x), _ranks(y))


def _floats(x: Tensor) -> list:
    """A tensor as nested lists of plain floats; a non-finite value (exact patching's; the estimate refuses
    them) as None, so the dict stays valid JSON."""
    def clean(v: Any) -> Any:
        return [clean(u) for u in v] if isinstance(v, list) else (v if math.isfinite(v) else None)
    return clean(x.double().tolist())
