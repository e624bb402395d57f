"""What compare.html reads from each run: the runs, their top heads, layer components and training series.

The findings across models (each registered section's compare rules, gathered by
:mod:`logitlab.report.compare_findings`) follow the rules of the single-run findings, applied across models:

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

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._util import estimated_mask, finite, fmt, is_matrix
from .markup import esc, figure_html, note, table
from .registry import Run

__all__ = ["Run", "Head", "Component", "Point", "depth", "region", "layer_components", "top_dla_heads",
           "top_ablation_heads", "series_points", "side_by_side", "task_groups", "LOGIT_DIFF_THRESHOLD", "HALF",
           "pair", "join", "models_word", "separated", "ci_cell", "compare_block"]

LOGIT_DIFF_THRESHOLD = 1.0  # as the formation report: p(correct)/p(incorrect) > e
HALF = 0.5
_COMPONENT = re.compile(r"^(\d+)_(attn|mlp)_out$")


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


def pair(x: Any, default: float) -> tuple[float, float]:
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
            out.append(Component(int(m.group(1)), n, m.group(2), v, pair(cis[j] if j < len(cis) else None, v)))
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
        ci = pair(cis[l][h] if l < len(cis) and h < len(cis[l]) else None, v)
        near = _near_zero(v, ci)
        rest = total - abs(v)
        out.append(Head(l, h, n, v, ci, abs(v) / total if total > 0 else None,
                        near / (rest + near) if rest + near > 0 else None))
    return out


def top_ablation_heads(results: dict[str, Any], k: int) -> list[Head]:
    """The k heads whose zero-ablation lowers the mean logit difference most, with the paired CIs (of a screened
    ablation: among the heads ablated exactly)."""
    zero = (results.get("head_ablation") or {}).get("zero") or {}
    z, cis = zero.get("delta_logit_diff"), zero.get("delta_logit_diff_ci") or []
    if not is_matrix(z):
        return []
    est = estimated_mask(zero)
    flat = [(float(v), l, h) for l, row in enumerate(z) for h, v in enumerate(row)
            if finite(v) and (est is None or not est[l][h])]
    n = _n_layers(results)
    return [Head(l, h, n, v, pair(cis[l][h] if l < len(cis) and h < len(cis[l]) else None, v))
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
                Point(int(r.step), float(ld["mean"]), pair(ld.get("ci"), float(ld["mean"]))))
    return {k: sorted(v, key=lambda p: p.step) for k, v in series.items() if v}




def join(items: Sequence[str]) -> str:
    """``a, b and c``."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def models_word(n: int) -> str:
    """``the model``, ``both models``, ``all 3 models``."""
    return "the model" if n == 1 else ("both models" if n == 2 else f"all {n} models")


def separated(sep: Any, head: Head | None) -> bool:
    """Whether a run's paired test separates ``head`` from its runner-up (and, after a screen, from every
    screened-out head: ``above_bound``)."""
    if not isinstance(sep, dict) or head is None or (sep.get("layer"), sep.get("head")) != (head.layer, head.head):
        return False
    d = pair(sep.get("difference_ci"), math.nan)
    return finite(d[0]) and d[0] > 0 and not sep.get("tied") and sep.get("above_bound", True) is not False


def ci_cell(v: float, ci: Any) -> str:
    """A table cell ``+1.00 [−0.20, +2.00]`` (escaped HTML)."""
    ci_txt = f" [{fmt(ci[0], True)}, {fmt(ci[1], True)}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return esc(f"{fmt(v, True)}{ci_txt}")


def compare_block(i: int, runs: Sequence[Run], figures: Mapping[str, Any], key: str, header: Sequence[str],
                  rows_of: Callable[[Run], list[list[str]]]) -> str:
    """The block of one results key on compare.html: its heading, the runs without it, its figure
    ``t{i}_{key}`` and a table of ``rows_of(run)`` over the runs that have it; "" when none has it."""
    having = [r for r in runs if key in r.results]
    if not having:
        return ""
    body = [f"<h3>{esc(key)}</h3>"]
    absent = [r.label for r in runs if key not in r.results]
    if absent:
        body.append(note(f"Not in the results of {esc(', '.join(absent))}."))
    body.append(figure_html(figures, f"t{i}_{key}"))
    rows = [row for r in having for row in rows_of(r)]
    if rows:
        body.append(table(header, rows))
    return "".join(body)
