"""Transcoder features: the run report's ``features`` section (the features that matter for the logit difference
across prompts, with CIs) and the offline view of one attribution graph (``logitlab graph``'s graph.html)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from ..layout import BLUE, GREY, RED, error_bars, plot_layout
from ..markup import Figures, esc, figure_html, note, table
from ..page import page
from ..registry import FigureSpec, Finding, Section, register

__all__ = ["graph_figure", "graph_page", "features_figure"]

_KIND_COLOUR = {"feature": "#4c78a8", "error": GREY, "token": "#54a24b", "logit": "#e08214"}
MAX_EDGES = 400  # the strongest edges drawn (all kept edges stay in graph.json)


def graph_figure(g: Mapping[str, Any]) -> go.Figure:
    """Kept nodes by position (x) and layer (y: tokens below layer 0, logit targets above the last layer); the
    strongest kept edges as lines, blue positive, red negative, width by |weight|."""
    nodes = {n["id"]: n for n in g["nodes"] if n["kept"]}
    # spread the nodes sharing a (layer, position) cell horizontally
    cells: dict[tuple[int, int], list[int]] = {}
    for i, n in nodes.items():
        cells.setdefault((n["layer"], n["pos"]), []).append(i)
    xy: dict[int, tuple[float, float]] = {}
    for (layer, pos), ids in cells.items():
        for k, i in enumerate(ids):
            xy[i] = (pos + (k + 1) / (len(ids) + 1) - 0.5, float(layer))
    fig = go.Figure()
    edges = sorted(g["edges"], key=lambda e: -abs(e[2]))[:MAX_EDGES]
    top = max((abs(e[2]) for e in edges), default=1.0) or 1.0
    for e in edges:
        s, t, w = e
        if s not in xy or t not in xy:
            continue
        fig.add_trace(go.Scatter(x=[xy[s][0], xy[t][0]], y=[xy[s][1], xy[t][1]], mode="lines", hoverinfo="skip",
                                 line={"color": BLUE if w > 0 else RED, "width": 0.5 + 4 * abs(w) / top},
                                 opacity=0.5, showlegend=False))
    for kind, colour in _KIND_COLOUR.items():
        ids = [i for i, n in nodes.items() if n["kind"] == kind]
        if not ids:
            continue
        size = [8 + 20 * min(1.0, 4 * float(nodes[i].get("influence", 0.2) or 0.0)) for i in ids]
        fig.add_trace(go.Scatter(
            x=[xy[i][0] for i in ids], y=[xy[i][1] for i in ids], mode="markers", name=kind,
            marker={"color": colour, "size": size, "line": {"width": 1, "color": "#fff"}},
            text=[_hover(nodes[i]) for i in ids], hovertemplate="%{text}<extra></extra>"))
    T, L = len(g["tokens"]), int(g["n_layers"])
    plot_layout(fig, "Attribution graph (kept nodes and the strongest edges)", 160 + 34 * (L + 2))
    fig.update_xaxes(tickmode="array", tickvals=list(range(T)), ticktext=[repr(t)[1:-1] for t in g["token_strs"]],
                     title_text="position")
    fig.update_yaxes(tickmode="array", tickvals=[-1, *range(L), L], ticktext=["tokens", *map(str, range(L)), "logits"],
                     title_text="layer")
    return fig


def _hover(n: Mapping[str, Any]) -> str:
    label = esc(n["label"])
    if n["kind"] == "feature":
        return f"{label}<br>activation {n['activation']:.3g}<br>influence {n['influence']:.3g}"
    if n["kind"] == "logit":
        return f"{label}<br>value {n['value']:.3g} (p {n['prob']:.2%})"
    return f"{label}<br>influence {n.get('influence', 0):.3g}"


def graph_page(g: Mapping[str, Any]) -> str:
    """graph.html: the graph's figure, its scores and invariant check, and the kept features as a table."""
    s, c, counts = g["scores"], g["check"], g["counts"]
    div = graph_figure(g).to_html(full_html=False, include_plotlyjs=False, div_id="plot-graph",
                                  config={"displaylogo": False, "responsive": True}, default_width="100%")
    feats = sorted((n for n in g["nodes"] if n["kind"] == "feature" and n["kept"]), key=lambda n: -n["influence"])
    rows = [[esc(n["layer"]), esc(n["pos"]), esc(repr(g["token_strs"][n["pos"]])), esc(n["feature"]),
             esc(f"{n['activation']:.4g}"), esc(f"{n['influence']:.4g}")] for n in feats[:100]]
    body = (
        f"<section><h2>Graph</h2><p>Influence on: {esc(g['influence_on'])}. Replacement score "
        f"{s['replacement']:.3f}, completeness score {s['completeness']:.3f}; {counts['kept_features']} of "
        f"{counts['features']} active features and {counts['kept_edges']} edges kept. Exactness: Σ incoming edges "
        f"+ bias − value, at most {max(c.values()):.1e} of the largest value.</p>"
        f'<figure class="fig">{div}</figure>'
        + note("Nodes: features (blue), error nodes (grey), tokens (green), logit targets (orange); size by "
               "influence. Edges: direct effects in the local replacement model, blue positive, red negative.")
        + "<h3>Kept features, by influence</h3>"
        + table(["layer", "pos", "token", "feature", "activation", "influence"], rows, "kv")
        + "</section>")
    return page("attribution graph", "Attribution graph", g["prompt"], body, footer=f"logitlab · {g.get('model')}")


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
