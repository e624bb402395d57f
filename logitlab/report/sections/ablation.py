"""Head ablation: zero- and mean-ablating each head, its effect on the logit difference and the loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from logitlab.results import Results

from .._util import finite, fmt, head_name, is_matrix
from ..layout import diverging_heatmap, head_axes
from ..markup import Figures, esc, grid, missing, note
from ..registry import FigureSpec, Finding, Rule, Section, register


def _ablation_figure(results: Results, kind: str, metric: str) -> go.Figure:
    """Head-ablation heatmap of ``metric`` minus its baseline (diverging, centred at 0)."""
    ab = results["head_ablation"]
    base = float(ab["baseline_logit_diff" if metric == "logit_diff" else "baseline_loss"])
    part = ab[kind]
    name = "logit diff" if metric == "logit_diff" else "loss"
    cbar = f"Δ {name} vs baseline {fmt(base)}<br>(mean of per-prompt changes)"
    title = f"{kind.capitalize()}-ablation: {name} − baseline (paired)"
    delta, ci = part.get(f"delta_{metric}"), part.get(f"delta_{metric}_ci")
    if is_matrix(delta) and ci:  # paired effects: mean change, paired stderr and 95% CI on hover
        z = [[float(v) for v in row] for row in delta]
        se = part[f"delta_{metric}_stderr"]  # type: ignore[literal-required]
        custom = [[[float(se[l][h]), float(ci[l][h][0]), float(ci[l][h][1])] for h in range(len(row))]
                  for l, row in enumerate(z)]
        x, y = head_axes(z)
        hover = ("%{y}%{x}: Δ %{z:.3f} ± %{customdata[0]:.3f} (paired stderr), "
                 "95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
        return diverging_heatmap(z, x, y, title, cbar, "head", hover, custom)
    z = [[float(v) - base for v in row] for row in part[metric]]  # type: ignore[literal-required]
    err = part.get(f"{metric}_stderr")
    x, y = head_axes(z)
    title = f"{kind.capitalize()}-ablation: {name} − baseline"
    if is_matrix(err):
        hover = "%{y}%{x}: Δ %{z:.3f} ± %{customdata:.3f}"
        return diverging_heatmap(z, x, y, title, cbar, "head", hover, err)
    return diverging_heatmap(z, x, y, title, cbar, "head", "%{y}%{x}: Δ %{z:.3f}")


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
    )


def _ablation(results: Results) -> Finding | None:
    """The head ablation that lowers the logit difference (and raises the loss) most."""
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
        for layer, row in enumerate(part["logit_diff"]):
            for h, v in enumerate(row):
                drops.append((base_ld - float(v), kind, layer, h))
        if is_matrix(part.get("loss")) and math.isfinite(base_loss):
            for layer, row in enumerate(part["loss"]):
                for h, v in enumerate(row):
                    if finite(v):
                        rises.append((float(v) - base_loss, kind, layer, h))
    if not drops:
        return None
    drop, kind, layer, h = max(drops)
    if drop <= 0:
        return Finding(
            f"No single head ablation lowers the logit difference below its baseline "
            f"{fmt(base_ld)}: the task does not depend on any one head alone.",
            f"head_ablation_{drops[0][1]}_logit_diff",
        )
    top = ab[kind].get("top_drop")  # type: ignore[literal-required]
    if top and (top["layer"], top["head"]) == (layer, h):
        lo, hi = top["ci"]
        if hi >= 0:
            return Finding(
                f"No single head ablation lowers the logit difference beyond its 95% CI: the largest drop, "
                f"{kind}-ablating {head_name(layer, h)}, is {fmt(top['delta'], signed=True)} "
                f"[{fmt(lo, signed=True)}, {fmt(hi, signed=True)}] (paired over prompts).",
                f"head_ablation_{kind}_logit_diff")
        if top["tied"]:
            tied = [head_name(int(a), int(b)) for a, b in top["tied"]]
            verb = (f"gives the largest mean drop, but it is not separated at 95% from {', '.join(tied[:4])}"
                    f"{f' and {len(tied) - 4} more' if len(tied) > 4 else ''}")
        else:
            ru = head_name(*top["runner_up"])
            d_lo, d_hi = top["difference_ci"]
            verb = (f"hurts most (by {fmt(top['difference'])} [{fmt(d_lo)}, {fmt(d_hi)}] more than the runner-up "
                    f"{ru}, paired 95% CI)")
        text = (f"{kind.capitalize()}-ablating {head_name(layer, h)} {verb}: the logit difference changes by "
                f"{fmt(top['delta'], signed=True)} [{fmt(lo, signed=True)}, {fmt(hi, signed=True)}] "
                f"from {fmt(base_ld)} (mean of per-prompt changes, 95% bootstrap CI)")
    else:
        text = (
            f"{kind.capitalize()}-ablating {head_name(layer, h)} hurts most: the logit difference "
            f"falls from {fmt(base_ld)} to {fmt(base_ld - drop)} ({fmt(-drop, signed=True)})"
        )
    same = [r for r in rises if r[1:] == (kind, layer, h)]
    if same and math.isfinite(same[0][0]):
        text += f" and the loss changes by {fmt(same[0][0], signed=True)} nats"
    best_rise = max(rises) if rises else None
    if best_rise and best_rise[0] > 0 and best_rise[1:] != (kind, layer, h):
        r, rk, rl, rh = best_rise
        text += (f"; the largest loss increase ({fmt(r, signed=True)} nats) comes from "
                 f"{rk}-ablating {head_name(rl, rh)}")
    return Finding(text + ".", f"head_ablation_{kind}_logit_diff")


SECTION = register(Section(
    name="head-ablation", title="Head ablation", render=section_head_ablation, analysis="ablation",
    keys=("head_ablation",),
    figures=tuple(FigureSpec(f"head_ablation_{kind}_{metric}", f"head_ablation.{kind}", fn) for kind, metric, fn in (
        ("zero", "logit_diff", head_ablation_zero_logit_diff_figure), ("zero", "loss", head_ablation_zero_loss_figure),
        ("mean", "logit_diff", head_ablation_mean_logit_diff_figure), ("mean", "loss", head_ablation_mean_loss_figure))),
    rules=(Rule(50, _ablation),),
))
