"""The report's plot layout and colour scales, shared by every figure of report.html and compare.html."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from ._util import finite, layer_labels

__all__ = [
    "BLUE", "COMPONENT_COLOURS", "DIVERGING", "GREY", "NEG_RGB", "PALETTE", "POS_RGB", "RED", "TEMPLATE",
    "ci_pairs", "colour", "diverging_heatmap", "error_bars", "head_axes", "heatmap_height", "plot_layout",
]

DIVERGING = "RdBu"
TEMPLATE = "plotly_white"
BLUE = "#2166ac"
RED = "#b2182b"
GREY = "#888888"
POS_RGB, NEG_RGB = "33,102,172", "178,24,43"  # BLUE / RED as rgb components
COMPONENT_COLOURS = {"attn": "#4c78a8", "mlp": "#f58518", "embed": "#54a24b"}
#: One colour per run on compare.html.
PALETTE = ("#2166ac", "#d6604d", "#1b7837", "#762a83", "#e08214", "#35978f", "#c51b7d", "#8c510a")


def plot_layout(fig: go.Figure, title: str, height: int, **kwargs: Any) -> go.Figure:
    """Apply the shared layout (template, title, margins, height)."""
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01, "xanchor": "left"},
        height=height,
        margin={"l": 70, "r": 30, "t": 60, "b": 60},
        **kwargs,
    )
    return fig


def colour(i: int) -> str:
    """The ``i``-th run's colour."""
    return PALETTE[i % len(PALETTE)]


def heatmap_height(n_rows: int) -> int:
    """A comfortable heatmap height for ``n_rows`` rows."""
    return int(min(900, max(320, 150 + 26 * n_rows)))


def diverging_heatmap(
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
    plot_layout(fig, title, heatmap_height(len(y)))
    fig.update_xaxes(title_text=xaxis_title, type="category",
                     tickangle=-35 if len(x) > 12 or sum(map(len, x)) > 100 else 0)
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    return fig


def head_axes(z: Sequence[Sequence[float]]) -> tuple[list[str], list[str]]:
    """x (head) and y (layer) labels of a layer × head matrix."""
    n_heads = max((len(r) for r in z), default=0)
    return [f"H{h}" for h in range(n_heads)], layer_labels(len(z))


def ci_pairs(ci: Any, n: int) -> list[tuple[float, float]] | None:
    """``ci`` as n finite (low, high) pairs, or None when absent or malformed."""
    if not isinstance(ci, list) or len(ci) != n:
        return None
    if not all(isinstance(c, list) and len(c) == 2 and finite(c[0]) and finite(c[1]) for c in ci):
        return None
    return [(float(c[0]), float(c[1])) for c in ci]


def error_bars(values: Sequence[float], cis: Sequence[Any]) -> dict[str, Any] | None:
    """Asymmetric error bars from 95% CIs (None when some CI is missing or not finite)."""
    if len(cis) != len(values) or not all(isinstance(c, (list, tuple)) and len(c) == 2 and finite(c[0])
                                          and finite(c[1]) for c in cis):
        return None
    return {"type": "data", "symmetric": False, "array": [max(0.0, c[1] - v) for v, c in zip(values, cis)],
            "arrayminus": [max(0.0, v - c[0]) for v, c in zip(values, cis)], "color": "#777", "thickness": 1.2}
