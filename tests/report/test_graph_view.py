"""graph.html (``logitlab graph``'s view) in headless Chromium: the figure renders, the mouse over a feature node
and a click on it show its card (fields, edges, logit effects, contexts shaded by activation, hostile tokens as
text), a supernode has its own card, and there is no console error, dialog or network request.
Skipped when Chromium is absent, unless ``CI=true``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdp import ARTIFACTS, Page

WIDTH, HEIGHT = 1400, 1000
HOSTILE = "<script>alert(1)</script>"

# the page position of the node with key `key`, scrolled into view
POINT_JS = """
((key) => {
  const gd = document.getElementById('plot-graph');
  gd.scrollIntoView();
  const c = gd.data.findIndex(t => t.customdata && t.customdata.includes(key));
  const t = gd.data[c], i = t.customdata.indexOf(key), fl = gd._fullLayout, r = gd.getBoundingClientRect();
  return {x: r.left + fl.xaxis._offset + fl.xaxis.l2p(t.x[i]), y: r.top + fl.yaxis._offset + fl.yaxis.l2p(t.y[i])};
})
"""

CARD_JS = """
(() => {
  const box = document.getElementById('graph-card');
  const spans = [...box.querySelectorAll('.ctx span')];
  return {key: box.getAttribute('data-key'), title: (box.querySelector('.card-title') || {}).textContent || null,
          text: box.textContent, headings: [...box.querySelectorAll('h4')].map(h => h.textContent),
          ctxTokens: spans.map(s => s.textContent), ctxBg: spans.map(s => s.style.backgroundColor),
          scripts: box.querySelectorAll('script').length,
          rendered: !!document.querySelector('#plot-graph .main-svg')};
})()
"""


def _graph(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """A tiny model's graph with cards, contexts (one with a hostile token) and a supernode, written as graph.html."""
    from logitlab.features.cards import add_cards
    from logitlab.features.export import read_supernodes
    from logitlab.features.graph import attribute
    from logitlab.features.prune import graph_to_dict, prune_graph
    from logitlab.features.graph_cli import write_graph
    from logitlab.model.load import load_model
    from tests.tiny import make_model_folder, random_dictionaries
    m = load_model(str(make_model_folder("llama_gqa", tmp_path / "model")), cache=False)
    d = random_dictionaries(m.spec.d_model, m.spec.n_layers, "relu")
    g = attribute(m, "Mary is a great friend, isn’t", d, answer=" she", contrast=" he")
    data = graph_to_dict(g, prune_graph(g, 0.98, 0.99), model="tiny")
    feats = sorted((n for n in data["nodes"] if n["kind"] == "feature" and n["kept"]), key=lambda n: n["id"])
    first = feats[0]
    ctx = {"version": 1, "corpus": "tiny", "layers": {str(first["layer"]): {str(first["feature"]): [
        {"tokens": ["The", " cat", HOSTILE, "\n"], "acts": [0.0, 1.0, 2.0, 0.5], "max": 2.0},
        {"tokens": ["a", " b"], "acts": [0.3, 0.0], "max": 0.3}]}}}
    add_cards(data, m, d, ctx)
    # two features at layers and positions of different parity: the supernode sits between rows and columns, apart
    # from other nodes (so that the mouse can reach it)
    a = feats[-1]
    b = next(n for n in feats[1:] if (n["pos"] + a["pos"]) % 2 == 1 and (n["layer"] + a["layer"]) % 2 == 1)
    data["supernodes"] = read_supernodes({"pair": [a["id"], b["id"]]}, data)
    _, html = write_graph(data, tmp_path / "out")
    return data, html


def test_graph_view_cards_in_chromium(tmp_path: Path, chromium_page: Callable[[Path, int, int, str], Page]) -> None:
    """The mouse over a feature shows its card, a click keeps it; a supernode's card; contexts shaded by activation
    relative to the context's maximum, the hostile token inserted as text; no error, dialog or request."""
    data, html = _graph(tmp_path)
    node = next(n for n in data["nodes"] if n.get("contexts"))
    key = f"n{node['id']}"
    page = chromium_page(html, WIDTH, HEIGHT, "chromium_graph.log")
    browser, sid = page.browser, page.sid
    before = page.evaluate(CARD_JS)
    assert before["rendered"], "the graph's figure did not render"

    def mouse(kind: str, x: float, y: float, **kw: Any) -> None:
        browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **kw}, sid)

    def hover(k: str, click: bool = False) -> dict[str, Any]:
        p = page.evaluate(f"{POINT_JS}({json.dumps(k)})")
        end = time.monotonic() + 10
        while True:  # plotly throttles hover events: move off and on until the card follows
            mouse("mouseMoved", p["x"] - 60, p["y"] + 60)
            time.sleep(0.15)
            mouse("mouseMoved", p["x"], p["y"])
            time.sleep(0.25)
            card = page.evaluate(CARD_JS)
            if card["key"] == k or time.monotonic() > end:
                break
        if click:
            mouse("mousePressed", p["x"], p["y"], button="left", clickCount=1)
            mouse("mouseReleased", p["x"], p["y"], button="left", clickCount=1)
            time.sleep(0.2)
        return card

    feat = hover(key, click=True)
    browser.screenshot(sid, ARTIFACTS / "graph_card.png")
    sn = hover("s0")
    mouse("mouseMoved", 5, 5)  # off the plot: the clicked card comes back
    time.sleep(0.4)
    after = page.evaluate(CARD_JS)
    time.sleep(0.3)
    errors = browser.page_errors()
    dialogs = browser.events_named("Page.javascriptDialogOpening")
    requests = [e["params"]["request"]["url"] for e in browser.events_named("Network.requestWillBeSent")]

    assert not errors, f"console errors: {errors}"
    assert not dialogs, f"a dialog opened (injection?): {dialogs}"
    assert requests == [page.url], requests
    assert before["key"] is None and "Hover over a node" in before["text"]
    # the feature's card
    assert feat["key"] == key, feat
    assert feat["title"] == f"Feature {node['feature']} · layer {node['layer']} · position {node['pos']}"
    assert f"{node['activation']:.4g}" in feat["text"] and f"{node['influence']:.4g}" in feat["text"]
    assert "Top incoming edges" in feat["headings"] and any(h.startswith("Top logit effects") for h in feat["headings"])
    assert json.dumps(node["top_logits"][0]["text"].replace("\n", "⏎"), ensure_ascii=False) in feat["text"]
    assert feat["ctxTokens"] == ["The", " cat", HOSTILE, "⏎", "a", " b"] and feat["scripts"] == 0
    assert feat["ctxBg"] == ["rgba(230, 120, 20, 0)", "rgba(230, 120, 20, 0.5)", "rgb(230, 120, 20)",
                             "rgba(230, 120, 20, 0.25)", "rgb(230, 120, 20)", "rgba(230, 120, 20, 0)"]
    # the supernode's card on hover, then the clicked card again
    assert sn["key"] == "s0" and sn["title"] == "Supernode pair (2 nodes)" and "Members" in sn["headings"], sn
    assert after["key"] == key
