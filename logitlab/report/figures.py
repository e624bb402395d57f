"""Plotly figures of a ``results.json`` dict: one pure function per figure.

Every function takes the whole results dict (:class:`logitlab.results.Results`) and returns a
:class:`plotly.graph_objects.Figure`; :func:`build_figures` assembles those whose
input is present, keyed by stable ids (``logit_diff``, ``logit_lens``, …).
Diverging heatmaps are centred at 0 (``zmid=0``, ``RdBu``); strings from the
results are escaped for plotly's pseudo-HTML labels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from ._util import (
    fmt,
    is_matrix,
    layer_labels,
    plotly_text,
    unique_token_labels,
)

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
    if math.isfinite(mean) and math.isfinite(se):
        fig.add_hrect(y0=mean - se, y1=mean + se, fillcolor=GREY, opacity=0.25, line_width=0,
                      layer="below")
    if math.isfinite(mean):
        fig.add_hline(
            y=mean,
            line={"color": "black", "dash": "dash"},
            annotation_text=f"mean {fmt(mean)} ± {fmt(se)} (stderr)",
            annotation_position="top right",
            annotation_bgcolor="rgba(255,255,255,0.85)",
        )
    _layout(
        fig,
        f"Logit difference per prompt (accuracy {100 * float(ld.get('accuracy', math.nan)):.0f}%)",
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
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=vals,
            mode="lines+markers",
            line={"color": BLUE},
            customdata=err,
            hovertemplate="%{x}: %{y:.3f} ± %{customdata:.3f}<extra></extra>",
            name="mean logit diff",
        )
    )
    _layout(fig, "Logit lens: accumulated residual stream (± stderr)", 420, showlegend=False)
    fig.update_xaxes(title_text="residual stream position", type="category",
                     categoryorder="array", categoryarray=labels)
    fig.update_yaxes(title_text="logit difference", zeroline=True)
    return fig


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
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=vals,
            error_y={"type": "data", "array": err, "visible": True, "color": "#333"},
            marker_color=[_component_colour(s) for s in labels],
            customdata=err,
            hovertemplate="%{x}: %{y:.3f} ± %{customdata:.3f}<extra></extra>",
        )
    )
    _layout(fig, "Direct logit attribution per component (± stderr)", 420, showlegend=False)
    fig.update_xaxes(title_text="component (blue: attention, orange: MLP, green: embeddings)",
                     type="category", tickangle=-40 if len(labels) > 12 else 0)
    fig.update_yaxes(title_text="logit difference", zeroline=True)
    return fig


def _head_attr_fig(z: list[list[float]], err: Any, title: str, cbar: str) -> go.Figure:
    """Layer × head heatmap of head attributions (optionally with stderr on hover)."""
    x, y = _head_axes(z)
    if is_matrix(err):
        return _diverging_heatmap(z, x, y, title, cbar, "head",
                                  "%{y}%{x}: %{z:.3f} ± %{customdata:.3f}", err)
    return _diverging_heatmap(z, x, y, title, cbar, "head", "%{y}%{x}: %{z:.3f}")


def head_attribution_figure(results: Results) -> go.Figure:
    """Direct logit attribution per head (layer × head, diverging, centred at 0)."""
    detail = results.get("head_attribution_detail") or {}
    return _head_attr_fig(results["head_attribution"], detail.get("stderr"),
                          "Direct logit attribution per head", "logit diff")


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


def _position_patching(results: Results, key: str, what: str) -> go.Figure:
    """Layer × position patching heatmap with unique token tick labels."""
    p = results[key]
    z = p["values"]
    n_pos = max((len(r) for r in z), default=0)
    tokens = list(p.get("tokens") or [])
    tokens += ["?"] * (n_pos - len(tokens))
    x = unique_token_labels(tokens[:n_pos])
    title = f"Patching: {what}"
    return _diverging_heatmap(z, x, layer_labels(len(z)), title, "restored<br>(1 = clean)",
                              "position: token (clean prompt)", "%{y}, %{x}: %{z:.3f}")


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
    z = results["head_patching"]["values"]
    x, y = _head_axes(z)
    return _diverging_heatmap(z, x, y, "Patching: each head's output (all positions)",
                              "restored<br>(1 = clean)", "head", "%{y}%{x}: %{z:.3f}")


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
    "unembed_bias": ("unembed_bias", unembed_bias_figure),
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
