"""The EAP-IG circuit drawn on a layer grid (x = layer, heads stacked per layer, MLPs below).

The reader picks how many of the top edges (by |score|) are drawn from the faithfulness curve's sizes (a menu in
the figure); it opens on the chosen circuit when that has at most :data:`DEFAULT_DRAWN` edges, else on the
largest curve size up to that. Edge width and opacity grow with |score| (relative to the top edge, the same in
every view), the strongest edges drawn last, so the few edges that carry most of the effect stand out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import GROUP, HEAD, INPUT_NAMES, MLP, at, ci_pair, ci_txt, num, pct_ci
from .._util import finite, fmt, head_name, layer_labels, plotly_text
from ..layout import NEG_RGB, POS_RGB, plot_layout

__all__ = ["DEFAULT_DRAWN", "MAX_DRAWN", "circuit_diagram_figure", "circuit_edges", "diagram_sizes",
           "edges_by_score", "kv_groups"]

#: Edges drawn at first (at most), and the edges of the findings' pool when no circuit was chosen.
DEFAULT_DRAWN = 50
DEFAULT_EDGES = DEFAULT_DRAWN
#: The largest size the menu offers.
MAX_DRAWN = 500
_PORT = {"q": -0.15, "k": 0.0, "v": 0.15}  # where q/k/v edges arrive, just left of the receiver


def edges_by_score(circ: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The scored edges, largest |score| first (stable)."""
    edges = [e for e in circ.get("edges") or [] if isinstance(e, dict) and finite(e.get("score"))]
    return sorted(edges, key=lambda e: -abs(float(e["score"])))


def circuit_edges(circ: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The chosen circuit's edges (the top ``chosen.n_edges`` by |score|), else the top DEFAULT_EDGES.

    Returns:
        The edges and whether they are the chosen circuit.
    """
    edges = edges_by_score(circ)
    n = (circ.get("chosen") or {}).get("n_edges")
    if isinstance(n, int) and n > 0:
        return edges[:n], True
    return edges[:DEFAULT_EDGES], False


def _node_xy(name: str, n_heads: int, n_layers: int) -> tuple[float, float] | None:
    """Diagram position of a node (x = layer, heads stacked downwards, MLP below); None if unrecognised."""
    if name == "input":
        return -1.0, (n_heads - 1) / 2
    if name == "logits":
        return n_layers + 0.3, (n_heads - 1) / 2
    if m := HEAD.fullmatch(name):
        return float(m.group(1)), float(m.group(2))
    if m := MLP.fullmatch(name):
        return int(m.group(1)) + 0.45, n_heads + 0.4
    return None


def _group_xy(name: str, kv_groups: int) -> tuple[float, float] | None:
    """A grouped key/value receiver ``L{l}G{k}``: left of its query heads, at their middle."""
    m = GROUP.fullmatch(name)
    if not m:
        return None
    k = int(m.group(2))
    return int(m.group(1)) - 0.2, k * kv_groups + (kv_groups - 1) / 2


def _shape(results: Results, circ: Mapping[str, Any]) -> tuple[int, int, int]:
    """(n_layers, n_heads, kv_groups) from the model section, else from the node names."""
    model = results.get("model") or {}
    heads = [tuple(map(int, m.groups())) for n in circ.get("nodes") or [] if (m := HEAD.fullmatch(str(n)))]
    mlps = [int(m.group(1)) for n in circ.get("nodes") or [] if (m := MLP.fullmatch(str(n)))]
    L = model.get("n_layers") if isinstance(model.get("n_layers"), int) else \
        max([l for l, _ in heads] + mlps + [-1]) + 1
    H = model.get("n_heads") if isinstance(model.get("n_heads"), int) else max([h for _, h in heads] + [-1]) + 1
    K = model.get("n_kv_heads")
    g = H // K if isinstance(K, int) and K > 0 and H % K == 0 else 1
    return max(L, 1), max(H, 1), g


def kv_groups(results: Results, circ: Mapping[str, Any]) -> int:
    """Query heads per key/value head."""
    return _shape(results, circ)[2]


def diagram_sizes(circ: Mapping[str, Any], n_edges: int) -> tuple[list[int], int]:
    """The sizes the menu offers (the faithfulness curve's sizes and the chosen circuit's, up to the edges in the
    results and :data:`MAX_DRAWN`) and the one drawn at first."""
    cap = min(n_edges, MAX_DRAWN)
    chosen = (circ.get("chosen") or {}).get("n_edges")
    grid = [k for k in (circ.get("faithfulness") or {}).get("n_edges") or [] if isinstance(k, int)]
    sizes = sorted({k for k in [*grid, chosen] if isinstance(k, int) and 0 < k <= cap})
    if isinstance(chosen, int) and chosen > cap and cap > 0:
        sizes = sorted({*sizes, cap})
    if not sizes:
        sizes = [min(cap, DEFAULT_DRAWN)] if cap > 0 else [0]
    if isinstance(chosen, int) and 0 < chosen <= DEFAULT_DRAWN and chosen in sizes:
        return sizes, chosen
    small = [k for k in sizes if k <= DEFAULT_DRAWN]
    return sizes, (max(small) if small else sizes[0])


def _title(circ: Mapping[str, Any], n: int, n_results: int) -> str:
    """The title of the view of the top ``n`` edges."""
    ch = circ.get("chosen") or {}
    n_chosen = ch.get("n_edges") if isinstance(ch.get("n_edges"), int) and ch["n_edges"] > 0 else None
    fa = circ.get("faithfulness") or {}
    grid = list(fa.get("n_edges") or [])
    rec, rci = (num(ch.get("recovered")), ci_pair(ch.get("recovered_ci"))) if n == n_chosen else (None, None)
    if rec is None and n in grid:
        i = grid.index(n)
        rec, rci = num(at(fa.get("recovered"), i)), ci_pair(at(fa.get("recovered_ci"), i))
    recovering = f", recovering {pct_ci(rec, rci)} of the gap" if rec is not None else ""
    if n_chosen is None:
        return f"Top {n} edges by |score| (no circuit chosen){recovering}"
    if n == n_chosen:
        title = f"Circuit: the {n} edges chosen{recovering}"
        return title + (f"; {n_results} of them in the results" if n_results < n else "")
    if n < n_chosen:
        return f"Circuit: the top {n} of the {n_chosen} edges chosen{recovering}"
    return f"Top {n} edges by |score|{recovering} (the circuit chosen has {n_chosen})"


def _view(edges: list[dict[str, Any]], names: list[str], L: int, H: int, g: int, smax: float, visible: bool,
          legend: set[str]) -> tuple[list[go.Scatter], int]:
    """The traces of one view (edge lines by sign and width class, their midpoints, the nodes) and how many edges
    it could not place."""
    bins: dict[tuple[int, bool], tuple[list[float | None], list[float | None]]] = {}
    mids: tuple[list[float], list[float], list[list[str]]] = ([], [], [])
    used: dict[str, list[float]] = {}  # node → [edges in, edges out, Σ|score| in, Σ|score| out]
    skipped = 0
    for e in edges:
        snd, rcv, inp = str(e.get("sender", "")), str(e.get("receiver", "")), str(e.get("input", ""))
        a = _node_xy(snd, H, L)
        b = _node_xy(rcv, H, L) or _group_xy(rcv, g)
        if a is None or b is None:
            skipped += 1
            continue
        s = float(e["score"])
        bx, by = b[0] - (0.07 if inp in _PORT else 0.0), b[1] + _PORT.get(inp, 0.0)
        w = min(4, int(5 * abs(s) / smax))  # five width classes
        xs, ys = bins.setdefault((w, s >= 0), ([], []))
        xs += [a[0] + 0.08, bx, None]
        ys += [a[1], by, None]
        ci = ci_pair(e.get("score_ci"))
        what = f" ({INPUT_NAMES[inp]} input)" if inp in INPUT_NAMES else ""
        mids[0].append((a[0] + bx) / 2)
        mids[1].append((a[1] + by) / 2)
        mids[2].append([f"{plotly_text(snd, 30)} → {plotly_text(rcv, 30)}{what}",
                        f"{fmt(s, signed=True)}" + (f", 95% CI{ci_txt(ci)}" if ci else "")])
        for node, k in ((snd, 1), (rcv, 0)):
            u = used.setdefault(node, [0, 0, 0.0, 0.0])
            u[k] += 1
            u[2 + k] += abs(s)
    traces: list[go.Scatter] = []
    for w, sign in sorted(bins):  # weak edges first: the strong ones are drawn on top
        xs, ys = bins[(w, sign)]
        group = "+" if sign else "−"
        traces.append(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", legendgroup=group, visible=visible,
            line={"color": f"rgba({POS_RGB if sign else NEG_RGB},{0.25 + 0.15 * w:.2f})", "width": 1 + 1.6 * w},
            name="positive score" if sign else "negative score", showlegend=visible and group not in legend))
        if visible:
            legend.add(group)
    traces.append(go.Scatter(x=mids[0], y=mids[1], mode="markers", customdata=mids[2], showlegend=False,
                             visible=visible, marker={"size": 6, "color": "rgba(80,80,80,0.18)"},
                             hovertemplate="%{customdata[0]}<br>score %{customdata[1]}<extra>edge</extra>"))
    names = names + [n for n in used if n not in names]
    for active in (False, True):
        pts = [(n, xy) for n in names if (n in used or n in ("input", "logits")) == active
               and (xy := _node_xy(n, H, L) or _group_xy(n, g)) is not None]
        custom = [[plotly_text(n, 30), f"{int(used[n][0])} in (Σ|score| {fmt(used[n][2])}), {int(used[n][1])} out "
                   f"(Σ|score| {fmt(used[n][3])})" if n in used else "not in the drawn circuit"] for n, _ in pts]
        traces.append(go.Scatter(
            x=[xy[0] for _, xy in pts], y=[xy[1] for _, xy in pts], customdata=custom, showlegend=False,
            visible=visible, mode="markers+text" if active else "markers",
            text=[c[0] for c in custom] if active else None, textposition="top center", textfont={"size": 9},
            marker={"size": 11 if active else 6, "color": "#17324d" if active else "#d0d6dd",
                    "symbol": ["square" if MLP.fullmatch(n) else "diamond" if GROUP.fullmatch(n) else "circle"
                               for n, _ in pts], "line": {"width": 0}},
            hovertemplate="%{customdata[0]}<br>%{customdata[1]}<extra></extra>"))
    return traces, skipped


def circuit_diagram_figure(results: Results) -> go.Figure:
    """The top edges on a layer grid, blue +, red −, width and opacity ∝ |score|; a menu picks how many."""
    circ = results["circuit"]
    L, H, g = _shape(results, circ)
    edges = edges_by_score(circ)
    sizes, first = diagram_sizes(circ, len(edges))
    smax = max((abs(float(e["score"])) for e in edges), default=1.0) or 1.0
    names = [str(n) for n in circ.get("nodes") or []] or (
        ["input"] + [f"{head_name(l, h)}" for l in range(L) for h in range(H)] + [f"M{l}" for l in range(L)]
        + ["logits"])
    fig = go.Figure()
    spans, skipped, legend = [], 0, set()
    for n in sizes:
        traces, skip = _view(edges[:n], names, L, H, g, smax, n == first, legend)
        spans.append((len(fig.data), len(fig.data) + len(traces)))
        fig.add_traces(traces)
        skipped = max(skipped, skip)
    n_traces = len(fig.data)
    titles = [_title(circ, n, len(edges)) for n in sizes]
    if skipped:
        fig.add_annotation(text=f"{skipped} edge(s) with unrecognised node names not drawn", x=0, y=-0.12,
                           xref="paper", yref="paper", showarrow=False, xanchor="left",
                           font={"size": 11, "color": "#888888"})
    menu = []
    if len(sizes) > 1:
        chosen = (circ.get("chosen") or {}).get("n_edges")
        menu = [{"type": "dropdown", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom", "showactive": True,
                 "active": sizes.index(first), "pad": {"b": 4},
                 "buttons": [{"label": f"top {n} edges" + (" (chosen)" if n == chosen else ""), "method": "update",
                              "args": [{"visible": [a <= t < b for t in range(n_traces)]}, {"title.text": title}]}
                             for n, (a, b), title in zip(sizes, spans, titles)]}]
    plot_layout(fig, titles[sizes.index(first)], int(max(380, 110 + 36 * (H + 2))),
                legend={"orientation": "h", "y": -0.06, "x": 1, "xanchor": "right", "yanchor": "top"},
                updatemenus=menu)
    fig.update_layout(margin={"t": 80})
    fig.update_xaxes(tickvals=[-1.0, *range(L), L + 0.3], ticktext=["input", *layer_labels(L), "logits"],
                     showgrid=False, zeroline=False, range=[-1.5, L + 0.8])
    fig.update_yaxes(tickvals=[*range(H), H + 0.4], ticktext=[*(f"H{h}" for h in range(H)), "MLP"],
                     autorange="reversed", showgrid=False, zeroline=False)
    return fig
