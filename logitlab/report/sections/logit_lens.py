"""The logit lens over the accumulated residual stream."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from logitlab.results import Results

from .._util import fmt, pre_cap
from ..layout import BLUE, ci_pairs, plot_layout
from ..markup import Figures, figure_html, missing, note
from ..registry import FigureSpec, Finding, Rule, Section, register


def logit_lens_figure(results: Results) -> go.Figure:
    """Mean logit difference of the accumulated residual stream, with a ±stderr band."""
    lens = results["logit_lens"]
    labels = [str(s) for s in lens["labels"]]
    vals = [float(v) for v in lens["values"]]
    err = [float(v) for v in (lens.get("stderr") or [0.0] * len(vals))]
    upper = [v + e for v, e in zip(vals, err)]
    lower = [v - e for v, e in zip(vals, err)]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=labels + labels[::-1],
            y=upper + lower[::-1],
            fill="toself",
            mode="lines",
            fillcolor="rgba(33,102,172,0.18)",
            line={"width": 0},
            hoverinfo="skip",
            name="± stderr",
        )
    )
    ci = ci_pairs(lens.get("ci"), len(vals))
    if ci is not None:  # the 95% CI as a second, lighter band
        fig.add_trace(
            go.Scatter(
                x=labels + labels[::-1],
                y=[c[1] for c in ci] + [c[0] for c in ci][::-1],
                fill="toself",
                mode="lines",
                fillcolor="rgba(33,102,172,0.08)",
                line={"width": 0},
                hoverinfo="skip",
                name="95% CI",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=vals,
            mode="lines+markers",
            line={"color": BLUE},
            customdata=[[e, *(ci[i] if ci else (v, v))] for i, (v, e) in enumerate(zip(vals, err))],
            hovertemplate="%{x}: %{y:.3f} ± %{customdata[0]:.3f}"
            + (", 95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]" if ci else "") + "<extra></extra>",
            name="mean logit diff",
        )
    )
    plot_layout(fig, "Logit lens: accumulated residual stream (± stderr" + (", lighter: 95% CI)" if ci else ")"),
            420, showlegend=False)
    fig.update_xaxes(title_text="residual stream position", type="category",
                     categoryorder="array", categoryarray=labels)
    fig.update_yaxes(title_text="logit difference", zeroline=True)
    return fig


def section_logit_lens(results: Results, figures: Figures,
                       findings: Sequence[Finding]) -> str:
    """Logit lens over the accumulated residual stream."""
    if "logit_lens" not in figures:
        return missing("logit lens")
    return (
        note("The residual stream accumulated up to each point (before each layer, after its "
             "attention, and at the end), read out through the frozen final norm and the "
             "answer direction. Where the line rises is where the answer becomes linearly "
             "available; the band is ± stderr over prompts, the lighter band the 95% bootstrap CI.")
        + figure_html(figures, "logit_lens")
    )


def _logit_lens(results: Results) -> Finding | None:
    """Where the accumulated residual stream first reaches half the final logit difference."""
    lens = results.get("logit_lens")
    if not lens or not lens.get("values"):
        return None
    vals = [float(v) for v in lens["values"]]
    labels = [str(s) for s in lens["labels"]]
    final = vals[-1]
    if not (math.isfinite(final) and final > 0):
        return None
    first = next((i for i, v in enumerate(vals) if v >= 0.5 * final), len(vals) - 1)
    return Finding(
        f"Logit lens: the accumulated residual stream first reaches half of its final logit "
        f"difference ({fmt(final)}) at {labels[first]} (position {first + 1} of {len(vals)}). {pre_cap(results)}"
        .rstrip(),
        "logit_lens",
    )


SECTION = register(Section(
    name="logit-lens", title="Logit lens", render=section_logit_lens, analysis="logit_lens", keys=("logit_lens",),
    figures=(FigureSpec("logit_lens", "logit_lens", logit_lens_figure),), rules=(Rule(80, _logit_lens),)))
