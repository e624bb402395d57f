"""What compare.html reads from each run, and the findings across models computed from those numbers.

The rules are those of the single-run findings (:mod:`logitlab.report.findings`), applied across models:

* a model "prefers" an answer only when its mean logit difference's 95% CI excludes 0; one model's is "the
  largest" only when its CI lies above every other model's (the runs are separate models, so no paired test);
* a head is "the" head of a model only when the run's paired test separates it from its runner-up
  (``head_attribution_detail.top`` / ``head_ablation.zero.top_drop``: difference CI above 0, no ties);
* shares are of the heads' summed |direct attribution| (means); "more than half" is said only when the share
  stays above one half with the head's value at its CI's bound nearest 0;
* patching "restores more than half" only where the CI's lower bound is above one half;
* early / middle / late are thirds of the relative depth layer / n_layers.

Nothing here recomputes a model; everything comes from the results dicts.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._util import finite, fmt, head_name, is_matrix
from .findings import Finding

__all__ = ["Run", "Head", "Component", "Point", "CIRCUIT_KEYS", "depth", "region", "layer_components",
           "top_dla_heads", "top_ablation_heads", "series_points", "side_by_side", "task_groups",
           "compare_findings", "LOGIT_DIFF_THRESHOLD"]

logger = logging.getLogger(__name__)

#: Sections of later analyses, drawn only when a run's results hold them.
CIRCUIT_KEYS = ("attribution_patching", "path_patching", "circuit")
LOGIT_DIFF_THRESHOLD = 1.0  # as the formation report: p(correct)/p(incorrect) > e
HALF = 0.5
_COMPONENT = re.compile(r"^(\d+)_(attn|mlp)_out$")


@dataclass(frozen=True)
class Run:
    """One run of the comparison."""

    label: str
    folder: str
    results: dict[str, Any]
    kind: str
    """battery or formation"""
    model: str
    task: str
    step: int | None = None
    """the training step of a grid cell on a checkpoint"""


@dataclass(frozen=True)
class Head:
    layer: int
    head: int
    n_layers: int
    value: float
    ci: tuple[float, float]
    share: float | None = None
    """|value| over the heads' summed |direct attribution| (DLA only)"""
    share_low: float | None = None
    """the same with |value| at its CI's bound nearest 0"""


@dataclass(frozen=True)
class Component:
    layer: int
    n_layers: int
    part: str
    value: float
    ci: tuple[float, float]

    @property
    def depth(self) -> float:
        return depth(self.layer, self.n_layers)


@dataclass(frozen=True)
class Point:
    step: int
    value: float
    ci: tuple[float, float]


def depth(layer: int, n_layers: int) -> float:
    """Relative depth layer / n_layers."""
    return layer / max(1, n_layers)


def region(d: float) -> str:
    """early, middle or late: thirds of the relative depth."""
    return "early" if d < 1 / 3 else ("middle" if d < 2 / 3 else "late")


def _pair(x: Any, default: float) -> tuple[float, float]:
    if isinstance(x, (list, tuple)) and len(x) == 2 and finite(x[0]) and finite(x[1]):
        return float(x[0]), float(x[1])
    return default, default


def _n_layers(results: dict[str, Any]) -> int:
    return int((results.get("model") or {}).get("n_layers") or len(results.get("head_attribution") or []) or 1)


def layer_components(results: dict[str, Any]) -> list[Component]:
    """The ``L_attn_out`` / ``L_mlp_out`` entries of ``layer_attribution`` with their CIs."""
    la = results.get("layer_attribution") or {}
    labels, values, cis = la.get("labels") or [], la.get("values") or [], la.get("ci") or []
    n = _n_layers(results)
    out = []
    for j, lab in enumerate(labels):
        m = _COMPONENT.match(str(lab))
        if m and j < len(values) and finite(values[j]):
            v = float(values[j])
            out.append(Component(int(m.group(1)), n, m.group(2), v, _pair(cis[j] if j < len(cis) else None, v)))
    return out


def _near_zero(v: float, ci: tuple[float, float]) -> float:
    """|v| at the CI's bound nearest 0 (0 when the CI includes 0)."""
    lo, hi = ci
    return 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))


def top_dla_heads(results: dict[str, Any], k: int) -> list[Head]:
    """The k heads with the largest |mean direct attribution|, with CIs and shares."""
    z = results.get("head_attribution")
    if not is_matrix(z):
        return []
    cis = (results.get("head_attribution_detail") or {}).get("ci") or []
    flat = [(float(v), l, h) for l, row in enumerate(z) for h, v in enumerate(row) if finite(v)]
    total = sum(abs(v) for v, _, _ in flat)
    n = _n_layers(results)
    out = []
    for v, l, h in sorted(flat, key=lambda t: -abs(t[0]))[:k]:
        ci = _pair(cis[l][h] if l < len(cis) and h < len(cis[l]) else None, v)
        near = _near_zero(v, ci)
        rest = total - abs(v)
        out.append(Head(l, h, n, v, ci, abs(v) / total if total > 0 else None,
                        near / (rest + near) if rest + near > 0 else None))
    return out


def top_ablation_heads(results: dict[str, Any], k: int) -> list[Head]:
    """The k heads whose zero-ablation lowers the mean logit difference most, with the paired CIs."""
    zero = (results.get("head_ablation") or {}).get("zero") or {}
    z, cis = zero.get("delta_logit_diff"), zero.get("delta_logit_diff_ci") or []
    if not is_matrix(z):
        return []
    flat = [(float(v), l, h) for l, row in enumerate(z) for h, v in enumerate(row) if finite(v)]
    n = _n_layers(results)
    return [Head(l, h, n, v, _pair(cis[l][h] if l < len(cis) and h < len(cis[l]) else None, v))
            for v, l, h in sorted(flat)[:k]]


def task_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Battery runs by task name, in order of appearance."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if r.kind == "battery":
            groups.setdefault(r.task, []).append(r)
    return groups


def side_by_side(group: Sequence[Run]) -> list[Run]:
    """The runs a task section shows: every run not on a checkpoint, and each checkpoint series' last step."""
    last: dict[str, Run] = {}
    for r in group:
        if r.step is not None and (r.model not in last or r.step > (last[r.model].step or 0)):
            last[r.model] = r
    return [r for r in group if r.step is None or last.get(r.model) is r]


def series_points(runs: Sequence[Run]) -> dict[str, list[Point]]:
    """Logit difference against step: formation runs (CI ± 1.96 stderr) and grid checkpoint series (bootstrap CI)."""
    series: dict[str, list[Point]] = {}
    for r in runs:
        if r.kind == "formation":
            pts = []
            for c in r.results.get("checkpoints") or []:
                m, se = float(c["logit_diff_mean"]), float(c.get("logit_diff_stderr") or 0.0)
                pts.append(Point(int(c["step"]), m, (m - 1.96 * se, m + 1.96 * se)))
            series[r.label] = sorted(pts, key=lambda p: p.step)
        elif r.step is not None:
            ld = r.results["logit_diff"]
            series.setdefault(f"{r.model} · {r.task}", []).append(
                Point(int(r.step), float(ld["mean"]), _pair(ld.get("ci"), float(ld["mean"]))))
    return {k: sorted(v, key=lambda p: p.step) for k, v in series.items() if v}


# ---------------------------------------------------------------------------------------------------------
# Findings


def _ci_text(ci: tuple[float, float]) -> str:
    return f"[{fmt(ci[0], True)}, {fmt(ci[1], True)}]"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _models_word(n: int) -> str:
    return "the model" if n == 1 else ("both models" if n == 2 else f"all {n} models")


def _logit_diff(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    parts, best = [], None
    for r in runs:
        ld = r.results["logit_diff"]
        m = float(ld["mean"])
        ci = _pair(ld.get("ci"), m)
        pref = ("prefers the correct answer" if ci[0] > 0 else
                "prefers the incorrect answer" if ci[1] < 0 else "shows no clear preference")
        parts.append(f"{r.label} {fmt(m, True)} {_ci_text(ci)} ({pref})")
        if best is None or m > best[1]:
            best = (r, m, ci)
    text = f"On {task}, mean logit difference (95% CI): {_join(parts)}"
    if len(runs) >= 2 and best is not None:
        overlap = [r.label for r in runs if r is not best[0]
                   and _pair(r.results["logit_diff"].get("ci"), float(r.results["logit_diff"]["mean"]))[1] >= best[2][0]]
        if not overlap:
            text += f"; {best[0].label}'s is the largest: its CI lies above every other model's"
        else:
            text += (f"; the highest mean, {best[0].label}'s, has a CI overlapping {_join(overlap)}'s, so no model's "
                     "is clearly the largest")
    return Finding(text + ".", f"t{i}_logit_diff")


def _separated(sep: Any, head: Head | None) -> bool:
    """Whether a run's paired test separates ``head`` from its runner-up."""
    if not isinstance(sep, dict) or head is None or (sep.get("layer"), sep.get("head")) != (head.layer, head.head):
        return False
    d = _pair(sep.get("difference_ci"), math.nan)
    return finite(d[0]) and d[0] > 0 and not sep.get("tied")


def _top_heads(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    rows = []
    for r in runs:
        heads = top_dla_heads(r.results, 1)
        if not heads:
            return None
        h = heads[0]
        rows.append((r, h, _separated((r.results.get("head_attribution_detail") or {}).get("top"), h)))
    pct = " / ".join(f"{100 * h.share:.0f}%" for _, h, _ in rows if h.share is not None)
    where = _join([f"{head_name(h.layer, h.head)} in {r.label}" for r, h, _ in rows])
    if all(s for _, _, s in rows):
        regions = {region(depth(h.layer, h.n_layers)) for _, h, _ in rows}
        kind = f"one {regions.pop()} head" if len(regions) == 1 else "one head"
        text = (f"On {task}, {_models_word(len(rows))} {'routes' if len(rows) == 1 else 'route'} the direct effect "
                f"through {kind} separated from its runner-up (paired 95% CI of the difference above 0): {where}, "
                f"carrying {pct} of the heads' summed |direct attribution|")
        if all(h.share_low is not None and h.share_low > HALF for _, h, _ in rows):
            text += ("; " + ("it carries" if len(rows) == 1 else "each carries")
                     + " more than half of it even at its CI's bound nearest 0")
        return Finding(text + ".", f"t{i}_heads_dla")
    parts = []
    for r, h, s in rows:
        share = f"{100 * h.share:.0f}% of the heads' summed |direct attribution|" if h.share is not None else ""
        parts.append(f"{head_name(h.layer, h.head)} in {r.label} ({share}; "
                     + ("separated from its runner-up)" if s else "not separated from its runner-up)"))
    return Finding(f"On {task}, the head with the largest |direct effect| is {_join(parts)}: not every model has "
                   "a single leading head.", f"t{i}_heads_dla")


def _ablation(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    parts, same = [], []
    for r in runs:
        heads = top_ablation_heads(r.results, 1)
        if not heads:
            return None
        h = heads[0]
        top_drop = (((r.results.get("head_ablation") or {}).get("zero") or {}).get("top_drop"))
        name = head_name(h.layer, h.head)
        if h.ci[1] >= 0:
            parts.append(f"in {r.label} no head's zero-ablation lowers the logit difference with a CI below 0 "
                         f"(largest drop {name}, {fmt(h.value, True)} {_ci_text(h.ci)})")
            continue
        sep = _separated(top_drop, h)
        parts.append(f"{name} in {r.label} ({fmt(h.value, True)} {_ci_text(h.ci)}; "
                     + ("separated from the runner-up)" if sep else "not separated from the runner-up)"))
        dla = top_dla_heads(r.results, 1)
        if sep and dla and (dla[0].layer, dla[0].head) == (h.layer, h.head) and \
                _separated((r.results.get("head_attribution_detail") or {}).get("top"), dla[0]):
            same.append(r.label)
    text = f"On {task}, the zero-ablation that lowers the logit difference most: {'; '.join(parts)}"
    if same:
        text += f". In {_join(same)} that head is also the separated top head by direct effect"
    return Finding(text + ".", f"t{i}_heads_ablation")


def _layers(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    parts, regions = [], set()
    for r in runs:
        comps = layer_components(r.results)
        if not comps:
            return None
        c = max(comps, key=lambda c: abs(c.value))
        regions.add(region(c.depth))
        sign = "" if c.ci[0] > 0 or c.ci[1] < 0 else ", CI includes 0"
        parts.append(f"{c.layer}_{c.part}_out in {r.label} (depth {fmt(c.depth)}, {fmt(c.value, True)} "
                     f"{_ci_text(c.ci)}{sign})")
    tail = f"; in {_models_word(len(runs))} it lies in the {regions.pop()} third" if len(regions) == 1 else ""
    return Finding(f"On {task}, the layer output with the largest mean |direct effect| is {_join(parts)}{tail}.",
                   f"t{i}_layers")


def _patching(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    parts, fig = [], None
    for j, r in enumerate(runs):
        rp = r.results.get("resid_patching")
        if not isinstance(rp, dict) or not is_matrix(rp.get("values")) or not is_matrix(rp.get("ci")):
            continue
        fig = fig or f"t{i}_patch_{j}"
        n = len(rp["values"])
        first = next((l for l in range(n) if finite(rp["ci"][l][-1][0]) and rp["ci"][l][-1][0] > HALF), None)
        pairs = f"{rp.get('n_pairs', '?')} pair{'s' if rp.get('n_pairs') != 1 else ''}"
        if first is None:
            parts.append(f"never in {r.label} ({pairs})")
        else:
            parts.append(f"from layer {first} of {n} (depth {fmt(depth(first, n))}) on in {r.label} ({pairs})")
    if not parts or fig is None:
        return None
    return Finding(f"On {task}, patching the final position's residual stream restores more than half of the "
                   f"clean − corrupted gap (95% CI above one half) {_join(parts)}.", fig)


def _formation(runs: Sequence[Run]) -> Finding | None:
    series = series_points(runs)
    if not series:
        return None
    parts = []
    for label, pts in series.items():
        first = next((p for p in pts if p.ci[0] > LOGIT_DIFF_THRESHOLD), None)
        parts.append(f"at step {first.step} in {label}" if first else f"never in {label} (last step {pts[-1].step})")
    return Finding(f"During training the mean logit difference first exceeds {LOGIT_DIFF_THRESHOLD:g} with its 95% "
                   f"CI above it {_join(parts)}.", "formation")


_PER_TASK: tuple[Callable[[int, str, Sequence[Run]], Finding | None], ...] = (
    _logit_diff, _top_heads, _ablation, _layers, _patching)


def compare_findings(runs: Sequence[Run]) -> list[Finding]:
    """Findings across the runs, per task and for training; a finding whose inputs are missing is left out."""
    out: list[Finding] = []
    for i, (task, group) in enumerate(task_groups(runs).items()):
        shown = side_by_side(group)
        for fn in _PER_TASK:
            try:
                f = fn(i, task, shown)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                logger.warning("finding %s on %r could not be computed: %s", fn.__name__, task, exc)
                continue
            if f is not None:
                out.append(f)
    try:
        f = _formation(runs)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        logger.warning("formation finding could not be computed: %s", exc)
        f = None
    if f is not None:
        out.append(f)
    return out
