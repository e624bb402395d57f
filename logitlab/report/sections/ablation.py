"""Head ablation: zero- and mean-ablating each head, its effect on the logit difference and the loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from .._util import estimated_mask, finite, fmt, head_name, is_matrix
from ..layout import diverging_heatmap, head_axes
from ..markup import Figures, esc, grid, missing, note
from ..registry import FigureSpec, Finding, Rule, Section, register


SCREENED_OUT = "estimated (screened out)"


def _n_exact(part: Mapping[str, Any]) -> tuple[int, int] | None:
    """(heads computed exactly, heads) of a screened ablation; None when every head is exact."""
    est = estimated_mask(part)
    if est is None:
        return None
    flat = [e for row in est for e in row]
    return len(flat) - sum(flat), len(flat)


def _exact_cells(part: Mapping[str, Any], key: str) -> list[tuple[float, int, int]]:
    """(value, layer, head) of ``part[key]`` for the heads computed exactly."""
    est = estimated_mask(part)
    return [(float(v), l, h) for l, row in enumerate(part[key]) for h, v in enumerate(row)  # type: ignore[literal-required]
            if finite(v) and not (est and l < len(est) and h < len(est[l]) and est[l][h])]


def _mark_estimated(fig: go.Figure, est: list[list[bool]] | None, x: Sequence[str], y: Sequence[str]) -> go.Figure:
    """Cross out the screened-out cells (a first-order estimate, not an ablation)."""
    cells = [(x[h], y[l]) for l, row in enumerate(est or []) for h, e in enumerate(row) if e]
    if cells:
        fig.add_trace(go.Scatter(x=[c[0] for c in cells], y=[c[1] for c in cells], mode="markers",
                                 name=SCREENED_OUT, showlegend=False, hoverinfo="skip",
                                 marker={"symbol": "x-thin", "size": 7,
                                         "line": {"width": 1.2, "color": "rgba(40,40,40,0.6)"}}))
    return fig


def _ablation_figure(results: Results, kind: str, metric: str) -> go.Figure:
    """Head-ablation heatmap of ``metric`` minus its baseline (diverging, centred at 0); cells a screen left to
    their first-order estimate are crossed out and say so on hover."""
    ab = results["head_ablation"]
    base = float(ab["baseline_logit_diff" if metric == "logit_diff" else "baseline_loss"])
    part = ab[kind]
    name = "logit diff" if metric == "logit_diff" else "loss"
    cbar = f"Δ {name} vs baseline {fmt(base)}<br>(mean of per-prompt changes)"
    title = f"{kind.capitalize()}-ablation: {name} − baseline (paired)"
    est = estimated_mask(part)  # the heads a screen left to their first-order estimate

    def tag(l: int, h: int) -> str:
        return f"<br>{SCREENED_OUT}: first-order estimate, not ablated" if est and est[l][h] else ""

    delta, ci = part.get(f"delta_{metric}"), part.get(f"delta_{metric}_ci")
    if is_matrix(delta) and ci:  # paired effects: mean change, paired stderr and 95% CI on hover
        z = [[float(v) for v in row] for row in delta]
        se = part[f"delta_{metric}_stderr"]  # type: ignore[literal-required]
        custom = [[[float(se[l][h]), float(ci[l][h][0]), float(ci[l][h][1]), tag(l, h)] for h in range(len(row))]
                  for l, row in enumerate(z)]
        x, y = head_axes(z)
        hover = ("%{y}%{x}: Δ %{z:.3f} ± %{customdata[0]:.3f} (paired stderr), "
                 "95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]%{customdata[3]}")
        return _mark_estimated(diverging_heatmap(z, x, y, title, cbar, "head", hover, custom), est, x, y)
    z = [[float(v) - base for v in row] for row in part[metric]]  # type: ignore[literal-required]
    err = part.get(f"{metric}_stderr")
    x, y = head_axes(z)
    title = f"{kind.capitalize()}-ablation: {name} − baseline"
    if is_matrix(err):
        custom = [[[float(e), tag(l, h)] for h, e in enumerate(row)] for l, row in enumerate(err)]
        hover = "%{y}%{x}: Δ %{z:.3f} ± %{customdata[0]:.3f}%{customdata[1]}"
        return _mark_estimated(diverging_heatmap(z, x, y, title, cbar, "head", hover, custom), est, x, y)
    custom = [[tag(l, h) for h in range(len(row))] for l, row in enumerate(z)]
    return _mark_estimated(diverging_heatmap(z, x, y, title, cbar, "head", "%{y}%{x}: Δ %{z:.3f}%{customdata}", custom),
                           est, x, y)


def head_ablation_zero_logit_diff_figure(results: Results) -> go.Figure:
    """Zero-ablation: change of the logit difference per head."""
    return _ablation_figure(results, "zero", "logit_diff")


def head_ablation_zero_loss_figure(results: Results) -> go.Figure:
    """Zero-ablation: change of the loss per head."""
    return _ablation_figure(results, "zero", "loss")


def head_ablation_mean_logit_diff_figure(results: Results) -> go.Figure:
    """Mean-ablation: change of the logit difference per head."""
    return _ablation_figure(results, "mean", "logit_diff")


def head_ablation_mean_loss_figure(results: Results) -> go.Figure:
    """Mean-ablation: change of the loss per head."""
    return _ablation_figure(results, "mean", "loss")


def section_head_ablation(results: Results, figures: Figures,
                          findings: Sequence[Finding]) -> str:
    """Zero- and mean-ablation heatmaps for logit difference and loss."""
    ab = results.get("head_ablation")
    if not ab:
        return missing("head ablation")
    ids = ["head_ablation_zero_logit_diff", "head_ablation_zero_loss",
           "head_ablation_mean_logit_diff", "head_ablation_mean_loss"]
    return (
        note("Each cell is the metric after ablating that one head (at every position) minus "
             f"the unablated baseline: logit difference {esc(fmt(ab.get('baseline_logit_diff')))}, "
             f"loss {esc(fmt(ab.get('baseline_loss')))} nats (−log p(correct)). Colour scales "
             "are centred at 0 = no change. Red on the logit-difference maps / blue on the loss "
             "maps means the head was helping. Zero-ablation sets the head's output to 0; "
             "mean-ablation replaces it by its mean over the task's prompts.")
        + grid(figures, ids)
        + "".join(_screen_note(kind, ab[kind]) for kind in ("zero", "mean") if ab.get(kind))  # type: ignore[literal-required]
    )


def _screen_note(kind: str, part: Mapping[str, Any]) -> str:
    """What a screened ablation computed exactly, how far its estimate missed, and its bound (empty when every
    head is exact)."""
    counts, scr = _n_exact(part), part.get("screen") or {}
    if counts is None:
        return ""
    n, total = counts
    return note(
        f"{esc(kind.capitalize())}-ablation: {n} of {total} heads computed exactly "
        f"({esc(scr.get('n_flagged', 'n/a'))} with the largest first-order estimates of the change in logit "
        f"difference or loss, {esc(scr.get('n_sampled', 'n/a'))} at random); the other {total - n} (crossed out, "
        f"hover: “{SCREENED_OUT}”) show a first-order estimate (Σ over positions of (replacement − output) · "
        "gradient at the clean run), not an ablation. On the random sample the estimate missed by at most "
        f"{esc(fmt(scr.get('sample_max_error')))} (logit difference) and {esc(fmt(scr.get('loss_sample_max_error')))} "
        "nats (loss); no screened-out head is expected to change the logit difference by more than "
        f"{esc(fmt(scr.get('bound')))} or the loss by more than {esc(fmt(scr.get('loss_bound')))} nats (the bound). "
        "Findings quote exact heads only; --exact ablates every head.")


def _ablation(results: Results) -> Finding | None:
    """The head ablation that lowers the logit difference (and raises the loss) most, among the heads computed
    exactly; "most" outright only when no screened-out head can be expected to do more (the screen's bound)."""
    ab = results.get("head_ablation")
    if not ab or not finite(ab.get("baseline_logit_diff")):
        return None
    base_ld = float(ab["baseline_logit_diff"])
    base_loss = float(ab.get("baseline_loss", math.nan))
    drops: list[tuple[float, str, int, int]] = []
    rises: list[tuple[float, str, int, int]] = []
    for kind in ("zero", "mean"):
        part = ab.get(kind)
        if not part or not is_matrix(part.get("logit_diff")):
            continue
        drops += [(base_ld - v, kind, layer, h) for v, layer, h in _exact_cells(part, "logit_diff")]
        if is_matrix(part.get("loss")) and math.isfinite(base_loss):
            rises += [(v - base_loss, kind, layer, h) for v, layer, h in _exact_cells(part, "loss")]
    if not drops:
        return None
    drop, kind, layer, h = max(drops)
    part = ab[kind]  # type: ignore[literal-required]
    scr = part.get("screen") or {}
    counts = _n_exact(part)
    # Where a screen left heads to their estimate, a claim about "all heads" or "the largest" is about the exact ones.
    among = "" if counts is None else f" of the {counts[0]} heads (of {counts[1]}) computed exactly"
    if drop <= 0:
        return Finding(
            (f"No single head ablation lowers the logit difference below its baseline {fmt(base_ld)}: the task "
             "does not depend on any one head alone." if counts is None else
             f"No head ablation{among} lowers the logit difference below its baseline {fmt(base_ld)}; no "
             f"screened-out head is expected to change it by more than {fmt(scr.get('bound'))} (the screen's "
             "bound)."),
            f"head_ablation_{drops[0][1]}_logit_diff",
        )
    top = part.get("top_drop")
    # "The largest" outright: larger than every screen's bound on its screened-out heads (both kinds compete).
    bounds = [(ab[k].get("screen") or {}).get("bound") for k in ("zero", "mean")  # type: ignore[literal-required]
              if ab.get(k) and _n_exact(ab[k]) is not None]  # type: ignore[literal-required]
    largest = all(finite(b) and drop > float(b) for b in bounds)
    scope = "" if largest else among
    if top and (top["layer"], top["head"]) == (layer, h):
        lo, hi = top["ci"]
        if hi >= 0:
            return Finding(
                (f"No single head ablation lowers the logit difference beyond its 95% CI" if counts is None else
                 f"No head ablation{among} lowers the logit difference beyond its 95% CI")
                + f": the largest drop{scope}, "
                f"{kind}-ablating {head_name(layer, h)}, is {fmt(top['delta'], signed=True)} "
                f"[{fmt(lo, signed=True)}, {fmt(hi, signed=True)}] (paired over prompts).",
                f"head_ablation_{kind}_logit_diff")
        if top["tied"]:
            tied = [head_name(int(a), int(b)) for a, b in top["tied"]]
            verb = (f"gives the largest mean drop{scope}, but it is not separated at 95% from {', '.join(tied[:4])}"
                    f"{f' and {len(tied) - 4} more' if len(tied) > 4 else ''}")
        else:
            ru = head_name(*top["runner_up"])
            d_lo, d_hi = top["difference_ci"]
            verb = (f"hurts most{scope} (by {fmt(top['difference'])} [{fmt(d_lo)}, {fmt(d_hi)}] more than the "
                    f"runner-up {ru}, paired 95% CI)")
        text = (f"{kind.capitalize()}-ablating {head_name(layer, h)} {verb}: the logit difference changes by "
                f"{fmt(top['delta'], signed=True)} [{fmt(lo, signed=True)}, {fmt(hi, signed=True)}] "
                f"from {fmt(base_ld)} (mean of per-prompt changes, 95% bootstrap CI)")
    else:
        text = (
            f"{kind.capitalize()}-ablating {head_name(layer, h)} hurts most{scope}: the logit difference "
            f"falls from {fmt(base_ld)} to {fmt(base_ld - drop)} ({fmt(-drop, signed=True)})"
        )
    same = [r for r in rises if r[1:] == (kind, layer, h)]
    if same and math.isfinite(same[0][0]):
        text += f" and the loss changes by {fmt(same[0][0], signed=True)} nats"
    best_rise = max(rises) if rises else None
    if best_rise and best_rise[0] > 0 and best_rise[1:] != (kind, layer, h):
        r, rk, rl, rh = best_rise
        rc = _n_exact(ab[rk])  # type: ignore[literal-required]
        loss_bounds = [(ab[k].get("screen") or {}).get("loss_bound")  # type: ignore[literal-required]
                       for k in ("zero", "mean") if ab.get(k) and _n_exact(ab[k]) is not None]  # type: ignore[literal-required]
        rise_scope = "" if all(finite(b) and r > float(b) for b in loss_bounds) else \
            (f" of the {rc[0]} heads computed exactly" if rc else " among the heads computed exactly")
        text += (f"; the largest loss increase{rise_scope} ({fmt(r, signed=True)} nats) comes from "
                 f"{rk}-ablating {head_name(rl, rh)}")
    if bounds and largest:
        text += (f"; no screened-out head is expected to lower the logit difference by as much (the screen's "
                 f"bound is {fmt(max(float(b) for b in bounds))})")
    return Finding(text + ".", f"head_ablation_{kind}_logit_diff")


SECTION = register(Section(
    name="head-ablation", title="Head ablation", render=section_head_ablation, analysis="ablation",
    keys=("head_ablation",),
    figures=tuple(FigureSpec(f"head_ablation_{kind}_{metric}", f"head_ablation.{kind}", fn) for kind, metric, fn in (
        ("zero", "logit_diff", head_ablation_zero_logit_diff_figure), ("zero", "loss", head_ablation_zero_loss_figure),
        ("mean", "logit_diff", head_ablation_mean_logit_diff_figure), ("mean", "loss", head_ablation_mean_loss_figure))),
    rules=(Rule(50, _ablation),),
))
