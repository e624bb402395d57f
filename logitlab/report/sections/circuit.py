"""The report's EAP-IG circuit section: edge scores of the top edges, largest |score| first, the faithfulness
curve and the circuit chosen at its threshold (the diagram: :mod:`._circuit_diagram`).

Without the ``circuit`` key (a run that did not discover a circuit) the section is left out and it yields no
finding. Figures are pure
functions results → figure; every string from the results is escaped (``plotly_text`` in figures, ``esc`` in
HTML). The circuit's findings claim no more than the numbers allow:

* the chosen circuit's recovery is stated with its CI next to the random circuits' of the same size, "above
  the random circuits" only when the two CIs do not overlap; when no circuit reaches the threshold the
  sentence says so;
* a chain X → Y → logits is named only from edges of the drawn circuit whose 95% CIs exclude 0
  (:func:`top_path`), and the top edge's lead over the next is flagged when their CIs overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import GROUP, INPUT_NAMES, at, ci_pair, ci_txt, excludes_zero, magnitude, num, pairs_txt, pct, pct_ci
from .._util import finite, fmt, head_name, plotly_text
from ..compare_runs import Run, compare_block
from ..layout import POS_RGB, colour, error_bars, plot_layout
from ..markup import esc, figure_html, note, table
from ..registry import ComparePart, FigureSpec, Finding, Rule, Section, register
from ._circuit_diagram import circuit_diagram_figure, circuit_edges, diagram_sizes, edges_by_score, kv_groups

#: Edges a chain through the top edge adds on each side at most.
MAX_HOPS = 3


def circuit_faithfulness_figure(results: Results) -> go.Figure:
    """Share of the gap recovered vs circuit size (log x), with CI bands, the random baseline and the threshold."""
    circ = results["circuit"]
    fa = circ["faithfulness"]
    pts = [(float(k), float(r), ci_pair(at(fa.get("recovered_ci"), i)), num(at(fa.get("random_mean"), i)),
            ci_pair(at(fa.get("random_ci"), i)))
           for i, (k, r) in enumerate(zip(fa["n_edges"], fa["recovered"])) if finite(k) and float(k) > 0 and finite(r)]
    if not pts:
        raise ValueError("circuit.faithfulness has no point with n_edges > 0")
    x = [p[0] for p in pts]
    fig = go.Figure()

    def band(lo_hi: list[tuple[float, float] | None], xs: list[float], rgb: str, name: str) -> None:
        keep = [(xv, c) for xv, c in zip(xs, lo_hi) if c is not None]
        if keep:
            fig.add_trace(go.Scatter(x=[k for k, _ in keep] + [k for k, _ in keep][::-1],
                                     y=[c[1] for _, c in keep] + [c[0] for _, c in keep][::-1], fill="toself",
                                     mode="lines", line={"width": 0}, fillcolor=f"rgba({rgb},0.15)",
                                     hoverinfo="skip", name=name))

    band([p[4] for p in pts], x, "120,120,120", "random: 95% CI")
    rnd = [(p[0], p[3], p[4]) for p in pts if p[3] is not None]
    if rnd:
        fig.add_trace(go.Scatter(
            x=[r[0] for r in rnd], y=[r[1] for r in rnd], mode="lines+markers", name="random circuits (mean)",
            line={"color": "#888888", "dash": "dash"}, marker={"size": 4},
            customdata=[pct_ci(r[1], r[2]) for r in rnd],
            hovertemplate="%{x} random edges: %{customdata}<extra></extra>"))
    band([p[2] for p in pts], x, POS_RGB, "circuit: 95% CI")
    fig.add_trace(go.Scatter(
        x=x, y=[p[1] for p in pts], mode="lines+markers", name="top edges by |score|",
        line={"color": f"rgb({POS_RGB})"}, marker={"size": 6},
        customdata=[pct_ci(p[1], p[2]) for p in pts],
        hovertemplate="top %{x} edges: %{customdata} of the gap (95% CI)<extra></extra>"))
    ch = circ.get("chosen") or {}
    thr = num(ch.get("threshold"))
    if thr is not None:
        fig.add_hline(y=thr, line={"color": "#555555", "dash": "dot", "width": 1},
                      annotation_text=f"threshold {pct(thr)}", annotation_position="bottom right")
    cn, cr, cci = ch.get("n_edges"), num(ch.get("recovered")), ci_pair(ch.get("recovered_ci"))
    if isinstance(cn, int) and cn > 0 and cr is not None:
        fig.add_trace(go.Scatter(
            x=[cn], y=[cr], mode="markers", name=f"chosen: {cn} edges", marker={"size": 14, "symbol": "star",
                                                                                 "color": "#d62728"},
            error_y={"type": "data", "symmetric": False, "array": [cci[1] - cr] if cci else [0],
                     "arrayminus": [cr - cci[0]] if cci else [0], "color": "#d62728"},
            hovertemplate=f"chosen circuit: %{{x}} edges, {pct_ci(cr, cci)}<extra></extra>"))
    total = circ.get("n_edges_total")
    plot_layout(fig, "Faithfulness: share of the clean − corrupted gap the top edges recover"
           + (f" (of {total:,} edges)" if isinstance(total, int) else ""), 440,
           legend={"orientation": "h", "y": -0.22, "x": 0})
    fig.update_xaxes(type="log", title_text="edges in the circuit (largest |score| first)",
                     tickvals=x, ticktext=[f"{int(v):,}" for v in x])
    fig.update_yaxes(title_text="recovered (1 = clean)", tickformat=".0%", zeroline=True)
    return fig


def _node_phrase(name: str, inp: str, kv_groups: int) -> str:
    """``L14H3 (value input)``, ``L14G1 (key input of query heads L14H2–H3)``, ``M5``, ``logits``."""
    if inp not in INPUT_NAMES:
        return name
    m = GROUP.fullmatch(name)
    if m and kv_groups > 1:
        l, k = int(m.group(1)), int(m.group(2))
        return f"{name} ({INPUT_NAMES[inp]} input of query heads L{l}H{k * kv_groups}–H{(k + 1) * kv_groups - 1})"
    return f"{name} ({INPUT_NAMES[inp]} input)"


def _heads_of(receiver: str, kv_groups: int) -> set[str]:
    """The nodes whose output continues a path arriving at ``receiver`` (a group: its query heads)."""
    m = GROUP.fullmatch(receiver)
    if m:
        l, k = int(m.group(1)), int(m.group(2))
        return {head_name(l, h) for h in range(k * kv_groups, (k + 1) * kv_groups)}
    return {receiver}


def top_path(circ: Mapping[str, Any], kv_groups: int) -> list[dict[str, Any]]:
    """A chain through the circuit's top edge: extended backwards and forwards (towards the logits) by the
    largest-|score| adjoining circuit edge, using only edges whose 95% CI excludes 0; [] when the top edge's does
    not. At most MAX_HOPS edges are added on each side."""
    drawn = circuit_edges(circ)[0]
    if not drawn or not excludes_zero(ci_pair(drawn[0].get("score_ci"))):
        return []
    edges = [e for e in drawn if excludes_zero(ci_pair(e.get("score_ci")))]
    chain = [edges[0]]
    for _ in range(MAX_HOPS):  # forwards: from the receiver's output
        nxt = [e for e in edges if str(e.get("sender")) in _heads_of(str(chain[-1].get("receiver")), kv_groups)]
        if str(chain[-1].get("receiver")) == "logits" or not nxt:
            break
        chain.append(nxt[0])
    for _ in range(MAX_HOPS):  # backwards: into the sender
        snd = str(chain[0].get("sender"))
        prev = [e for e in edges if snd in _heads_of(str(e.get("receiver")), kv_groups)]
        if snd == "input" or not prev:
            break
        chain.insert(0, prev[0])
    return chain


def circuit_path_finding(results: Results) -> Finding | None:
    """The circuit's top edge and the chain of circuit edges through it."""
    circ = results.get("circuit")
    if not isinstance(circ, dict):
        return None
    edges, chosen = circuit_edges(circ)
    if not edges:
        return None
    g = kv_groups(results, circ)
    top = edges[0]
    tci = ci_pair(top.get("score_ci"))
    lead = ("The chosen circuit's top edge by |EAP-IG score| is" if chosen
            else "No circuit was chosen; the top edge by |EAP-IG score| is")
    pool = "the circuit's edges" if chosen else f"the top {len(edges)} edges"
    edge_txt = (f"{top.get('sender')} → {_node_phrase(str(top.get('receiver')), str(top.get('input')), g)} "
                f"({fmt(top['score'], signed=True)}{ci_txt(tci)})")
    if not excludes_zero(tci):
        return Finding(f"{lead} {edge_txt}, but its 95% CI "
                        + ("includes 0" if tci else "is missing") + ": no path is claimed.", "circuit_diagram")
    text = f"{lead} {edge_txt}"
    if len(edges) > 1 and (rci := ci_pair(edges[1].get("score_ci"))) is not None and \
            magnitude(rci)[1] >= magnitude(tci)[0]:
        text += f" (its CI overlaps the next edge's, {edges[1].get('sender')} → {edges[1].get('receiver')})"
    chain = top_path(circ, g)
    if len(chain) > 1:
        steps = [str(chain[0].get("sender"))] + [_node_phrase(str(e.get("receiver")), str(e.get("input")), g)
                                                 for e in chain]
        scores = ", ".join(f"{fmt(e['score'], signed=True)}{ci_txt(ci_pair(e.get('score_ci')))}" for e in chain)
        text += f"; with {pool} it lies on the path {' → '.join(steps)} (edge scores {scores})"
        if str(chain[-1].get("receiver")) != "logits":
            text += f", which none of {pool} with a CI excluding 0 continues to the logits"
    elif str(top.get("receiver")) != "logits":
        text += f"; none of {pool} with a CI excluding 0 adjoins it"
    return Finding(text + ".", "circuit_diagram")


def circuit_faithfulness_finding(results: Results) -> Finding | None:
    """How much of the gap the chosen circuit recovers, against random circuits of its size."""
    circ = results.get("circuit")
    if not isinstance(circ, dict):
        return None
    ch, fa = circ.get("chosen") or {}, circ.get("faithfulness") or {}
    thr = num(ch.get("threshold"))
    thr_txt = f"the {pct(thr)} threshold" if thr is not None else "the threshold"
    total, steps = circ.get("n_edges_total"), circ.get("ig_steps")
    how = "EAP-IG" + (f", {steps} steps" if isinstance(steps, int) else "")
    pairs = pairs_txt(circ)
    pairs = f" over {pairs}" if pairs else ""
    n, rec, rci = ch.get("n_edges"), num(ch.get("recovered")), ci_pair(ch.get("recovered_ci"))
    if isinstance(n, int) and n > 0 and rec is not None:
        frm = f" from {total:,} edges" if isinstance(total, int) else ""
        text = (f"The {n}-edge circuit ({how}; chosen{frm} at {thr_txt}) recovers {pct_ci(rec, rci)} of the "
                f"clean − corrupted gap{pairs}")
        rm, rmci = num(ch.get("random_mean")), ci_pair(ch.get("random_ci"))
        if rm is not None:
            text += f" (random circuits of that size: {pct_ci(rm, rmci)})"
            if rci and rmci and rci[0] > rmci[1]:
                text += "; its CI lies above the random circuits'"
        if rci and thr is not None and rci[0] < thr:
            text += f"; its CI reaches below {thr_txt}"
    else:
        pts = [(int(k), float(r), ci_pair(at(fa.get("recovered_ci"), i)))
               for i, (k, r) in enumerate(zip(fa.get("n_edges") or [], fa.get("recovered") or []))
               if isinstance(k, int) and finite(r)]
        if not pts:
            return None
        # The grid's last point keeps every edge; the sentence is about the circuits smaller than that.
        last = pts[-1]
        if len(pts) == 1:
            text = (f"No circuit reaches {thr_txt} ({how}{pairs}): all {last[0]:,} edges recover "
                    f"{pct_ci(last[1], last[2])} of the clean − corrupted gap")
        else:
            best = max(pts[:-1], key=lambda p: p[1])
            which = (f"smaller than all {last[0]:,} edges" if thr is not None and last[1] >= thr
                     else f"on the grid, not even all {last[0]:,} edges,")
            text = (f"No circuit {which} reaches {thr_txt} ({how}{pairs}): the smaller circuits recover at most "
                    f"{pct_ci(best[1], best[2])} of the clean − corrupted gap on average (the top {best[0]:,} "
                    f"edges; all edges: {pct_ci(last[1], last[2])})")
    full, empty = num(circ.get("full")), num(circ.get("empty"))
    if (full is not None and abs(full - 1) > 0.05) or (empty is not None and abs(empty) > 0.05):
        text += (f". Check the metric: the full graph scores {fmt(full)} and the empty one {fmt(empty)} "
                 "(expected 1 and 0)")
    return Finding(text + ".", "circuit_faithfulness")


def section_circuit(results: Results, figures: Mapping[str, go.Figure], findings: Sequence[Finding]) -> str | None:
    """The EAP-IG circuit: diagram, faithfulness curve and top edges; None when absent."""
    circ = results.get("circuit")
    if not isinstance(circ, dict):
        return None

    g = kv_groups(results, circ)
    steps, total = circ.get("ig_steps"), circ.get("n_edges_total")
    full, empty = num(circ.get("full")), num(circ.get("empty"))
    check = (f" Sanity check: keeping every edge scores {esc(fmt(full))}, keeping none {esc(fmt(empty))} "
             "(1 and 0 by construction)." if full is not None or empty is not None else "")
    pairs = pairs_txt(circ)
    edges, chosen = circuit_edges(circ)
    first = diagram_sizes(circ, len(edges_by_score(circ)))[1]
    rows = [[esc(i + 1), f'<span class="prompt">{esc(e.get("sender", "?"))}</span>',
             f'<span class="prompt">{esc(_node_phrase(str(e.get("receiver", "?")), str(e.get("input", "")), g))}'
             "</span>",
             esc(fmt(e["score"], signed=True) + ci_txt(ci_pair(e.get("score_ci"))))] for i, e in enumerate(edges[:15])]
    return (
        note("EAP-IG (edge attribution patching with integrated gradients"
             + (f", {esc(steps)} steps" if isinstance(steps, int) else "")
             + ") scores every edge of the computational graph"
             + (f" ({esc(f'{total:,}')} edges)" if isinstance(total, int) else "")
             + ": an attention head's output into a later head's query, key or value input, an MLP or the "
             "logits. The circuit is the top edges by |score|; its faithfulness is the share of the clean − "
             "corrupted gap it recovers when every other edge carries the corrupted value, against random "
             "circuits of the same size." + check + (f" {esc(pairs)}." if pairs else ""))
        + figure_html(figures, "circuit_diagram")
        + note(("The diagram shows the top edges of the chosen circuit" if chosen else
                "No circuit was chosen; the diagram shows the top edges by |score|")
               + f": {esc(first)} at first; the menu at its top right draws more (the faithfulness curve's sizes). "
               "x = layer (input left, logits right), heads stacked per layer, MLPs below; edge width and opacity "
               "grow with |score|, blue positive, red negative; hover an edge's midpoint or a node for its numbers.")
        + figure_html(figures, "circuit_faithfulness")
        + ("<h3>Top edges</h3>" + '<div class="scroll">'
           + table(["#", "sender", "receiver", "score [95% CI]"], rows, "kv") + "</div>" if rows else "")
    )


# ---- compare.html: each run's faithfulness curve and chosen circuit


def _faithfulness_figure(runs: Sequence[Run]) -> go.Figure | None:
    fig = go.Figure()
    for i, r in enumerate(runs):
        c = r.results.get("circuit")
        f = c.get("faithfulness") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("n_edges"), list) or not isinstance(f.get("recovered"), list):
            continue
        xs, ys = f["n_edges"], f["recovered"]
        pts = [(int(x), float(y)) for x, y in zip(xs, ys) if finite(x) and finite(y) and x > 0]
        if not pts:
            continue
        col = colour(i)
        cis = f.get("recovered_ci") or []
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 name=plotly_text(r.label), line={"color": col},
                                 error_y=error_bars([p[1] for p in pts], cis[:len(pts)]) if len(cis) >= len(pts) else None,
                                 hovertemplate=f"{plotly_text(r.label)}: %{{x}} edges, %{{y:.2f}}<extra></extra>"))
        rnd = f.get("random_mean")
        if isinstance(rnd, list) and len(rnd) == len(xs):
            fig.add_trace(go.Scatter(x=[int(x) for x in xs if x > 0], y=[float(v) for x, v in zip(xs, rnd) if x > 0],
                                     mode="lines", name=plotly_text(f"{r.label} random"),
                                     line={"color": col, "dash": "dot"}))
    if not fig.data:
        return None
    return plot_layout(fig, "Circuit faithfulness: share recovered against edges kept (dotted: random edges)", 420,
                   xaxis={"type": "log", "title": "edges kept"}, yaxis={"title": "share of the logit difference recovered"})


def _circuit_rows(r: Run) -> list[list[str]]:
    c = r.results["circuit"]
    chosen = c.get("chosen") or {}
    ci = chosen.get("recovered_ci")
    rec = (f"{fmt(chosen.get('recovered'))}" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, list) else "")
           if chosen.get("n_edges") is not None else "not reached")
    return [[esc(r.label), esc(c.get("method", "?")), esc(chosen.get("n_edges", "none")), esc(rec),
             esc(fmt(chosen.get("threshold"))), esc(c.get("n_edges_total", "?"))]]


def _compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    fig = _faithfulness_figure(runs)
    return {} if fig is None else {f"t{i}_circuit": fig}


def _compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return compare_block(i, runs, figures, "circuit",
                         ["run", "method", "edges chosen", "recovered [95% CI]", "threshold", "edges in graph"],
                         _circuit_rows)


SECTION = register(Section(
    name="circuit", title="Circuit (EAP-IG)", render=section_circuit, analysis="circuit",
    keys=("circuit",), omit_when_not_run=True,
    figures=(FigureSpec("circuit_diagram", "circuit.edges", circuit_diagram_figure),
             FigureSpec("circuit_faithfulness", "circuit.faithfulness", circuit_faithfulness_figure)),
    rules=(Rule(60, circuit_faithfulness_finding), Rule(61, circuit_path_finding)),
    compare=ComparePart(_compare_html, _compare_figures),
))
