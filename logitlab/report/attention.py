"""Interactive attention-pattern viewer: a small vanilla-JS widget, no external library.

:func:`attention_viewer_html` renders the widget's markup with its data embedded as
JSON in a ``<script type="application/json">`` element (``<``, ``>`` and ``&``
escaped as ``\\u003c`` … so that a token ``</script>`` cannot break out);
:data:`ATTENTION_JS` is the script, included once per page, that wires up every
``.attn-viewer`` on it. Tokens enter the DOM through ``textContent`` only.
"""

from __future__ import annotations

import json
import math
from typing import Any

from logitlab.results import Results

_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _clean(obj: Any) -> Any:
    """Replace non-finite floats by None so the JSON is strict (``JSON.parse`` rejects NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def json_for_script(data: Any) -> str:
    """Serialise ``data`` as JSON that is safe inside an HTML ``<script>`` element."""
    text = json.dumps(_clean(data), ensure_ascii=False, allow_nan=False)
    for raw, esc in _JSON_ESCAPES.items():
        text = text.replace(raw, esc)
    return text


def attention_data(results: Results) -> dict[str, Any] | None:
    """The viewer's data (tokens and top heads) from ``results["attention"]``, or None."""
    att = results.get("attention")
    if not att or not att.get("heads"):
        return None
    return {
        "prompt_index": att.get("prompt_index", 0),
        "tokens": [str(t) for t in att.get("tokens") or []],
        "heads": [
            {
                "layer": int(h["layer"]),
                "head": int(h["head"]),
                "attribution": h.get("attribution"),
                "pattern": h["pattern"],
            }
            for h in att["heads"]
        ],
    }


def attention_viewer_html(results: Results, viewer_id: str = "attn-viewer") -> str:
    """Markup of the attention viewer for ``results["attention"]`` (empty string if absent).

    Args:
        results: A ``results.json`` dict.
        viewer_id: The element id of the viewer (must be a plain identifier).

    Returns:
        An HTML fragment; it needs :data:`ATTENTION_JS` on the page.
    """
    data = attention_data(results)
    if data is None:
        return ""
    return (
        f'<div class="attn-viewer" id="{viewer_id}">'
        '<div class="attn-controls"><label>Head '
        '<select class="attn-select" aria-label="attention head"></select></label>'
        '<span class="attn-info"></span></div>'
        '<div class="attn-tokens" aria-label="prompt tokens"></div>'
        '<div class="attn-heat"><canvas class="attn-canvas"></canvas>'
        '<div class="attn-heat-caption">rows: query position, columns: key position; '
        "darker = more attention. The outlined row is the selected query.</div></div>"
        f'<script type="application/json" class="attn-data">{json_for_script(data)}</script>'
        "</div>"
    )


ATTENTION_JS = r"""
(function () {
  "use strict";
  function visible(t) {
    return String(t).replace(/\r/g, "\\r").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }
  function colour(w) {
    var a = Math.max(0, Math.min(1, Number(w) || 0));
    return "rgba(33, 102, 172, " + a.toFixed(3) + ")";
  }
  function signed(x) {
    var v = Number(x);
    if (!isFinite(v)) { return "n/a"; }
    return (v >= 0 ? "+" : "") + v.toFixed(3);
  }
  function init(root) {
    var dataEl = root.querySelector("script.attn-data");
    if (!dataEl) { return; }
    var data = JSON.parse(dataEl.textContent);
    var tokens = data.tokens || [];
    var heads = data.heads || [];
    var select = root.querySelector("select.attn-select");
    var box = root.querySelector(".attn-tokens");
    var canvas = root.querySelector("canvas.attn-canvas");
    var info = root.querySelector(".attn-info");
    var state = { head: 0, query: Math.max(0, tokens.length - 1) };
    heads.forEach(function (h, i) {
      var opt = document.createElement("option");
      opt.value = String(i);
      opt.textContent = "L" + h.layer + "H" + h.head + "  (attribution " + signed(h.attribution) + ")";
      select.appendChild(opt);
    });
    var spans = tokens.map(function (t, i) {
      var s = document.createElement("span");
      s.className = "attn-tok";
      s.textContent = visible(t);
      s.setAttribute("data-pos", String(i));
      s.addEventListener("mouseover", function () { setQuery(i); });
      s.addEventListener("focus", function () { setQuery(i); });
      s.tabIndex = 0;
      box.appendChild(s);
      return s;
    });
    function pattern() {
      var h = heads[state.head];
      return (h && h.pattern) || [];
    }
    function setQuery(q) {
      if (q !== state.query) { state.query = q; render(); }
    }
    function draw(pat) {
      var n = tokens.length;
      if (!canvas || !canvas.getContext || n === 0) { return; }
      var cell = Math.max(6, Math.min(26, Math.floor(360 / n)));
      var dpr = window.devicePixelRatio || 1;
      canvas.width = n * cell * dpr;
      canvas.height = n * cell * dpr;
      canvas.style.width = n * cell + "px";
      canvas.style.height = n * cell + "px";
      var ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, n * cell, n * cell);
      for (var q = 0; q < n; q++) {
        var row = pat[q] || [];
        for (var k = 0; k < n; k++) {
          ctx.fillStyle = k <= q ? colour(row[k]) : "#f3f3f3";
          ctx.fillRect(k * cell, q * cell, cell - 1, cell - 1);
        }
      }
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      ctx.strokeRect(1, state.query * cell + 1, n * cell - 2, cell - 2);
    }
    function render() {
      var pat = pattern();
      var row = pat[state.query] || [];
      var best = -1;
      spans.forEach(function (s, k) {
        var w = k <= state.query ? Number(row[k]) || 0 : 0;
        if (k <= state.query && (best < 0 || w > (Number(row[best]) || 0))) { best = k; }
        s.style.backgroundColor = k <= state.query ? colour(w) : "transparent";
        s.style.color = w > 0.55 ? "#ffffff" : "";
        s.setAttribute("data-weight", w.toFixed(4));
        s.title = k <= state.query ? "attention from query " + state.query + ": " + w.toFixed(3)
                                   : "later token (masked)";
        s.classList.toggle("attn-query", k === state.query);
        s.classList.toggle("attn-future", k > state.query);
      });
      var h = heads[state.head];
      info.textContent = h ? ("query " + state.query + " \u201c" + visible(tokens[state.query]) +
        "\u201d attends most to " + best + " \u201c" + visible(tokens[best]) + "\u201d (" +
        (Number(row[best]) || 0).toFixed(3) + ")") : "no heads";
      draw(pat);
    }
    select.addEventListener("change", function () { state.head = Number(select.value) || 0; render(); });
    if (canvas) {
      canvas.addEventListener("mousemove", function (ev) {
        var rect = canvas.getBoundingClientRect();
        var n = tokens.length;
        if (!n || !rect.height) { return; }
        var q = Math.floor((ev.clientY - rect.top) / rect.height * n);
        setQuery(Math.max(0, Math.min(n - 1, q)));
      });
    }
    render();
  }
  function start() {
    var roots = document.querySelectorAll(".attn-viewer");
    for (var i = 0; i < roots.length; i++) { init(roots[i]); }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
"""
