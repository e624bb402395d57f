"""What activation patching computes exactly: precision-targeted generated pairs and screened components.

Two ways to spend fewer exact sweeps, both deterministic and both reported in the results:

**Precision-targeted pairs** (``target`` > 0). The generated pairs of each (template, token length) group are
taken in a fixed order (a seeded permutation per group). The residual stream is patched exactly (at the
positions below when screened) for the first pairs of every group (:data:`FIRST_PAIRS` each); while the widest 95% CI of the
pooled residual-stream cells (the cells the findings read) is wider than ``target`` (in units of each pair's
gap), more pairs are added — as many as the observed width says are needed (the width shrinks as 1/√n), at
least one per group — until the target is met or every pair is used (the cap: ``--patching-pairs`` per
template). :class:`Precision` records the target, the pairs used and available, and the width reached.

**Screened components** (``screen``). The attention and MLP outputs per (layer, position) and each head's output
are first estimated for every pair by attribution patching (:func:`~logitlab.analyses.pairset.first_order`:
one forward + backward per group); the ``screen_top`` cells of each pooled map by |estimate| and a seeded random
``screen_sample`` of the others are then patched exactly on every pair (:mod:`logitlab.screen`). The other
cells keep the estimate (the patched value is corrupted + estimate) and are labelled ``estimated``. The
explicit (reference) pairs are always patched exactly everywhere. The residual stream of the generated pairs is
patched exactly at every position the pooled map shows (with a precision target: the positions the templates
share, and those the groups with a used pair pool on when some group has none; the others estimated), and
everywhere without a target.

With ``target`` 0 and no screen, every pair and every component is patched exactly, in one sweep per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from logitlab.analyses.pairset import AtPSet, PairCaches, PairSet, atp_set, pair_caches, pool_positions
from logitlab.interventions import head_entry, position_entries
from logitlab.model.backend import HOOKED_LOOPS, SWEEP, has, require
from logitlab.model.load import Model
from logitlab.model.readout import CleanCache
from logitlab.screen import Screen, select
from logitlab.stats import paired
from logitlab.sweep import SweepSettings, run_sweep
from logitlab.task import PairGroup

__all__ = ["FIRST_PAIRS", "ORDER_SEED", "Precision", "ScreenPlan", "patch_set", "ordered", "take", "resid_width",
           "screen_plan"]

#: Generated pairs per group patched before the first precision check.
FIRST_PAIRS = 2
#: Seed of the fixed order in which a group's generated pairs are added (plus the group's index).
ORDER_SEED = 4049
_POSITIONS = ("resid", "attn", "mlp")
_HOOK = {"resid": "resid_pre", "attn": "attn_out", "mlp": "mlp_out"}


@dataclass(frozen=True)
class Precision:
    """How many generated pairs the precision target took."""

    target: float  # the 95% CI half-width asked for (units of the gap); 0: every pair
    achieved: float | None  # the widest half-width over the pooled residual-stream cells (None: no used pair)
    n_pairs: int  # generated pairs patched
    n_available: int  # generated pairs there were (the cap)
    rounds: int

    @property
    def met(self) -> bool:
        return self.achieved is not None and self.achieved <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "achieved": self.achieved, "met": self.met, "n_pairs": self.n_pairs,
                "n_available": self.n_available, "rounds": self.rounds}


@dataclass(frozen=True)
class ScreenPlan:
    """The screen of one kind over the pooled map, and each group's cells to patch exactly."""

    screen: Screen
    estimate: Tensor  # (layer, width) the pooled mean normalised estimate
    masks: tuple[Tensor, ...]  # per group: (layer, T) or (layer, head) bool, the cells patched exactly


def ordered(group: PairGroup, index: int) -> PairGroup:
    """``group`` with its pairs in the fixed order precision targeting adds them."""
    n = len(group.clean_index)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(ORDER_SEED + index)).tolist()
    return take(group, order)


def take(group: PairGroup, idx: list[int]) -> PairGroup:
    """The pairs ``idx`` of ``group`` (in that order)."""
    t = torch.tensor(idx, dtype=torch.long)
    return replace(group, clean_index=tuple(group.clean_index[i] for i in idx),
                   corrupted_index=tuple(group.corrupted_index[i] for i in idx),
                   clean_tokens=group.clean_tokens[t], corrupted_tokens=group.corrupted_tokens[t],
                   correct_ids=group.correct_ids[t], incorrect_ids=group.incorrect_ids[t])


def resid_width(groups: list[PairSet]) -> float | None:
    """The widest 95% CI half-width of the pooled residual-stream cells (None without a used pair)."""
    live = [g for g in groups if g.n_used]
    if not live:
        return None
    pos = pool_positions([g.roles for g in live])
    x = torch.cat([g.normalised("resid")[:, [where[k] for _, where in pos]] for k, g in enumerate(live)], -1)
    ci = paired(x).ci
    half = (ci[..., 1] - ci[..., 0]) / 2
    half = half[torch.isfinite(half)]  # cells not patched (NaN) are not the target's
    # Rounded so that float noise across machines cannot change how many pairs are used.
    return round(float(half.max()), 6) if half.numel() else None


def _score(model: Model, cache: CleanCache, T: int, correct: Tensor, incorrect: Tensor) -> Tensor:
    final = cache.resid_final[:, T - 1]
    d, _ = model.runner.answer_metrics(final, correct, incorrect, with_loss=False)
    return d.float()


def patch_set(model: Model, label: str, template: int, tokens: tuple[str, ...], roles: tuple[str, ...],
              clean_tokens: Tensor, corrupted_tokens: Tensor, correct: Tensor, incorrect: Tensor,
              settings: SweepSettings, min_gap: float, kinds: tuple[str, ...] = ("resid", "attn", "mlp", "heads"),
              masks: dict[str, Tensor] | None = None, estimate: AtPSet | None = None,
              caches: PairCaches | None = None) -> PairSet:
    """Patch the pairs (one token length) exactly: one sweep (or, on the fallback, hooked loops).

    Only ``kinds`` are swept, and of a kind in ``masks`` only its True cells ((layer, T) or (layer, head)). A
    cell not swept holds corrupted + ``estimate``'s change when an estimate is given, else NaN. ``caches``: the
    pairs' clean and corrupted runs (:func:`~logitlab.analyses.pairset.pair_caches`) when the caller has them.
    """
    r, spec = model.runner, model.spec
    dev = r.device
    clean_t, corr_t = clean_tokens.to(dev), corrupted_tokens.to(dev)
    correct, incorrect = correct.to(dev), incorrect.to(dev)
    n_pairs, T = clean_t.shape
    clean, corr = caches if caches is not None else pair_caches(r, clean_t, corr_t)
    clean_ld = _score(model, clean, T, correct, incorrect).cpu()
    corr_ld = _score(model, corr, T, correct, incorrect).cpu()
    common = dict(label=label, template=template, tokens=tokens, roles=roles, clean=clean_ld, corrupted=corr_ld,
                  min_gap=min_gap)
    masks = masks or {}
    if not has(model, SWEEP):
        require(model, HOOKED_LOOPS, "activation patching")
        from logitlab.reference import loop_patching
        args = (model, clean_t, corr_t, correct, incorrect)
        loops = [loop_patching(*args, what, progress=settings.progress, per_pair=True)
                 for what in ("resid_pre", "attn_out", "mlp_out", "z")]
        return PairSet(**common, resid=loops[0], attn=loops[1], mlp=loops[2], heads=loops[3])
    H, L = spec.n_heads, spec.n_layers
    fp = torch.full((n_pairs,), T - 1, device=dev)  # every pair ends at T-1
    # Patching position p leaves positions < p as in the corrupted run: those items skip them, reading their
    # keys and values from the corrupted run.
    corr_kv = [r.keys_values(layer, corr.resid_pre[layer]) for layer in range(L)]
    entries = []
    for layer in range(L):
        after_attn = r.after_attention(layer, corr.resid_pre[layer], corr.attn_out[layer], corr.mlp_out[layer])
        post = corr.resid_mid[layer] + corr.mlp_out[layer]
        for what, stage, base, delta in (
                ("resid", "pre", corr.resid_pre[layer], clean.resid_pre[layer] - corr.resid_pre[layer]),
                ("attn", r.attn_entry_stage, after_attn, clean.attn_out[layer] - corr.attn_out[layer]),
                ("mlp", "post", post, clean.mlp_out[layer] - corr.mlp_out[layer])):
            if what not in kinds:
                continue
            # A position where no pair's clean and corrupted activations differ (those before the subject, such
            # as BOS) cannot change anything: its patched score is the corrupted run's, and it is not swept.
            same = (delta == 0).flatten(2).all(-1).all(0).tolist()  # (T,)
            want = masks[what][layer].tolist() if what in masks else [True] * T
            entries += [e for e, skip, w in zip(position_entries((_HOOK[what], layer), r, layer, stage, base, delta,
                                                                 corr_kv, fp, correct, incorrect), same, want)
                        if w and not skip]
        heads = masks["heads"][layer].nonzero().flatten() if "heads" in masks else torch.arange(H)
        if "heads" in kinds and len(heads):
            heads = heads.to(dev)
            # Each head's z from the clean run, per pair, into the corrupted run.
            clean_z = clean.z[layer][:, :, heads].permute(2, 0, 1, 3)  # (heads, pair, T, dh)
            entries.append(head_entry(("z", layer), r, corr, layer, heads, clean_z, fp, correct, incorrect))
    out = run_sweep(r, entries, False, settings)  # all patches of all pairs in a few growing batches
    if settings.progress is not None and not masks and kinds == ("resid", "attn", "mlp", "heads"):
        skipped = n_pairs * (L * (3 * T + H)) - sum(e.n for e in entries)  # the skipped items count as done
        if skipped:
            settings.progress(skipped)
    unchanged = corr_ld.to(dev)
    nan = torch.full((n_pairs,), math.nan, device=dev)

    def fallback(what: str) -> Tensor:  # (L, width, pair): corrupted + estimate, or NaN
        if estimate is None:
            return torch.full((L, T if what != "heads" else H, n_pairs), math.nan)
        return getattr(estimate, what).float() + corr_ld

    def per_pos(what: str) -> Tensor:  # (L, T, pair)
        if what not in kinds:
            return fallback(what)
        mask = masks.get(what)
        rows = []
        for l in range(L):
            row = []
            for p in range(T):
                key = (_HOOK[what], l, p)
                if key in out:  # swept
                    row.append(out[key].logit_diff)
                elif mask is not None and not bool(mask[l, p]):  # masked out: _fill puts the fallback here
                    row.append(nan)
                else:  # skipped: no pair's clean and corrupted activations differ, the corrupted score stands
                    row.append(unchanged)
            rows.append(torch.stack(row))
        return _fill(torch.stack(rows).cpu(), mask, fallback(what))

    def per_head() -> Tensor:  # (L, H, pair)
        if "heads" not in kinds:
            return fallback("heads")
        rows = []
        for l in range(L):
            row = torch.full((H, n_pairs), math.nan)
            if ("z", l) in out:
                sel = masks["heads"][l].nonzero().flatten() if "heads" in masks else torch.arange(H)
                row[sel] = out[("z", l)].logit_diff.view(len(sel), n_pairs).cpu()
            rows.append(row)
        return _fill(torch.stack(rows), masks.get("heads"), fallback("heads"))

    return PairSet(**common, resid=per_pos("resid"), attn=per_pos("attn"), mlp=per_pos("mlp"), heads=per_head())


def _fill(swept: Tensor, mask: Tensor | None, other: Tensor) -> Tensor:
    """``swept`` where ``mask`` (layer, width) is True (everywhere without a mask), else ``other``."""
    if mask is None:
        return swept
    return torch.where(mask.cpu()[..., None], swept.float(), other.float())


def screen_plan(what: str, estimates: list[AtPSet], top: int, sample: int) -> ScreenPlan:
    """Which cells of ``what`` (attn, mlp or heads) to patch exactly: the pooled map's top cells by |estimate|
    and a seeded sample of the others (:func:`logitlab.screen.select`), mapped back to each group."""
    live = [k for k, s in enumerate(estimates) if s.n_used]
    keep = live or list(range(len(estimates)))  # no used pair anywhere: every group, and the estimate is 0
    L, H = estimates[0].heads.shape[:2]
    if what == "heads":  # heads pool over every pair
        parts = [estimates[k].normalised("heads") for k in keep]
        width = H
    else:
        pos = pool_positions([estimates[k].roles for k in keep])
        parts = [estimates[k].normalised(what)[:, [where[i] for _, where in pos]] for i, k in enumerate(keep)]
        width = len(pos)
    n = sum(p.shape[-1] for p in parts)
    est = torch.cat(parts, -1).mean(-1) if n else torch.zeros(L, width)  # (layer, width)
    screen = select(est.flatten(), top, sample, estimator="atp")
    flat = screen.exact.view(est.shape)
    if what == "heads":
        return ScreenPlan(screen, est, tuple(flat.clone() for _ in estimates))
    masks = []
    for k, s in enumerate(estimates):
        m = torch.zeros(L, s.resid.shape[1], dtype=torch.bool)
        if k in keep:
            i = keep.index(k)
            for j, (_, where) in enumerate(pos):
                m[:, where[i]] |= flat[:, j]
        masks.append(m)
    return ScreenPlan(screen, est, tuple(masks))


def estimate_group(model: Model, g: PairGroup, tokens: tuple[str, ...], min_gap: float,
                   caches: PairCaches | None = None) -> AtPSet:
    """First-order estimates of every patch of ``g``'s pairs (an :class:`AtPSet`); ``caches``: their cached runs."""
    return atp_set(model.runner, g.template_text, g.template, tokens, g.roles, g.clean_tokens, g.corrupted_tokens,
                   g.correct_ids, g.incorrect_ids, min_gap, caches)
