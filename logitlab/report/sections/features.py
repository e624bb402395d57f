"""Transcoder features: the run report's ``features`` section (the features that matter for the logit difference
across prompts, with CIs; it holds no single graph). The offline view of one attribution graph (``logitlab
graph``'s graph.html, with its feature cards) is :mod:`._graph_view`, re-exported here."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from logitlab.results import Results

from ..layout import BLUE, error_bars, plot_layout
from ..markup import Figures, esc, figure_html, note, table
from ..registry import FigureSpec, Finding, Section, register
from ._graph_view import graph_figure, graph_page

__all__ = ["graph_figure", "graph_page", "features_figure"]


# ---- the run report's section -----------------------------------------------------------------------------
def features_figure(results: Results) -> go.Figure:
    """The top features' mean influence on the logit difference with 95% CIs over prompts."""
    top = results["features"]["top"]  # type: ignore[typeddict-item]
    labels = [f"L{r['layer']}/{r['feature']}" for r in top]
    means = [float(r["mean"]) for r in top]
    fig = go.Figure(go.Bar(x=labels, y=means, marker_color=BLUE, error_y=error_bars(means, [r["ci"] for r in top]),
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    plot_layout(fig, "Features' influence on the logit difference (mean over prompts, 95% CI)", 360,
                showlegend=False)
    fig.update_xaxes(type="category", title_text="layer/feature")
    fig.update_yaxes(title_text="influence")
    return fig


def section_features(results: Results, figures: Figures, findings: Sequence[Finding]) -> str:
    f = results["features"]  # type: ignore[typeddict-item]
    rep, comp = f["replacement"], f["completeness"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    rows = [[esc(r["layer"]), esc(r["feature"]), esc(f"{r['mean']:.4f}"),
             esc(f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]"), esc(f"{r['direct']:+.4f}"), esc(r["n_active"])]
            for r in f["top"]]
    return (f"<p>Attribution graphs of {esc(f['n_prompts'])} prompts over the transcoders {esc(f['transcoders'])}: "
            f"mean replacement score {mean(rep):.3f}, completeness {mean(comp):.3f}; exactness residual at most "
            f"{f['max_check']:.1e}.</p>" + figure_html(figures, "features")
            + table(["layer", "feature", "mean influence", "95% CI", "direct effect", "prompts active"], rows, "kv")
            + note("Influence: circuit-tracer's normalised influence on the logit-difference target, direct and "
                   "through other nodes, summed over the positions where the feature is active (0 where inactive)."))


SECTION = register(Section(
    name="features", title="Transcoder features", order=990, render=section_features, analysis="features",
    keys=("features",), figures=(FigureSpec("features", "features", features_figure),), omit_when_not_run=True,
))
