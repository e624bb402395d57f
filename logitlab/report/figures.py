"""Plotly figures of a ``results.json`` dict: one pure function per figure.

Every function takes the whole results dict (:class:`logitlab.results.Results`) and returns a
:class:`plotly.graph_objects.Figure`; :func:`build_figures` assembles those whose
input is present, keyed by stable ids (``logit_diff``, ``logit_lens``, …).
Diverging heatmaps are centred at 0 (``zmid=0``, ``RdBu``); strings from the
results are escaped for plotly's pseudo-HTML labels. Averages over prompts show the
standard error and, where the results hold one, the 95% bootstrap CI (a lighter band,
grey whiskers, or on hover).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from ._util import (
    finite,
    fmt,
    head_name,
    is_matrix,
    layer_labels,
    plotly_text,
    unique_token_labels,
)
from .circuit import CIRCUIT_FIGURES

logger = logging.getLogger(__name__)

Figure = go.Figure
DIVERGING = "RdBu"
TEMPLATE = "plotly_white"
BLUE = "#2166ac"
RED = "#b2182b"
GREY = "#888888"
COMPONENT_COLOURS = {"attn": "#4c78a8", "mlp": "#f58518", "embed": "#54a24b"}


def _layout(fig: go.Figure, title: str, height: int, **kwargs: Any) -> go.Figure:
    """Apply the shared layout (template, title, margins, height)."""
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01, "xanchor": "left"},
        height=height,
        margin={"l": 70, "r": 30, "t": 60, "b": 60},
        **kwargs,
    )
    return fig


def _heatmap_height(n_rows: int) -> int:
    """A comfortable heatmap height for ``n_rows`` rows."""
    return int(min(900, max(320, 150 + 26 * n_rows)))


def _diverging_heatmap(
    z: Sequence[Sequence[float]],
    x: Sequence[str],
    y: Sequence[str],
    title: str,
    colorbar_title: str,
    xaxis_title: str,
    hover: str,
    customdata: Any = None,
) -> go.Figure:
    """A heatmap with a diverging colour scale centred at 0, first row at the top."""
    fig = go.Figure(
        go.Heatmap(
            z=[list(map(float, row)) for row in z],
            x=list(x),
            y=list(y),
            zmid=0.0,
            colorscale=DIVERGING,
            colorbar={"title": {"text": colorbar_title, "side": "right"}},
            customdata=customdata,
            hovertemplate=hover + "<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    _layout(fig, title, _heatmap_height(len(y)))
    fig.update_xaxes(title_text=xaxis_title, type="category",
                     tickangle=-35 if len(x) > 12 or sum(map(len, x)) > 100 else 0)
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    return fig


def _head_axes(z: Sequence[Sequence[float]]) -> tuple[list[str], list[str]]:
    """x (head) and y (layer) labels of a layer × head matrix."""
    n_heads = max((len(r) for r in z), default=0)
    return [f"H{h}" for h in range(n_heads)], layer_labels(len(z))


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
    _layout(
        fig,
        f"Logit difference per prompt (correct beats incorrect on "
        f"{100 * float(ld.get('accuracy', math.nan)):.0f}% of prompts)",
        420,
        showlegend=False,
    )
    fig.update_xaxes(title_text="prompt", type="category")
    fig.update_yaxes(title_text="logit(correct) − logit(incorrect)", zeroline=True)
    return fig


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
    ci = _ci_pairs(lens.get("ci"), len(vals))
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
    _layout(fig, "Logit lens: accumulated residual stream (± stderr" + (", lighter: 95% CI)" if ci else ")"),
            420, showlegend=False)
    fig.update_xaxes(title_text="residual stream position", type="category",
                     categoryorder="array", categoryarray=labels)
    fig.update_yaxes(title_text="logit difference", zeroline=True)
    return fig


def _ci_pairs(ci: Any, n: int) -> list[tuple[float, float]] | None:
    """``ci`` as n finite (low, high) pairs, or None when absent or malformed."""
    if not isinstance(ci, list) or len(ci) != n:
        return None
    if not all(isinstance(c, list) and len(c) == 2 and finite(c[0]) and finite(c[1]) for c in ci):
        return None
    return [(float(c[0]), float(c[1])) for c in ci]


def _component_colour(label: str) -> str:
    """Colour of a layer-attribution component by its kind."""
    if "attn" in label:
        return COMPONENT_COLOURS["attn"]
    if "mlp" in label:
        return COMPONENT_COLOURS["mlp"]
    return COMPONENT_COLOURS["embed"]


def layer_attribution_figure(results: Results) -> go.Figure:
    """Direct logit attribution per component (bars with stderr error bars)."""
    la = results["layer_attribution"]
    labels = [str(s) for s in la["labels"]]
    vals = [float(v) for v in la["values"]]
    err = [float(v) for v in (la.get("stderr") or [0.0] * len(vals))]
    ci = _ci_pairs(la.get("ci"), len(vals))
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=vals,
            error_y={"type": "data", "array": err, "visible": True, "color": "#333", "thickness": 2,
                     "width": 0},
            marker_color=[_component_colour(s) for s in labels],
            customdata=[[e, *(ci[i] if ci else (v, v))] for i, (v, e) in enumerate(zip(vals, err))],
            hovertemplate="%{x}: %{y:.3f} ± %{customdata[0]:.3f}"
            + (", 95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]" if ci else "") + "<extra></extra>",
        )
    )
    if ci is not None:  # 95% CI whiskers over the stderr bars
        fig.add_trace(go.Scatter(
            x=labels, y=vals, mode="markers", marker={"size": 1, "color": GREY}, hoverinfo="skip",
            error_y={"type": "data", "symmetric": False, "array": [c[1] - v for c, v in zip(ci, vals)],
                     "arrayminus": [v - c[0] for c, v in zip(ci, vals)], "color": GREY, "thickness": 1,
                     "width": 5},
            name="95% CI"))
    _layout(fig, "Direct logit attribution per component (± stderr" + ("; whiskers: 95% CI)" if ci else ")"),
            420, showlegend=False)
    fig.update_xaxes(title_text="component (blue: attention, orange: MLP, green: embeddings)",
                     type="category", tickangle=-40 if len(labels) > 12 else 0)
    fig.update_yaxes(title_text="logit difference", zeroline=True)
    return fig


def _head_attr_fig(z: list[list[float]], err: Any, title: str, cbar: str, ci: Any = None) -> go.Figure:
    """Layer × head heatmap of head attributions (optionally with stderr and the 95% CI on hover)."""
    x, y = _head_axes(z)
    if is_matrix(err) and isinstance(ci, list) and len(ci) == len(z):
        custom = [[[float(err[l][h]), float(ci[l][h][0]), float(ci[l][h][1])] for h in range(len(row))]
                  for l, row in enumerate(z)]
        return _diverging_heatmap(z, x, y, title, cbar, "head",
                                  "%{y}%{x}: %{z:.3f} ± %{customdata[0]:.3f} (stderr), "
                                  "95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]", custom)
    if is_matrix(err):
        return _diverging_heatmap(z, x, y, title, cbar, "head",
                                  "%{y}%{x}: %{z:.3f} ± %{customdata:.3f}", err)
    return _diverging_heatmap(z, x, y, title, cbar, "head", "%{y}%{x}: %{z:.3f}")


def head_attribution_figure(results: Results) -> go.Figure:
    """Direct logit attribution per head (layer × head, diverging, centred at 0)."""
    detail = results.get("head_attribution_detail") or {}
    return _head_attr_fig(results["head_attribution"], detail.get("stderr"),
                          "Direct logit attribution per head", "logit diff", detail.get("ci"))


def head_attribution_naive_figure(results: Results) -> go.Figure:
    """The naive (pre-post-norm) head attribution, for comparison only."""
    naive = results["head_attribution_detail"]["naive"]
    return _head_attr_fig(naive, None, "Naive head attribution (before the post-attention norm; "
                          "comparison only)", "logit diff")


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
        x, y = _head_axes(z)
        hover = ("%{y}%{x}: Δ %{z:.3f} ± %{customdata[0]:.3f} (paired stderr), "
                 "95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
        return _diverging_heatmap(z, x, y, title, cbar, "head", hover, custom)
    z = [[float(v) - base for v in row] for row in part[metric]]  # type: ignore[literal-required]
    err = part.get(f"{metric}_stderr")
    x, y = _head_axes(z)
    title = f"{kind.capitalize()}-ablation: {name} − baseline"
    if is_matrix(err):
        hover = "%{y}%{x}: Δ %{z:.3f} ± %{customdata:.3f}"
        return _diverging_heatmap(z, x, y, title, cbar, "head", hover, err)
    return _diverging_heatmap(z, x, y, title, cbar, "head", "%{y}%{x}: Δ %{z:.3f}")


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


def _pairs_note(p: Any) -> str:
    """``" (12 pairs, 3 excluded: gap < 1 logit)"``, or ``""`` without counts."""
    n, x = p.get("n_pairs"), p.get("n_excluded")
    if not isinstance(n, int):
        return ""
    note = f"{n} pair{'' if n == 1 else 's'}"
    if isinstance(x, int) and x:
        note += f", {x} excluded: gap < 1 logit"
    return f" ({note})"


def _patching_view(p: Any, width_labels: Callable[[int], list[str]] | None) -> tuple[list[list[float]], list[str], Any]:
    """z, x labels and hover customdata ([stderr, ci low, ci high] per cell, or None) of one set of pairs."""
    z = [list(map(float, row)) for row in p["values"]]
    width = max((len(r) for r in z), default=0)
    if width_labels is None:
        tokens = list(p.get("tokens") or [])
        tokens += ["?"] * (width - len(tokens))
        x = unique_token_labels(tokens[:width])
    else:
        x = width_labels(width)
    err, ci = p.get("stderr"), p.get("ci")
    custom = None
    if is_matrix(err) and isinstance(ci, list) and len(ci) == len(z) and len(err) == len(z):
        custom = [[[float(err[l][j]), float(ci[l][j][0]), float(ci[l][j][1])] for j in range(len(row))]
                  for l, row in enumerate(z)]
    return z, x, custom


def _patching_figure(p: Any, what: str, xaxis_title: str, width_labels: Callable[[int], list[str]] | None = None,
                     ) -> go.Figure:
    """Patching heatmap of the set ``values`` holds; a menu switches to the pooled and per-template sets."""
    main = "reference pairs" if p.get("pairs") == "reference" else "templates pooled" if p.get("pairs") else ""
    views = [(main, p)]
    if isinstance(p.get("pooled"), dict):
        views.append(("templates pooled", p["pooled"]))
    for t in p.get("per_template") or []:
        if isinstance(t, dict):
            views.append((f"template {plotly_text(t.get('template'), 40)}", t))
    built = []
    for label, v in views:
        z, x, custom = _patching_view(v, width_labels)
        title = f"Patching: {what}" + (f", {label}" if label else "") + _pairs_note(v)
        built.append((label, z, x, custom, title))
    _, z, x, custom, title = built[0]
    hover = "%{y}, %{x}: %{z:.3f}" + (" ± %{customdata[0]:.3f} (stderr), 95% CI [%{customdata[1]:.3f}, "
                                      "%{customdata[2]:.3f}]" if custom is not None else "")
    fig = _diverging_heatmap(z, x, layer_labels(len(z)), title, "restored<br>(1 = clean)", xaxis_title, hover,
                             custom)
    if not z:
        fig.add_annotation(text="no pair with a clean − corrupted gap of at least 1 logit", x=0.5, y=0.5,
                           xref="paper", yref="paper", showarrow=False, font={"size": 14, "color": GREY})
    if len(built) > 1:
        fig.update_layout(updatemenus=[{
            "type": "dropdown", "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "top", "showactive": True,
            "buttons": [{"label": label[:48], "method": "update",
                         "args": [{"z": [zz], "x": [xx], "y": [layer_labels(len(zz))], "customdata": [cc]},
                                  {"title.text": tt}]}
                        for label, zz, xx, cc, tt in built]}])
    return fig


def _position_patching(results: Results, key: str, what: str) -> go.Figure:
    """Layer × position patching heatmap with unique token tick labels and the CI on hover."""
    return _patching_figure(results[key], what, "position: token (clean prompt; {name} = the subject)")


def resid_patching_figure(results: Results) -> go.Figure:
    """Residual-stream patching per layer and position."""
    return _position_patching(results, "resid_patching", "residual stream")


def attn_patching_figure(results: Results) -> go.Figure:
    """Attention-output patching per layer and position."""
    return _position_patching(results, "attn_patching", "attention output")


def mlp_patching_figure(results: Results) -> go.Figure:
    """MLP-output patching per layer and position."""
    return _position_patching(results, "mlp_patching", "MLP output")


def head_patching_figure(results: Results) -> go.Figure:
    """Head-output patching per layer and head (all positions)."""
    return _patching_figure(results["head_patching"], "each head's output (all positions)", "head",
                            lambda n: [f"H{h}" for h in range(n)])


def unembed_bias_figure(results: Results) -> go.Figure:
    """The unembedding bias of the first prompt's two answers."""
    ub = results["unembed_bias"]
    c, i = str(ub.get("correct", "correct")), str(ub.get("incorrect", "incorrect"))
    xs = [f"correct: {plotly_text(c, 20)}", f"incorrect: {plotly_text(i, 20)}"]
    present = bool(ub.get("present"))
    ys = [float(ub.get("b_U_correct") or 0.0), float(ub.get("b_U_incorrect") or 0.0)]
    fig = go.Figure(go.Bar(x=xs, y=ys if present else [0.0, 0.0], marker_color=[BLUE, RED],
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    if present:
        title = f"Unembedding bias b_U (difference {fmt(ub.get('difference'), signed=True)})"
    else:
        title = "Unembedding bias: the model has none"
        fig.add_annotation(text="no unembedding bias", x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font={"size": 16, "color": GREY})
    _layout(fig, title, 340, showlegend=False)
    fig.update_xaxes(type="category")
    fig.update_yaxes(title_text="b_U", zeroline=True)
    return fig


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
    _layout(fig, "Logit difference per template (95% bootstrap CI over its prompts)", 380, showlegend=False)
    fig.update_xaxes(title_text="template", type="category")
    fig.update_yaxes(title_text="mean logit difference", zeroline=True)
    return fig


#: figure id → (results key that must be present, builder)
FIGURES: dict[str, tuple[str, Callable[[Results], go.Figure]]] = {
    "logit_diff": ("logit_diff", logit_diff_figure),
    "logit_lens": ("logit_lens", logit_lens_figure),
    "layer_attribution": ("layer_attribution", layer_attribution_figure),
    "head_attribution": ("head_attribution", head_attribution_figure),
    "head_attribution_naive": ("head_attribution_detail.naive", head_attribution_naive_figure),
    "head_ablation_zero_logit_diff": ("head_ablation.zero", head_ablation_zero_logit_diff_figure),
    "head_ablation_zero_loss": ("head_ablation.zero", head_ablation_zero_loss_figure),
    "head_ablation_mean_logit_diff": ("head_ablation.mean", head_ablation_mean_logit_diff_figure),
    "head_ablation_mean_loss": ("head_ablation.mean", head_ablation_mean_loss_figure),
    "resid_patching": ("resid_patching", resid_patching_figure),
    "attn_patching": ("attn_patching", attn_patching_figure),
    "mlp_patching": ("mlp_patching", mlp_patching_figure),
    "head_patching": ("head_patching", head_patching_figure),
    **CIRCUIT_FIGURES,  # attribution patching, path patching, the EAP-IG circuit
    "unembed_bias": ("unembed_bias", unembed_bias_figure),
    "robustness": ("robustness", robustness_figure),
}


def lookup(results: Results, dotted: str) -> Any:
    """``results["a"]["b"]`` for ``"a.b"``; None when any part is absent."""
    cur: Any = results
    for part in dotted.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            return None
        cur = cur[part]
    return cur


def build_figures(results: Results) -> dict[str, go.Figure]:
    """Build every figure whose input is present in ``results``.

    Args:
        results: A ``results.json`` dict (schema version 1).

    Returns:
        Figures keyed by stable id, in report order; absent/null inputs are skipped,
        and a figure that fails on malformed input is skipped with a warning.
    """
    out: dict[str, go.Figure] = {}
    for fig_id, (key, builder) in FIGURES.items():
        if lookup(results, key) is None:
            continue
        try:
            out[fig_id] = builder(results)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            logger.warning("Skipping figure %r: malformed %r in results (%s)", fig_id, key, exc)
    return out


__all__ = ["FIGURES", "build_figures"]
