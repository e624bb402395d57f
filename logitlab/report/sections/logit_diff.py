"""The logit difference: per prompt with the mean, its stderr and 95% CI; across models on compare.html."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import ci_pair, ci_text
from .._util import finite, fmt, fmt_pct, fmt_ratio, plotly_text
from ..compare_runs import Run, join, pair
from ..layout import BLUE, GREY, RED, colour, error_bars, plot_layout
from ..markup import Figures, esc, figure_html, missing, note
from ..registry import ComparePart, FigureSpec, Finding, Rule, Section, register


def logit_diff_figure(results: Results) -> go.Figure:
    """Per-prompt logit difference (bars) with the mean ± stderr as a line and band."""
    ld = results["logit_diff"]
    per = [float(v) for v in ld["per_prompt"]]
    prompts = list(results.get("task", {}).get("prompts") or [])
    answers = list(results.get("task", {}).get("answers") or [])
    x = [str(i) for i in range(len(per))]
    hover = []
    for i in range(len(per)):
        p = plotly_text(prompts[i], 80) if i < len(prompts) else ""
        a = answers[i] if i < len(answers) else ["?", "?"]
        hover.append(f"{p}<br>{plotly_text(a[0])} vs {plotly_text(a[1])}")
    mean, se = float(ld["mean"]), float(ld.get("stderr") or 0.0)
    fig = go.Figure(
        go.Bar(
            x=x,
            y=per,
            marker_color=[BLUE if v > 0 else RED for v in per],
            customdata=hover,
            hovertemplate="prompt %{x}: %{y:.3f}<br>%{customdata}<extra></extra>",
            name="per prompt",
        )
    )
    ci = ld.get("ci") or []
    has_ci = len(ci) == 2 and all(finite(v) for v in ci)
    if math.isfinite(mean) and math.isfinite(se):
        fig.add_hrect(y0=mean - se, y1=mean + se, fillcolor=GREY, opacity=0.25, line_width=0,
                      layer="below")
    if has_ci:  # the 95% CI, lighter and wider than the stderr band
        fig.add_hrect(y0=float(ci[0]), y1=float(ci[1]), fillcolor=GREY, opacity=0.12, line_width=0,
                      layer="below")
    ci_txt = f", 95% CI [{fmt(ci[0])}, {fmt(ci[1])}]" if has_ci else ""
    if math.isfinite(mean):
        fig.add_hline(
            y=mean,
            line={"color": "black", "dash": "dash"},
            annotation_text=f"mean {fmt(mean)} ± {fmt(se)} (stderr){ci_txt}",
            annotation_position="top right",
            annotation_bgcolor="rgba(255,255,255,0.85)",
        )
    plot_layout(
        fig,
        f"Logit difference per prompt (correct beats incorrect on "
        f"{100 * float(ld.get('accuracy', math.nan)):.0f}% of prompts)",
        420,
        showlegend=False,
    )
    fig.update_xaxes(title_text="prompt", type="category")
    fig.update_yaxes(title_text="logit(correct) − logit(incorrect)", zeroline=True)
    return fig


def section_logit_diff(results: Results, figures: Figures,
                       findings: Sequence[Finding]) -> str:
    """Per-prompt logit difference and its summary."""
    ld = results.get("logit_diff")
    if not ld:
        return missing("logit difference")
    ci = ld.get("ci") or []
    ci_txt = (f", 95% CI [{fmt(ci[0])}, {fmt(ci[1])}]" if len(ci) == 2 and finite(ci[0]) and finite(ci[1])
              else "")
    summary = (
        f"Mean {fmt(ld.get('mean'))} ± {fmt(ld.get('stderr'))} (stderr){ci_txt} over "
        f"{len(ld.get('per_prompt') or [])} prompts; the correct answer's logit beats the (mean) incorrect "
        f"one's on {fmt_pct(float(ld.get('accuracy', math.nan)))} of prompts; exp(mean) = "
        f"{fmt_ratio(ld.get('prob_ratio_of_mean'))} (odds of correct over incorrect)."
    )
    return (
        f"<p>{esc(summary)}</p>"
        + note("Each bar is one prompt's logit(correct) − logit(incorrect) at its own final "
               "position (blue: correct preferred, red: not). The dashed line and grey band are "
               "the mean ± stderr; the lighter band is the 95% bootstrap CI of the mean over prompts "
               "(2,000 seeded resamples).")
        + figure_html(figures, "logit_diff")
    )


def _several_incorrect(results: Results) -> bool:
    """Whether some prompt has several incorrect answers (joined by " / ")."""
    return any(" / " in str(a[1]) for a in (results.get("task") or {}).get("answers") or [] if len(a) > 1)


def _logit_diff(results: Results) -> Finding | None:
    """Mean logit difference with its CI, the share of prompts it is positive on, and the probability ratio."""
    ld = results.get("logit_diff")
    if not ld or not finite(ld.get("mean")):
        return None
    n = len(ld.get("per_prompt") or [])
    mean = float(ld["mean"])
    ratio = ld.get("prob_ratio_of_mean", math.exp(mean) if mean < 700 else math.inf)
    acc = float(ld.get("accuracy", math.nan))
    se = ld.get("stderr")
    ci = ci_pair(ld.get("ci"))
    # Claim a preference only when the 95% CI excludes 0 (without a CI: two standard errors from 0).
    if ci is not None:
        sign = 1 if ci[0] > 0 else (-1 if ci[1] < 0 else 0)
    elif finite(se):
        sign = 0 if abs(mean) <= 2 * float(se) else (1 if mean > 0 else -1)
    else:
        sign = 0
    prefers = {1: "prefers the correct answer", -1: "prefers the incorrect answer",
               0: "shows no clear preference between the answers"}[sign]
    ci_txt = f", 95% CI {ci_text(ci)}" if ci is not None else ""
    other = "the mean incorrect one" if _several_incorrect(results) else "the incorrect one"
    text = (
        f"Over {n} prompts the model {prefers}: mean logit difference {fmt(mean)} "
        f"± {fmt(se)} (stderr){ci_txt}; the correct answer beats {other} on {fmt_pct(acc)} of prompts; "
        f"p(correct)/p(incorrect) = {fmt_ratio(ratio)} at the mean (over the geometric mean of the incorrect "
        f"answers' probabilities where a prompt has several)."
    )
    return Finding(text, "logit_diff")


# ---- compare.html


def compare_logit_diff_figure(runs: Sequence[Run]) -> go.Figure:
    """Each run's mean logit difference with its 95% bootstrap CI."""
    fig = go.Figure()
    for i, r in enumerate(runs):
        ld = r.results["logit_diff"]
        ci = ld.get("ci") or [ld["mean"], ld["mean"]]
        fig.add_trace(go.Bar(
            x=[plotly_text(r.label)], y=[ld["mean"]], marker_color=colour(i), name=plotly_text(r.label),
            error_y=error_bars([ld["mean"]], [ci]),
            hovertemplate=(f"{plotly_text(r.label)}<br>mean %{{y:.3f}}, 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]<br>"
                           f"accuracy {100 * float(ld.get('accuracy', 0)):.0f}% over "
                           f"{len(ld.get('per_prompt') or [])} prompts<extra></extra>")))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    return plot_layout(fig, "Mean logit difference (95% bootstrap CI over prompts)", 380, showlegend=False,
                   yaxis={"title": "logit(correct) − logit(incorrect)"})


def _compare_logit_diff(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    parts, best = [], None
    for r in runs:
        ld = r.results["logit_diff"]
        m = float(ld["mean"])
        ci = pair(ld.get("ci"), m)
        pref = ("prefers the correct answer" if ci[0] > 0 else
                "prefers the incorrect answer" if ci[1] < 0 else "shows no clear preference")
        parts.append(f"{r.label} {fmt(m, True)} {ci_text(ci, True)} ({pref})")
        if best is None or m > best[1]:
            best = (r, m, ci)
    text = f"On {task}, mean logit difference (95% CI): {join(parts)}"
    if len(runs) >= 2 and best is not None:
        overlap = [r.label for r in runs if r is not best[0]
                   and pair(r.results["logit_diff"].get("ci"), float(r.results["logit_diff"]["mean"]))[1] >= best[2][0]]
        if not overlap:
            text += f"; {best[0].label}'s is the largest: its CI lies above every other model's"
        else:
            text += (f"; the highest mean, {best[0].label}'s, has a CI overlapping {join(overlap)}'s, so no model's "
                     "is clearly the largest")
    return Finding(text + ".", f"t{i}_logit_diff")


def _compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    return {f"t{i}_logit_diff": compare_logit_diff_figure(runs)}


def _compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return "<h3>Logit difference</h3>" + figure_html(figures, f"t{i}_logit_diff")


SECTION = register(Section(
    name="logit-diff", title="Logit difference", render=section_logit_diff, analysis="logit_diff", keys=("logit_diff",),
    figures=(FigureSpec("logit_diff", "logit_diff", logit_diff_figure),),
    rules=(Rule(10, _logit_diff),),
    compare=ComparePart(_compare_html, _compare_figures, rules=(Rule(10, _compare_logit_diff),)),
))
