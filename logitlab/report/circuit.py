"""The report's circuit sections, and the registries of all three circuit analyses.

This module draws the EAP-IG circuit (``circuit``: edge scores of the top edges, largest |score| first, the
faithfulness curve and the circuit chosen at its threshold) and registers, for :mod:`~logitlab.report.figures`,
:mod:`~logitlab.report.findings` and :mod:`~logitlab.report.sections`, the figures, findings and sections of

* ``attribution_patching`` (:mod:`logitlab.report.atp`),
* ``path_patching`` (:mod:`logitlab.report.path_patching`),
* ``circuit`` (here).

Any of the three keys may be absent (older results, or a run that skipped it): its figures are not built, its
section renderer returns None so that the section is left out, and it yields no finding. Figures are pure
functions results → figure; every string from the results is escaped (``plotly_text`` in figures, ``esc`` in
HTML). The circuit's findings claim no more than the numbers allow:

* the chosen circuit's recovery is stated with its CI next to the random circuits' of the same size, "above
  the random circuits" only when the two CIs do not overlap; when no circuit reaches the threshold the
  sentence says so;
* a chain X → Y → logits is named only from edges of the drawn circuit whose 95% CIs exclude 0
  (:func:`top_path`), and the top edge's lead over the next is flagged when their CIs overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from ._circuit_common import (
    GROUP,
    HEAD,
    INPUT_NAMES,
    MLP,
    Results,
    at,
    ci_pair,
    ci_txt,
    excludes_zero,
    finding,
    layout,
    magnitude,
    num,
    pairs_txt,
    pct,
    pct_ci,
)
from ._util import finite, fmt, head_name, layer_labels, plotly_text
from .atp import atp_figure, atp_finding, section_attribution_patching
from .path_patching import path_finding, path_patching_figure, section_path_patching

#: Edges drawn when no circuit was chosen; at most MAX_DRAWN edges are drawn in any case.
DEFAULT_EDGES = 50
MAX_DRAWN = 300
#: Edges a chain through the top edge adds on each side at most.
MAX_HOPS = 3
POS_RGB, NEG_RGB = "33,102,172", "178,24,43"  # figures.BLUE / figures.RED


def _edges(circ: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The scored edges, largest |score| first (stable)."""
    edges = [e for e in circ.get("edges") or [] if isinstance(e, dict) and finite(e.get("score"))]
    return sorted(edges, key=lambda e: -abs(float(e["score"])))


def circuit_edges(circ: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The chosen circuit's edges (the top ``chosen.n_edges`` by |score|), else the top DEFAULT_EDGES.

    Returns:
        The edges and whether they are the chosen circuit.
    """
    edges = _edges(circ)
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


def circuit_diagram_figure(results: Results) -> go.Figure:
    """The chosen circuit (else the top edges) on a layer grid: edge width ∝ |score|, blue +, red −."""
    circ = results["circuit"]
    L, H, g = _shape(results, circ)
    edges, chosen = circuit_edges(circ)
    shown = edges[:MAX_DRAWN]
    port = {"q": -0.15, "k": 0.0, "v": 0.15}  # where q/k/v edges arrive, just left of the receiver
    smax = max((abs(float(e["score"])) for e in shown), default=1.0) or 1.0
    bins: dict[tuple[bool, int], tuple[list[float | None], list[float | None]]] = {}
    mids: tuple[list[float], list[float], list[list[str]]] = ([], [], [])
    used: dict[str, list[float]] = {}  # node → [edges in, edges out, Σ|score| in, Σ|score| out]
    skipped = 0
    for e in shown:
        snd, rcv, inp = str(e.get("sender", "")), str(e.get("receiver", "")), str(e.get("input", ""))
        a = _node_xy(snd, H, L)
        b = _node_xy(rcv, H, L) or _group_xy(rcv, g)
        if a is None or b is None:
            skipped += 1
            continue
        s = float(e["score"])
        bx, by = b[0] - (0.07 if inp in port else 0.0), b[1] + port.get(inp, 0.0)
        w = min(4, int(5 * abs(s) / smax))  # five width classes
        xs, ys = bins.setdefault((s >= 0, w), ([], []))
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
    fig = go.Figure()
    for sign in (True, False):
        for w in range(5):
            if (sign, w) not in bins:
                continue
            xs, ys = bins[(sign, w)]
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", hoverinfo="skip", legendgroup="+" if sign else "−",
                line={"color": f"rgba({POS_RGB if sign else NEG_RGB},0.6)", "width": 1 + 1.6 * w},
                name="positive score" if sign else "negative score",
                showlegend=not any(t.legendgroup == ("+" if sign else "−") for t in fig.data)))
    fig.add_trace(go.Scatter(x=mids[0], y=mids[1], mode="markers", customdata=mids[2], showlegend=False,
                             marker={"size": 6, "color": "rgba(80,80,80,0.18)"},
                             hovertemplate="%{customdata[0]}<br>score %{customdata[1]}<extra>edge</extra>"))
    names = [str(n) for n in circ.get("nodes") or []] or (
        ["input"] + [f"{head_name(l, h)}" for l in range(L) for h in range(H)] + [f"M{l}" for l in range(L)]
        + ["logits"])
    names += [n for n in used if n not in names]
    for active in (False, True):
        pts = [(n, xy) for n in names if (n in used or n in ("input", "logits")) == active
               and (xy := _node_xy(n, H, L) or _group_xy(n, g)) is not None]
        custom = [[plotly_text(n, 30), f"{int(used[n][0])} in (Σ|score| {fmt(used[n][2])}), {int(used[n][1])} out "
                   f"(Σ|score| {fmt(used[n][3])})" if n in used else "not in the drawn circuit"] for n, _ in pts]
        fig.add_trace(go.Scatter(
            x=[xy[0] for _, xy in pts], y=[xy[1] for _, xy in pts], customdata=custom, showlegend=False,
            mode="markers+text" if active else "markers", text=[c[0] for c in custom] if active else None,
            textposition="top center", textfont={"size": 9},
            marker={"size": 11 if active else 6, "color": "#17324d" if active else "#d0d6dd",
                    "symbol": ["square" if MLP.fullmatch(n) else "diamond" if GROUP.fullmatch(n) else "circle"
                               for n, _ in pts], "line": {"width": 0}},
            hovertemplate="%{customdata[0]}<br>%{customdata[1]}<extra></extra>"))
    ch = circ.get("chosen") or {}
    rec, rci = num(ch.get("recovered")), ci_pair(ch.get("recovered_ci"))
    if chosen:
        n = ch["n_edges"]
        title = f"Circuit: the {n} edges chosen" + (f", recovering {pct_ci(rec, rci)} of the gap"
                                                    if rec is not None else "")
        if len(edges) < n:  # the results keep only the top edges
            title += f"; {len(edges)} of them in the results"
    else:
        title = f"Top {len(edges)} edges by |score| (no circuit chosen)"
    if len(shown) < len(edges):
        title += f"; the {len(shown)} largest drawn"
    if skipped:
        fig.add_annotation(text=f"{skipped} edge(s) with unrecognised node names not drawn", x=0, y=-0.12,
                           xref="paper", yref="paper", showarrow=False, xanchor="left",
                           font={"size": 11, "color": "#888888"})
    layout(fig, title, int(max(380, 110 + 36 * (H + 2))),
           legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"})
    fig.update_xaxes(tickvals=[-1.0, *range(L), L + 0.3], ticktext=["input", *layer_labels(L), "logits"],
                     showgrid=False, zeroline=False, range=[-1.5, L + 0.8])
    fig.update_yaxes(tickvals=[*range(H), H + 0.4], ticktext=[*(f"H{h}" for h in range(H)), "MLP"],
                     autorange="reversed", showgrid=False, zeroline=False)
    return fig


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
    layout(fig, "Faithfulness: share of the clean − corrupted gap the top edges recover"
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


def circuit_path_finding(results: Results) -> Any:
    """The circuit's top edge and the chain of circuit edges through it."""
    circ = results.get("circuit")
    if not isinstance(circ, dict):
        return None
    edges, chosen = circuit_edges(circ)
    if not edges:
        return None
    g = _shape(results, circ)[2]
    top = edges[0]
    tci = ci_pair(top.get("score_ci"))
    lead = ("The chosen circuit's top edge by |EAP-IG score| is" if chosen
            else "No circuit was chosen; the top edge by |EAP-IG score| is")
    pool = "the circuit's edges" if chosen else f"the top {len(edges)} edges"
    edge_txt = (f"{top.get('sender')} → {_node_phrase(str(top.get('receiver')), str(top.get('input')), g)} "
                f"({fmt(top['score'], signed=True)}{ci_txt(tci)})")
    if not excludes_zero(tci):
        return finding(f"{lead} {edge_txt}, but its 95% CI "
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
    return finding(text + ".", "circuit_diagram")


def circuit_faithfulness_finding(results: Results) -> Any:
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
    return finding(text + ".", "circuit_faithfulness")


def section_circuit(results: Results, figures: Mapping[str, go.Figure], findings: Sequence[Any]) -> str | None:
    """The EAP-IG circuit: diagram, faithfulness curve and top edges; None when absent."""
    circ = results.get("circuit")
    if not isinstance(circ, dict):
        return None
    from .sections import esc, figure_html, note, table  # noqa: PLC0415 - sections.py imports this module

    g = _shape(results, circ)[2]
    steps, total = circ.get("ig_steps"), circ.get("n_edges_total")
    full, empty = num(circ.get("full")), num(circ.get("empty"))
    check = (f" Sanity check: keeping every edge scores {esc(fmt(full))}, keeping none {esc(fmt(empty))} "
             "(1 and 0 by construction)." if full is not None or empty is not None else "")
    pairs = pairs_txt(circ)
    edges, chosen = circuit_edges(circ)
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
        + note(("The diagram shows the chosen circuit" if chosen else
                f"No circuit was chosen; the diagram shows the top {len(edges)} edges")
               + ": x = layer (input left, logits right), heads stacked per layer, MLPs below; edge width ∝ "
               "|score|, blue positive, red negative; hover an edge's midpoint or a node for its numbers.")
        + figure_html(figures, "circuit_faithfulness")
        + ("<h3>Top edges</h3>" + '<div class="scroll">'
           + table(["#", "sender", "receiver", "score [95% CI]"], rows, "kv") + "</div>" if rows else "")
    )


# ---- registries (wired into figures.FIGURES, findings._RULES and sections.SECTIONS) ------------------------

#: figure id → (results key that must be present, builder)
CIRCUIT_FIGURES: dict[str, tuple[str, Callable[[Results], go.Figure]]] = {
    "atp_vs_exact": ("attribution_patching", atp_figure),
    "path_patching": ("path_patching", path_patching_figure),
    "circuit_diagram": ("circuit.edges", circuit_diagram_figure),
    "circuit_faithfulness": ("circuit.faithfulness", circuit_faithfulness_figure),
}

#: (anchor, heading, renderer); a renderer returns None when its section is absent.
CIRCUIT_SECTIONS: tuple[tuple[str, str, Callable[..., str | None]], ...] = (
    ("attribution-patching", "Attribution patching vs exact patching", section_attribution_patching),
    ("path-patching", "Path patching", section_path_patching),
    ("circuit", "Circuit (EAP-IG)", section_circuit),
)

CIRCUIT_RULES: tuple[Callable[[Results], Any], ...] = (
    circuit_faithfulness_finding,
    circuit_path_finding,
    path_finding,
    atp_finding,
)

__all__ = [
    "CIRCUIT_FIGURES", "CIRCUIT_RULES", "CIRCUIT_SECTIONS", "circuit_diagram_figure", "circuit_edges",
    "circuit_faithfulness_finding", "circuit_faithfulness_figure", "circuit_path_finding", "section_circuit",
    "top_path",
]
