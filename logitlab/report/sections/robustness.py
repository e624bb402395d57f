"""Robustness across templates: the logit difference and the key heads template by template, and per subject."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import ci_text
from .._util import finite, fmt, head_name, plotly_text
from ..layout import BLUE, GREY, RED, plot_layout
from ..markup import Figures, esc, figure_html, note, table
from ..registry import FigureSpec, Finding, Rule, Section, register


def robustness_figure(results: Results) -> go.Figure:
    """Mean logit difference per template with its 95% CI; the top DLA head of each on hover."""
    rob = results["robustness"]
    rows = rob["templates"]
    x = [f"T{r['index']}" for r in rows]
    means = [float(r["mean"]) for r in rows]
    hover = [f"{plotly_text(r['template'], 60)}<br>n = {r['n']}, top DLA head "
             f"{head_name(*r['top_dla']['head'])}" for r in rows]
    fig = go.Figure(go.Scatter(
        x=x, y=means, mode="markers", marker={"size": 9, "color": [BLUE if m > 0 else RED for m in means]},
        error_y={"type": "data", "symmetric": False, "color": "#333",
                 "array": [float(r["ci"][1]) - m for r, m in zip(rows, means)],
                 "arrayminus": [m - float(r["ci"][0]) for r, m in zip(rows, means)]},
        customdata=[[h, float(r["ci"][0]), float(r["ci"][1])] for h, r in zip(hover, rows)],
        hovertemplate="%{x}: %{y:.3f}, 95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]"
                      "<br>%{customdata[0]}<extra></extra>"))
    ld = results.get("logit_diff") or {}
    if finite(ld.get("mean")):
        fig.add_hline(y=float(ld["mean"]), line={"color": GREY, "dash": "dash"},
                      annotation_text=f"all prompts {fmt(ld['mean'])}", annotation_position="top right")
    plot_layout(fig, "Logit difference per template (95% bootstrap CI over its prompts)", 380, showlegend=False)
    fig.update_xaxes(title_text="template", type="category")
    fig.update_yaxes(title_text="mean logit difference", zeroline=True)
    return fig


def section_robustness(results: Results, figures: Figures,
                       findings: Sequence[Finding]) -> str:
    """Per-template logit difference and top heads; per-subject logit difference."""
    rob = results.get("robustness")
    if not rob:  # it ran (else the report says it was not run) and found fewer than two templates
        return note("No robustness analysis: the task's prompts come from fewer than two templates.")
    kinds = sorted({k for r in rob["templates"] for k in r["top_ablation"]}, key=lambda k: k != "zero")
    ab = results.get("head_ablation") or {}
    screened = any("method" in (ab.get(k) or {}) for k in ("zero", "mean"))

    def ci(r: Mapping[str, Any]) -> str:
        return esc(f"{fmt(r['mean'])} [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]")

    rows = [[esc(r["index"]), f'<span class="prompt">{esc(r["template"])}</span>', esc(r["n"]), ci(r),
             esc(f"{head_name(*r['top_dla']['head'])} ({fmt(r['top_dla']['value'], signed=True)})"),
             *[esc(f"{head_name(*r['top_ablation'][k]['head'])} ({fmt(r['top_ablation'][k]['value'], signed=True)})")
               if k in r["top_ablation"] else "" for k in kinds]] for r in rob["templates"]]
    header = ["#", "template", "prompts", "logit diff [95% CI]", "top DLA head",
              *[f"top {k}-ablation head (Δ)" for k in kinds]]
    srows = [[esc(s["subject"]), esc(s["subject_class"]), esc(s["n"]), ci(s)] for s in rob["subjects"]]
    return (
        note("The logit difference and the key heads, template by template: the mean over each template's "
             "prompts with its 95% bootstrap CI, the head with the largest |mean| direct logit attribution "
             "on those prompts, and the head whose ablation lowers their mean logit difference most "
             "(mean of the per-prompt changes"
             + ("; among the heads ablated exactly, the others screened out" if screened else "")
             + "). Explicit prompts are not counted.")
        + figure_html(figures, "robustness")
        + '<div class="scroll">' + table(header, rows, "prompts") + "</div>"
        + "<details><summary>Per subject</summary>"
        + table(["subject", "class", "prompts", "logit diff [95% CI]"], srows, "kv") + "</details>"
    )


def _robustness(results: Results) -> Finding | None:
    """Whether the top heads, and the logit difference, hold across templates."""
    rob = results.get("robustness")
    if not rob or len(rob.get("templates") or []) < 2:
        return None
    rows = rob["templates"]
    kh = rob["key_heads"]

    def agreement(a: dict, what: str) -> str:
        if a["agree"]:
            return f"{head_name(*a['head'])} is the top {what} in {a['count']} of {a['n_templates']} templates"
        parts = [f"{head_name(*h['head'])} in {len(h['templates'])}" for h in a["heads"][:4]]
        if len(a["heads"]) > 4:
            parts.append(f"{len(a['heads']) - 4} other heads in the rest")
        listed = ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"the top {what} differs across templates: {listed} of {a['n_templates']} templates"

    parts = [agreement(kh["dla"], "DLA head")]
    if "zero" in kh["ablation"]:
        parts.append(agreement(kh["ablation"]["zero"], "head by zero-ablation"))
    lo, hi = min(rows, key=lambda r: r["mean"]), max(rows, key=lambda r: r["mean"])
    n_pos = sum(1 for r in rows if r["ci"][0] > 0)
    text = (f"{parts[0][0].upper()}{parts[0][1:]}" + "".join(f"; {p}" for p in parts[1:])
            + f". The mean logit difference per template ranges from {fmt(lo['mean'])} {ci_text(lo['ci'])} "
              f"(template {lo['index']}) to {fmt(hi['mean'])} {ci_text(hi['ci'])} (template {hi['index']}); "
              f"its 95% CI lies above 0 in {n_pos} of {len(rows)} templates.")
    return Finding(text, "robustness")


SECTION = register(Section(
    name="robustness", title="Robustness across templates", render=section_robustness,
    analysis="robustness", keys=("robustness",),
    figures=(FigureSpec("robustness", "robustness", robustness_figure),), rules=(Rule(70, _robustness),),
))
