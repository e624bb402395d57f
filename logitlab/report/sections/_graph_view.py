"""graph.html, the offline view of one attribution graph (``logitlab graph``): the kept nodes by layer × position
with their strongest edges, supernodes drawn as one node, and a feature card on hover or click.

A pure function of graph.json's dict. The cards' data (every kept node's fields, its strongest incoming and
outgoing kept edges, top logit effects and top-activating contexts where graph.json holds them) is embedded as one
JSON data block; a small inline script (the page's Content-Security-Policy allows inline scripts, nothing else)
renders a card on plotly's hover and click events, inserting every string as text.

Supernodes (graph.json's ``supernodes``: name → node ids): the members are drawn as one node at their mean layer
and position; edges between a member and another node are summed per (source, target) pair; edges inside a
supernode are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from ..attention import json_for_script
from ..layout import BLUE, GREY, RED, plot_layout
from ..markup import esc, note, table
from ..page import page

__all__ = ["CARD_EDGES", "MAX_EDGES", "card_data", "graph_figure", "graph_page", "view_graph"]

_KIND_COLOUR = {"feature": "#4c78a8", "error": GREY, "token": "#54a24b", "logit": "#e08214", "supernode": "#8e44ad"}
MAX_EDGES = 400  # the strongest edges drawn (all kept edges stay in graph.json)
CARD_EDGES = 6  # incoming and outgoing edges listed on a card


def view_graph(g: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], float]]:
    """The drawn graph: kept nodes by key (``n{id}``; a supernode ``s{i}`` replacing its members, at their mean
    layer and position) and the kept edges between keys, parallel edges summed and edges within a supernode dropped.
    """
    nodes = {f"n{n['id']}": dict(n) for n in g["nodes"] if n["kept"]}
    owner = {f"n{n['id']}": f"n{n['id']}" for n in g["nodes"]}
    for i, (name, members) in enumerate((g.get("supernodes") or {}).items()):
        key = f"s{i}"
        mem = [nodes.pop(f"n{m}") for m in members if f"n{m}" in nodes]
        if not mem:
            continue
        for m in members:
            owner[f"n{m}"] = key
        nodes[key] = {"kind": "supernode", "label": str(name), "members": [m["label"] for m in mem],
                      "layer": sum(m["layer"] for m in mem) / len(mem), "pos": sum(m["pos"] for m in mem) / len(mem),
                      "influence": sum(float(m.get("influence") or 0.0) for m in mem),
                      "activation": sum(float(m.get("activation") or 0.0) for m in mem), "kept": True}
    edges: dict[tuple[str, str], float] = {}
    for s, t, w in g["edges"]:
        a, b = owner.get(f"n{s}"), owner.get(f"n{t}")
        if a is None or b is None or a == b or a not in nodes or b not in nodes:
            continue
        edges[(a, b)] = edges.get((a, b), 0.0) + float(w)
    return nodes, edges


def _positions(nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """x = position, y = layer; the nodes sharing a (layer, position) cell spread horizontally."""
    cells: dict[tuple[float, float], list[str]] = {}
    for k, n in nodes.items():
        cells.setdefault((n["layer"], n["pos"]), []).append(k)
    xy: dict[str, tuple[float, float]] = {}
    for (layer, pos), keys in cells.items():
        for j, k in enumerate(keys):
            xy[k] = (pos + (j + 1) / (len(keys) + 1) - 0.5, float(layer))
    return xy


def graph_figure(g: Mapping[str, Any]) -> go.Figure:
    """Kept nodes by position (x) and layer (y: tokens below layer 0, logit targets above the last layer); the
    strongest kept edges as lines, blue positive, red negative, width by |weight|. Each node's key (as in
    :func:`card_data`) is its point's ``customdata``."""
    nodes, edges = view_graph(g)
    xy = _positions(nodes)
    fig = go.Figure()
    drawn = sorted(edges.items(), key=lambda e: -abs(e[1]))[:MAX_EDGES]
    top = max((abs(w) for _, w in drawn), default=1.0) or 1.0
    for (s, t), w in drawn:
        fig.add_trace(go.Scatter(x=[xy[s][0], xy[t][0]], y=[xy[s][1], xy[t][1]], mode="lines", hoverinfo="skip",
                                 line={"color": BLUE if w > 0 else RED, "width": 0.5 + 4 * abs(w) / top},
                                 opacity=0.5, showlegend=False))
    for kind, colour in _KIND_COLOUR.items():
        keys = [k for k, n in nodes.items() if n["kind"] == kind]
        if not keys:
            continue
        size = [8 + 20 * min(1.0, 4 * float(nodes[k].get("influence", 0.2) or 0.0)) for k in keys]
        fig.add_trace(go.Scatter(
            x=[xy[k][0] for k in keys], y=[xy[k][1] for k in keys], mode="markers", name=kind, customdata=keys,
            marker={"color": colour, "size": size, "line": {"width": 1, "color": "#fff"},
                    "symbol": "diamond" if kind == "supernode" else "circle"},
            text=[_hover(nodes[k]) for k in keys], hovertemplate="%{text}<extra></extra>"))
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
    if n["kind"] == "supernode":
        return f"{label} ({len(n['members'])} nodes)<br>influence {n['influence']:.3g}"
    return f"{label}<br>influence {n.get('influence', 0):.3g}"


def card_data(g: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per drawn node key: the card's title, fields ([name, value] pairs), strongest incoming and outgoing edges
    ([label, weight], by |weight|, at most :data:`CARD_EDGES`), and where present top/bottom logits, contexts and
    supernode members."""
    nodes, edges = view_graph(g)
    tok = g["token_strs"]
    ins: dict[str, list[tuple[str, float]]] = {}
    outs: dict[str, list[tuple[str, float]]] = {}
    for (s, t), w in edges.items():
        ins.setdefault(t, []).append((nodes[s]["label"], w))
        outs.setdefault(s, []).append((nodes[t]["label"], w))
    top = lambda xs: [[lab, w] for lab, w in sorted(xs, key=lambda e: -abs(e[1]))[:CARD_EDGES]]  # noqa: E731
    cards: dict[str, dict[str, Any]] = {}
    for k, n in nodes.items():
        kind = n["kind"]
        fields: list[list[Any]] = []
        if kind == "feature":
            title = f"Feature {n['feature']} · layer {n['layer']} · position {n['pos']}"
            fields = [["layer", n["layer"]], ["position", f"{n['pos']} {tok[n['pos']]!r}"], ["index", n["feature"]],
                      ["activation", f"{n['activation']:.4g}"], ["influence", f"{n['influence']:.4g}"]]
        elif kind == "error":
            title = f"Error node · layer {n['layer']} · position {n['pos']}"
            fields = [["position", f"{n['pos']} {tok[n['pos']]!r}"], ["norm", f"{n['norm']:.4g}"],
                      ["influence", f"{n['influence']:.4g}"]]
        elif kind == "token":
            title = f"Token {n['text']!r} · position {n['pos']}"
            fields = [["token id", n["token"]], ["influence", f"{n['influence']:.4g}"]]
        elif kind == "logit":
            title = f"Logit target {n['text']!r}"
            fields = [["value", f"{n['value']:.4g}"], ["probability", f"{n['prob']:.3%}"]]
        else:
            title = f"Supernode {n['label']} ({len(n['members'])} nodes)"
            fields = [["Σ activation", f"{n['activation']:.4g}"], ["Σ influence", f"{n['influence']:.4g}"]]
        card: dict[str, Any] = {"title": title, "kind": kind, "fields": fields, "in": top(ins.get(k, [])),
                                "out": top(outs.get(k, []))}
        for key in ("top_logits", "bottom_logits", "contexts", "members"):
            if key in n:
                card[key] = n[key]
        cards[k] = card
    return cards


CARD_CSS = """
.graph-wrap { display: grid; grid-template-columns: minmax(0, 1fr) 360px; gap: 14px; align-items: start; }
@media (max-width: 1100px) { .graph-wrap { grid-template-columns: minmax(0, 1fr); } }
.graph-card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; font-size: 13px;
              position: sticky; top: 40px; max-height: 90vh; overflow: auto; }
.graph-card h4 { margin: 4px 0 6px; font-size: 14px; }
.graph-card table { font-size: 12px; margin: 2px 0 8px; }
.graph-card td { padding: 1px 6px; }
.graph-card .pos { color: #2166ac; } .graph-card .neg { color: #b2182b; }
.ctx { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; margin: 3px 0;
       line-height: 1.7; }
.ctx span { white-space: pre; border-radius: 2px; }
"""

CARD_JS = r"""
(function () {
  var src = document.getElementById("graph-cards");
  var box = document.getElementById("graph-card");
  if (!src || !box) { return; }
  var cards = JSON.parse(src.textContent);
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = String(text); }
    return e;
  }
  function shown(t) { return String(t).replace(/\n/g, "\u23ce").replace(/\t/g, "\u2192"); }
  function rows(title, items, fmt) {
    if (!items || !items.length) { return; }
    box.appendChild(el("h4", "", title));
    var tb = el("table");
    items.forEach(function (it) {
      var tr = el("tr"), v = fmt(it);
      tr.appendChild(el("td", "", v[0]));
      tr.appendChild(el("td", v[2] || "", v[1]));
      tb.appendChild(tr);
    });
    box.appendChild(tb);
  }
  function signed(x) { return (x >= 0 ? "+" : "") + Number(x).toPrecision(3); }
  function edge(e) { return [e[0], signed(e[1]), e[1] >= 0 ? "pos" : "neg"]; }
  function logit(l) { return [JSON.stringify(shown(l.text)), signed(l.value), l.value >= 0 ? "pos" : "neg"]; }
  function show(key) {
    var c = cards[key];
    if (!c) { return; }
    box.textContent = "";
    box.setAttribute("data-key", key);
    box.appendChild(el("h4", "card-title", c.title));
    rows("Node", c.fields, function (f) { return [f[0], f[1]]; });
    if (c.members) { rows("Members", c.members, function (m) { return [m, ""]; }); }
    rows("Top incoming edges", c["in"], edge);
    rows("Top outgoing edges", c.out, edge);
    rows("Top logit effects (decoder row through the unembedding)", c.top_logits, logit);
    rows("Most negative logit effects", c.bottom_logits, logit);
    if (c.contexts) {
      box.appendChild(el("h4", "", c.contexts.length ? "Top-activating contexts" : "No stored contexts"));
      c.contexts.forEach(function (ctx) {
        var line = el("div", "ctx"), m = ctx.max > 0 ? ctx.max : 1;
        ctx.tokens.forEach(function (t, i) {
          var a = Math.max(0, Math.min(1, ctx.acts[i] / m));
          var s = el("span", "", shown(t));
          s.style.backgroundColor = "rgba(230, 120, 20, " + a.toFixed(3) + ")";
          s.title = "activation " + Number(ctx.acts[i]).toPrecision(3);
          line.appendChild(s);
        });
        box.appendChild(line);
      });
    }
  }
  var pinned = null;
  function bind() {
    var gd = document.getElementById("plot-graph");
    if (!gd || typeof gd.on !== "function") { return false; }
    function key(ev) { var p = ev && ev.points && ev.points[0]; return p ? p.customdata : null; }
    gd.on("plotly_click", function (ev) { var k = key(ev); if (k) { pinned = k; show(k); } });
    gd.on("plotly_hover", function (ev) { var k = key(ev); if (k) { show(k); } });
    gd.on("plotly_unhover", function () { if (pinned) { show(pinned); } });
    return true;
  }
  if (!bind()) { window.addEventListener("load", bind); }
})();
"""


def graph_page(g: Mapping[str, Any]) -> str:
    """graph.html: the graph's figure with its feature cards, its scores and invariant check, the supernodes and
    the kept features as a table."""
    s, c, counts = g["scores"], g["check"], g["counts"]
    div = graph_figure(g).to_html(full_html=False, include_plotlyjs=False, div_id="plot-graph",
                                  config={"displaylogo": False, "responsive": True}, default_width="100%")
    feats = sorted((n for n in g["nodes"] if n["kind"] == "feature" and n["kept"]), key=lambda n: -n["influence"])
    rows = [[esc(n["layer"]), esc(n["pos"]), esc(repr(g["token_strs"][n["pos"]])), esc(n["feature"]),
             esc(f"{n['activation']:.4g}"), esc(f"{n['influence']:.4g}")] for n in feats[:100]]
    labels = {n["id"]: n["label"] for n in g["nodes"]}
    supers = g.get("supernodes") or {}
    sn = ("<h3>Supernodes</h3>" + table(["supernode", "members"], [
        [esc(name), esc(", ".join(labels[i] for i in ids))] for name, ids in supers.items()], "kv")) if supers else ""
    cards = g.get("cards") or {}
    ctx_note = (f" Contexts: {esc(cards['contexts'] or 'the contexts file')}." if cards.get("contexts") is not None
                else " No contexts file was found next to the dictionaries, so the cards show no contexts.")
    card_note = (f" Logit effects: {esc(cards['logit_effects'])}.{ctx_note}" if cards else "")
    body = (
        f"<style>{CARD_CSS}</style>"
        f"<section><h2>Graph</h2><p>Influence on: {esc(g['influence_on'])}. Replacement score "
        f"{s['replacement']:.3f}, completeness score {s['completeness']:.3f}; {counts['kept_features']} of "
        f"{counts['features']} active features and {counts['kept_edges']} edges kept. Exactness: Σ incoming edges "
        f"+ bias − value, at most {max(c.values()):.1e} of the largest value.</p>"
        f'<div class="graph-wrap"><figure class="fig">{div}</figure>'
        '<aside class="graph-card" id="graph-card"><p class="note">Hover over a node for its card; click to keep '
        "it.</p></aside></div>"
        + note("Nodes: features (blue), error nodes (grey), tokens (green), logit targets (orange), supernodes "
               "(purple diamonds); size by influence. Edges: direct effects in the local replacement model, blue "
               "positive, red negative; a card lists the strongest kept edges (summed over a supernode's members)."
               + card_note)
        + sn
        + "<h3>Kept features, by influence</h3>"
        + table(["layer", "pos", "token", "feature", "activation", "influence"], rows, "kv")
        + f'<script type="application/json" id="graph-cards">{json_for_script(card_data(g))}</script>'
        + "</section>")
    return page("attribution graph", "Attribution graph", g["prompt"], body, footer=f"logitlab · {g.get('model')}",
                scripts=(CARD_JS,))
