"""The unembedding bias: what b_U alone contributes to each answer pair (LayerNorm folding creates one).

The section says once whether the model has one; without one there is nothing to plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from logitlab.results import Results

from .._util import finite, fmt, fmt_ratio, plotly_text, quoted
from ..layout import BLUE, RED, plot_layout
from ..markup import Figures, chip, esc, figure_html, note, table
from ..registry import FigureSpec, Finding, Rule, Section, register


def unembed_bias_figure(results: Results) -> go.Figure | None:
    """The unembedding bias of the first prompt's two answers; None when the model has none (nothing to draw)."""
    ub = results["unembed_bias"]
    if not ub["present"]:
        return None
    c, i = str(ub["correct"]), str(ub["incorrect"])
    xs = [f"correct: {plotly_text(c, 20)}", f"incorrect: {plotly_text(i, 20)}"]
    ys = [float(ub["b_U_correct"]), float(ub["b_U_incorrect"])]
    fig = go.Figure(go.Bar(x=xs, y=ys, marker_color=[BLUE, RED], hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    plot_layout(fig, f"Unembedding bias b_U (difference {fmt(ub['difference'], signed=True)})", 340,
                showlegend=False)
    fig.update_xaxes(type="category")
    fig.update_yaxes(title_text="b_U", zeroline=True)
    return fig


def section_unembed_bias(results: Results, figures: Figures, findings: Sequence[Finding]) -> str:
    """The unembedding bias of the first prompt's answers (and of every answer pair), said once; no plot without one."""
    ub = results["unembed_bias"]
    note_txt = note("A constant offset per vocabulary entry, independent of the prompt; it is part of the DLA "
                    "check's bias term.")
    if not ub["present"]:  # the anchor of the finding that says so
        return '<p id="fig-unembed_bias">The model has no unembedding bias.</p>' + note_txt
    txt = (f"b_U[{chip(ub['correct'])}] = {esc(fmt(ub['b_U_correct']))}, "
           f"b_U[{chip(ub['incorrect'])}] = {esc(fmt(ub['b_U_incorrect']))}: "
           f"difference {esc(fmt(ub['difference'], signed=True))}, i.e. the bias alone "
           f"gives odds {esc(fmt_ratio(ub['prob_ratio']))} for the correct answer.")
    pairs = ub["pairs"]
    pair_table = ""
    if len(pairs) > 1:
        rows = [[chip(p["correct"]), chip(p["incorrect"]), esc(fmt(p["b_U_correct"])), esc(fmt(p["b_U_incorrect"])),
                 esc(fmt(p["difference"], signed=True)), esc(p["n_prompts"])] for p in pairs]
        pair_table = ("<p>Every answer pair of the task:</p>" + table(
            ["correct", "incorrect", "b_U correct", "b_U incorrect (mean)", "difference", "prompts"], rows, "kv"))
    return f"<p>{txt}</p>" + pair_table + note_txt + figure_html(figures, "unembed_bias")


def _unembed_bias(results: Results) -> Finding | None:
    """What the unembedding bias alone contributes for each answer pair of the task, or that there is none."""
    ub = results.get("unembed_bias")
    if not ub:
        return None
    if not ub.get("present"):
        return Finding(
            "The model has no unembedding bias, so the whole logit difference comes from "
            "the residual stream.",
            "unembed_bias",
        )
    diff = float(ub.get("difference", math.nan))
    c, i = quoted(ub.get("correct", "?")), quoted(ub.get("incorrect", "?"))
    if finite(diff) and diff != 0:
        favoured, other = (c, i) if diff > 0 else (i, c)
        text = (f"The unembedding bias alone favours {favoured} over {other} by "
                f"{fmt(abs(diff))} logits (p({c})/p({i}) = {fmt_ratio(ub.get('prob_ratio'))} "
                f"from the bias alone)")
    else:
        text = f"The unembedding bias does not distinguish {c} from {i} (difference 0)"
    pairs = [p for p in ub.get("pairs") or [] if finite(p.get("difference"))]
    if len(pairs) > 1:
        lo = min(pairs, key=lambda p: float(p["difference"]))
        hi = max(pairs, key=lambda p: float(p["difference"]))
        pair = lambda p: f"{quoted(p['correct'])} vs {quoted(p['incorrect'])}"  # noqa: E731
        text += (f"; over the task's {len(pairs)} answer pairs its share of the logit difference ranges from "
                 f"{fmt(lo['difference'], signed=True)} ({pair(lo)}) to {fmt(hi['difference'], signed=True)} "
                 f"({pair(hi)})")
    return Finding(text + ".", "unembed_bias")


SECTION = register(Section(
    name="unembed-bias", title="Unembedding bias", render=section_unembed_bias, analysis="unembed_bias", keys=("unembed_bias",),
    figures=(FigureSpec("unembed_bias", "unembed_bias", unembed_bias_figure),), rules=(Rule(90, _unembed_bias),),
))
