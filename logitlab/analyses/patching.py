"""Activation patching over many clean/corrupted pairs, per pair normalised, with paired uncertainty.

Method: run the corrupted prompt, put one activation of the clean prompt in its place and score the clean
prompt's answers (logit difference correct − mean incorrect at the final position). Patched activations:
``resid_pre`` per (layer, position); each layer's attention output (after any post-attention norm) and MLP
output per (layer, position); each head's ``hook_z`` output at every position. Each pair's value is
normalised by *its own* gap, (patched − corrupted) / (clean − corrupted): 0 = the patch restores nothing, 1 =
it restores the clean behaviour. The edits are built in :mod:`logitlab.interventions`; one sweep per set of
pairs of one token length runs every patch of every pair (results keyed ``(what, layer[, position])``).

Pairs come from two places:

* **reference pairs**: the task file's explicit ``patching:`` list (the built-in ``pronouns`` task: Mary → John);
* **generated pairs** (:func:`logitlab.task.generated_pairs`): within each template, every subject against every
  subject of another class whose prompt has the same token length, at most
  :data:`~logitlab.task.MAX_PAIRS_PER_TEMPLATE` per template; one group per (template, token length).

Gap threshold: a pair whose |clean − corrupted| is below :data:`MIN_GAP` (1 logit) is left out of every
normalised number and counted (``n_excluded``): dividing by a gap of 0.05 multiplies the noise by 20.
Summaries over the used pairs (:func:`logitlab.stats.paired`): mean, standard error and a seeded 95% bootstrap CI.

Pooling across templates: a group's positions are labelled by role, the subject's tokens as ``{name}`` and the
other tokens as themselves (``<bos>``, `` is``, …). When every group has the same role sequence, the groups pool
position by position. Otherwise they pool on the positions all groups share at both ends: from the start while
the roles agree (``<bos>``, ``{name}``, …) and from the end while they agree (final, final − 1, …; the final
position, where the answer is read, is always kept, labelled ``[final]`` when its tokens differ). Heads pool
over every pair.

Invariants (tested): patching the whole residual stream at a layer gives 1 for every pair, patching nothing 0;
every pair's entry equals one hooked TransformerLens forward per patch; pairs below the gap are excluded and
counted.

Example:
    >>> res = activation_patching(model, tokenize_task(load_task("pronouns-large"), model.tokenizer))
    >>> res.pooled.resid.ci[:, 1]             # (layer, 2): CI at the subject position
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses.pairset import (
    MIN_GAP, WHATS, AtPSet, PairCaches, PairSet, PatchingSummary, join_caches, pair_caches, pool_positions, summarise,
)
from logitlab.analyses.patching_plan import (
    FIRST_PAIRS, Precision, estimate_group, ordered, patch_set, resid_width, screen_plan, take,
)
from logitlab.errors import LogitlabError
from logitlab.model.backend import GRAD, SWEEP, has
from logitlab.model.load import Model
from logitlab.registry import setting
from logitlab.results.patching import PatchingSections
from logitlab.screen import Screen, ScreenSettings
from logitlab.stats import Paired
from logitlab.sweep import SweepSettings
from logitlab.task import MAX_PAIRS_PER_TEMPLATE, PairGroup, TokenizedTask, generated_pairs

__all__ = ["PatchingSettings", "MIN_GAP", "PairSet", "PatchingSummary", "PatchingResult", "activation_patching", "patching_items",
           "pool_positions"]


@dataclass(frozen=True)
class PatchingSettings:
    """Which clean/corrupted pairs activation patching (and attribution patching) runs on."""

    patching_pairs: int = setting(MAX_PAIRS_PER_TEMPLATE,
                                  "patching pairs generated per template (0: the task's explicit pairs only)",
                                  flag="--patching-pairs", commands=("run", "circuit"),
                                  help="Patching pairs generated per template (each costs as much as the task's "
                                       "own pair; 0: the task's explicit pairs only).")

    patching_target: float = setting(0.1, "95% CI half-width (in units of each pair's gap) that generated pairs are "
                                          "added until the pooled residual-stream cells reach (0: use every pair)",
                                     flag="--patching-target", commands=("run", "circuit"),
                                     help="Add generated pairs (in a fixed order) until every pooled residual-stream "
                                          "cell's 95% CI half-width is below this, in units of the gap, or "
                                          "--patching-pairs per template are used (0: use them all).")

    def __post_init__(self) -> None:
        if self.patching_pairs < 0:
            raise LogitlabError("patching_pairs must be ≥ 0", "0 patches the task's explicit pairs only")
        if not (self.patching_target >= 0 and math.isfinite(self.patching_target)):
            raise LogitlabError("patching_target must be ≥ 0", "0 uses every generated pair")


@dataclass(frozen=True)
class PatchingResult:
    """Raw per-pair sets and their summaries.

    ``reference``: the task's explicit pairs (None without); ``groups``: the generated pairs, one set per
    (template, token length); ``per_template`` summarises each group with a used pair, ``pooled`` all groups
    (None without groups; no numbers without a used pair); ``reference_summary`` the reference set (None
    without reference pairs; no numbers if none of them is used).
    """

    reference: PairSet | None
    groups: tuple[PairSet, ...]
    reference_summary: PatchingSummary | None
    per_template: tuple[PatchingSummary, ...]
    pooled: PatchingSummary | None
    # How the generated pairs were chosen and screened (None: every pair, every cell exact):
    precision: Precision | None = None
    screens: dict[str, Screen] | None = None  # attn, mlp, heads: over the pooled maps, measured
    pair_groups: tuple[PairGroup, ...] | None = None  # the generated pairs patched, aligned with ``groups``
    estimates: tuple[AtPSet, ...] | None = None  # their first-order estimates when screened (aligned too)

    # The reference pairs as one mean (the view of earlier versions; formation and benchmarks read it):
    # raw patched logit differences averaged over the pairs, normalised by the mean gap.

    def _ref(self) -> PairSet:
        if self.reference is None:
            raise LogitlabError("this task has no explicit patching pairs", "read .pooled and .per_template")
        return self.reference

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._ref().tokens

    @property
    def clean_logit_diff(self) -> float:
        return float(self._ref().clean.mean())

    @property
    def corrupted_logit_diff(self) -> float:
        return float(self._ref().corrupted.mean())

    @property
    def resid(self) -> Float[Tensor, "layer pos"]:
        return self._ref().resid.mean(-1)

    @property
    def attn(self) -> Float[Tensor, "layer pos"]:
        return self._ref().attn.mean(-1)

    @property
    def mlp(self) -> Float[Tensor, "layer pos"]:
        return self._ref().mlp.mean(-1)

    @property
    def heads(self) -> Float[Tensor, "layer head"]:
        return self._ref().heads.mean(-1)

    def normalise(self, x: Tensor) -> Tensor:
        """``(x − mean corrupted) / (mean clean − mean corrupted)`` over the reference pairs."""
        return (x - self.corrupted_logit_diff) / (self.clean_logit_diff - self.corrupted_logit_diff)

    @property
    def main(self) -> PatchingSummary | None:
        """What ``values`` holds in the results: the reference pairs if one of them is used, else the pooled
        groups if one of them is, else whichever set exists (then without numbers); None without pairs."""
        ref, pooled = self.reference_summary, self.pooled
        if ref is not None and (ref.n_pairs or pooled is None or not pooled.n_pairs):
            return ref
        return pooled

    def to_dict(self) -> PatchingSections:
        """The four patching sections of ``results.json`` (empty without pairs)."""
        main = self.main
        if main is None:
            return {}
        source = "reference" if main is self.reference_summary else "pooled"
        out = {}
        for what, key in zip(WHATS, ("resid_patching", "attn_patching", "mlp_patching", "head_patching")):
            d = main.to_dict(what)
            pooled = self.pooled.to_dict(what) if self.pooled is not None and source == "reference" else None
            per = [{"template": t.label, **t.to_dict(what)} for t in self.per_template]
            if pooled is not None:
                pooled = {"template": None, **pooled}
            screen = (self.screens or {}).get(what)
            out[key] = {**d, "pairs": source, "pooled": pooled, "per_template": per,
                        "screen": None if screen is None else screen.to_dict()}
            if what == "resid":
                out[key]["precision"] = None if self.precision is None else self.precision.to_dict()
        return cast(PatchingSections, out)


def patching_items(model: Model, tt: TokenizedTask, generated: bool = True,
                   max_pairs: int = MAX_PAIRS_PER_TEMPLATE) -> int:
    """How many sweep items :func:`activation_patching` runs (for a progress bar)."""
    spec = model.spec
    sets = [tt.clean_tokens] if tt.clean_tokens is not None else []
    if generated and max_pairs > 0:
        sets += [g.clean_tokens for g in generated_pairs(tt, max_pairs)]
    return sum(spec.n_layers * n * (3 * T + spec.n_heads) for n, T in (s.shape for s in sets))


def activation_patching(model: Model, task: TokenizedTask, settings: SweepSettings | None = None,
                        generated: bool = True, min_gap: float = MIN_GAP,
                        max_pairs: int = MAX_PAIRS_PER_TEMPLATE, target: float = 0.0,
                        screen: ScreenSettings | None = None) -> PatchingResult:
    """Patch clean activations into the corrupted run for the reference pairs and, if ``generated``, the
    pairs built from the task's templates (at most ``max_pairs`` per template), one (layer, position) or
    (layer, head) at a time. Each generated pair costs as much as a reference pair.

    ``target`` > 0 adds generated pairs only until the pooled residual-stream cells' 95% CIs are that narrow;
    ``screen`` (unless its ``exact``) patches the generated pairs' attention, MLP and head cells exactly only where
    attribution patching flags them, plus a seeded sample (:mod:`logitlab.analyses.patching_plan`). The reference
    pairs are always patched exactly everywhere. Defaults: every pair, every cell exact.

    Pairs with |clean − corrupted| < ``min_gap`` are excluded from the normalised numbers and counted.
    """
    settings = settings or SweepSettings()
    ref = None
    if task.clean_tokens is not None:
        assert task.corrupted_tokens is not None and task.pair_correct_ids is not None
        assert task.pair_incorrect_ids is not None
        tokens = tuple(model.to_str_tokens(task.clean_tokens[0]))
        ref = patch_set(model, "reference", -1, tokens, tokens, task.clean_tokens, task.corrupted_tokens,
                        task.pair_correct_ids, task.pair_incorrect_ids, settings, min_gap)
    raw = generated_pairs(task, max_pairs) if generated and max_pairs > 0 else ()
    screening = (screen is not None and not screen.exact and has(model, GRAD) and has(model, SWEEP)
                 and bool(raw))
    precision, screens, estimates = None, None, None
    resid_masks = None
    if screening:  # the residual stream of generated pairs: exact at the positions the templates pool on
        L, shared = model.spec.n_layers, pool_positions([g.roles for g in raw])
        resid_masks = [torch.zeros(L, len(g.roles), dtype=torch.bool) for g in raw]
        for _, where in shared:
            for m, p in zip(resid_masks, where):
                m[:, p] = True
    # Each group's clean and corrupted runs are cached once: by the precision rounds (each pair in the round that
    # adds it), else here when both the estimate and exact patching need them; None: patch_set runs its own.
    caches: list[PairCaches] | list[None]
    if target > 0 and raw and has(model, SWEEP):
        use, resid, precision, caches, resid_masks = _targeted(model, raw, target, settings, min_gap, resid_masks)
    else:
        use, resid = list(raw), None
        caches = ([pair_caches(model.runner, g.clean_tokens, g.corrupted_tokens) for g in use] if screening
                  else [None] * len(use))
    strs = [tuple(model.to_str_tokens(g.clean_tokens[0])) for g in use]
    kinds = ("attn", "mlp", "heads") if resid is not None else ("resid", "attn", "mlp", "heads")
    if resid is None:
        resid_masks = None  # without a target the residual stream is patched in the final sweep, everywhere
    if screening:
        assert screen is not None
        est = [estimate_group(model, g, t, min_gap, c) for g, t, c in zip(use, strs, caches)]
        plans = {what: screen_plan(what, est, screen.screen_top, screen.screen_sample) for what in ("attn", "mlp", "heads")}
        groups = [patch_set(model, g.template_text, g.template, t, g.roles, g.clean_tokens, g.corrupted_tokens,
                            g.correct_ids, g.incorrect_ids, settings, min_gap, kinds,
                            {what: plan.masks[k] for what, plan in plans.items()}, est[k], caches[k])
                  for k, (g, t) in enumerate(zip(use, strs))]
        groups = [replace(g, exact_cells={what: plan.masks[k] for what, plan in plans.items()})
                  for k, g in enumerate(groups)]
        estimates = tuple(est)
    else:
        groups = [patch_set(model, g.template_text, g.template, t, g.roles, g.clean_tokens, g.corrupted_tokens,
                            g.correct_ids, g.incorrect_ids, settings, min_gap, kinds, caches=c)
                  for g, t, c in zip(use, strs, caches)]
    del caches  # the activations of every pair: free them before summarising
    if resid is not None:  # the residual stream, patched round by round on the same pairs in the same order
        groups = [replace(g, resid=r) for g, r in zip(groups, resid)]
        if resid_masks is not None and estimates is not None:  # positions not pooled: the estimate
            groups = [replace(g, resid=torch.where(m[..., None], g.resid, e.resid.float() + g.corrupted),
                              exact_cells={**(g.exact_cells or {}), "resid": m})
                      for g, m, e in zip(groups, resid_masks, estimates)]
    ref_summary = summarise("reference", ref.tokens, [ref], None) if ref is not None else None
    live = [g for g in groups if g.n_used]
    per_template = tuple(summarise(g.label, g.roles, [g], None) for g in live)
    pooled = None
    if groups:
        pos = pool_positions([g.roles for g in live or groups])
        pooled = summarise("pooled", tuple(lab for lab, _ in pos), live or list(groups), [p for _, p in pos])
        # Pairs of groups without a used pair count as excluded in the pooled set.
        dead = sum(g.n for g in groups if not g.n_used) if live else 0
        pooled = PatchingSummary(**{**pooled.__dict__, "n_excluded": pooled.n_excluded + dead})
        if screening and pooled.n_pairs:
            screens = {}
            for what, plan in plans.items():
                exact_mean: Paired | None = getattr(pooled, what)
                assert exact_mean is not None
                screens[what] = plan.screen.measured(plan.estimate.flatten(), exact_mean.mean.flatten())
    return PatchingResult(ref, tuple(groups), ref_summary, per_template, pooled, precision, screens, tuple(use),
                          estimates)


def _targeted(model: Model, raw: tuple[PairGroup, ...], target: float, settings: SweepSettings,
              min_gap: float, masks: list[Tensor] | None = None,
              ) -> tuple[list[PairGroup], list[Tensor], Precision, list[PairCaches], list[Tensor] | None]:
    """Patch the residual stream on more and more generated pairs (each group in its fixed order) until the
    pooled cells' widest 95% CI half-width is at most ``target`` or every pair is used (with ``masks``: only
    each group's True cells, NaN elsewhere).

    ``masks`` hold the positions every group shares; the pooled map pools only the groups with a used pair,
    which can share more positions when a group has none. After each round those further positions are patched
    too (on every pair taken so far, and on later ones), so every pooled cell is exact.

    Returns the pairs used per group, their residual-stream patching (layer, pos, pair), the precision, the
    used pairs' clean and corrupted runs per group (each pair cached once, in the round that added it), and the
    cells patched exactly per group (None without ``masks``).
    """
    masks = None if masks is None else [m.clone() for m in masks]
    ordered_groups = [ordered(g, k) for k, g in enumerate(raw)]
    sizes = [len(g.clean_index) for g in ordered_groups]
    taken, parts = [0] * len(sizes), [[] for _ in sizes]  # type: list[int], list[list[PairSet]]
    cached: list[list[PairCaches]] = [[] for _ in sizes]
    want, rounds, width = FIRST_PAIRS, 0, None
    while True:
        for k, g in enumerate(ordered_groups):
            upto = min(want, sizes[k])
            if upto > taken[k]:
                sub = take(g, list(range(taken[k], upto)))
                cached[k].append(pair_caches(model.runner, sub.clean_tokens, sub.corrupted_tokens))
                # A round's set is read for its residual stream only: its position labels are the roles (no
                # token strings decoded).
                parts[k].append(patch_set(model, g.template_text, g.template, g.roles, g.roles, sub.clean_tokens,
                                          sub.corrupted_tokens, sub.correct_ids, sub.incorrect_ids, settings,
                                          min_gap, ("resid",), None if masks is None else {"resid": masks[k]},
                                          caches=cached[k][-1]))
                taken[k] = upto
        rounds += 1
        sets = [_joined(p) for p in parts]
        # The pooled map leaves out groups without a used pair, and the others may then pool on positions not
        # every template shares, which the masks left out: patch those exactly too.
        for k, missing in (_unpatched_pooled(sets, masks) if masks is not None else {}).items():
            g, caches_k = ordered_groups[k], join_caches(cached[k])
            cached[k] = [caches_k]
            sub = take(g, list(range(taken[k])))  # every pair taken so far
            extra = patch_set(model, g.template_text, g.template, g.roles, g.roles, sub.clean_tokens,
                              sub.corrupted_tokens, sub.correct_ids, sub.incorrect_ids, settings, min_gap,
                              ("resid",), {"resid": missing}, caches=caches_k)
            sets[k] = replace(sets[k], resid=torch.where(missing[..., None], extra.resid, sets[k].resid))
            parts[k] = [sets[k]]
            masks[k] |= missing  # and on the pairs later rounds add
        width = resid_width(sets)
        if (width is not None and width <= target) or all(t >= n for t, n in zip(taken, sizes)):
            break
        # The half-width shrinks as 1/√n: ask for as many pairs as this width says are needed, at most twice as
        # many per round (a width from few pairs is itself uncertain).
        grow = 2.0 if width is None or width != width else min(2.0, (width / target) ** 2)
        want = max(want + 1, math.ceil(want * grow))
    use = [take(g, list(range(t))) for g, t in zip(ordered_groups, taken)]
    precision = Precision(target, width, sum(taken), sum(sizes), rounds)
    return (use, [s.resid for s in (_joined(p) for p in parts)], precision, [join_caches(c) for c in cached],
            masks)


def _unpatched_pooled(sets: list[PairSet], masks: list[Tensor]) -> dict[int, Tensor]:
    """Per group with a used pair, the (layer, pos) residual-stream cells the pooled map reads (the positions the
    groups with a used pair pool on) that its mask has not patched; groups without such cells are left out."""
    live = [k for k, s in enumerate(sets) if s.n_used]
    pooled = pool_positions([sets[k].roles for k in live]) if live else []
    out = {}
    for i, k in enumerate(live):
        missing = torch.zeros_like(masks[k])
        for _, where in pooled:
            missing[:, where[i]] = True
        missing &= ~masks[k]
        if bool(missing.any()):
            out[k] = missing
    return out


def _joined(parts: list[PairSet]) -> PairSet:
    """Pair sets of one group (disjoint pairs, in order) as one."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts], -1)  # noqa: E731
    return replace(parts[0], clean=cat("clean"), corrupted=cat("corrupted"), resid=cat("resid"), attn=cat("attn"),
                   mlp=cat("mlp"), heads=cat("heads"))
