"""The page shell of every logitlab HTML page (run report, compare.html, formation report): one place for the
Content-Security-Policy, the CSS and the head/header/footer markup.

Each page is one self-contained file: plotly.js inlined exactly once (``plotly.offline.get_plotlyjs()``), MathJax
off, and a Content-Security-Policy that forbids any network access (only inline scripts and styles, data:/blob:
images).
"""

from __future__ import annotations

from collections.abc import Sequence

from plotly.offline import get_plotlyjs

from .markup import esc

__all__ = ["CSP", "CSS", "RESIZE_JS", "page"]

#: No network at all: only inline scripts/styles and data:/blob: images.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'"
)

#: Plots are drawn while the page is still being parsed; re-fit them once layout is final.
RESIZE_JS = """
window.addEventListener("load", function () {
  if (!window.Plotly) { return; }
  var plots = document.querySelectorAll(".js-plotly-plot");
  for (var i = 0; i < plots.length; i++) { window.Plotly.Plots.resize(plots[i]); }
});
"""

CSS = """
:root { --fg: #1f2933; --muted: #5f6b7a; --line: #e3e7ec; --accent: #2166ac; --bg: #fbfcfd; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header.top { background: #17324d; color: #fff; padding: 18px 28px; }
header.top h1 { margin: 0 0 4px; font-size: 22px; }
header.top .sub { opacity: .85; font-size: 14px; }
nav.toc { position: sticky; top: 0; z-index: 10; background: #fff; border-bottom: 1px solid
          var(--line); padding: 6px 28px; font-size: 13px; overflow-x: auto; white-space: nowrap; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 14px; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 28px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px 20px
          14px; margin: 18px 0; }
section h2 { font-size: 19px; margin: 12px 0 8px; }
section h3 { font-size: 15px; margin: 14px 0 6px; }
p.note { color: var(--muted); font-size: 14px; margin: 6px 0 10px; }
ol.findings li { margin: 6px 0; }
ol.findings a { color: var(--fg); text-decoration: none; border-bottom: 1px dotted var(--accent); }
ol.findings a:hover { color: var(--accent); }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f3f6f9; font-weight: 600; }
table.kv td:first-child, table.kv2 td:nth-child(3) { color: var(--muted); }
table.kv2 td:nth-child(2) { padding-right: 36px; }
tr.answer-row td { background: #e6f0fa; font-weight: 600; }
.scroll { max-height: 440px; overflow: auto; }
.prompt { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
          white-space: pre-wrap; }
.toks { display: inline-flex; flex-wrap: wrap; gap: 3px; }
.tok { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px;
       white-space: pre; background: #eef2f6; border: 1px solid #d5dce4; border-radius: 4px;
       padding: 0 4px; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 10px; font-weight: 700;
         font-size: 12px; color: #fff; }
.badge.pass { background: #2e7d32; } .badge.fail { background: #c62828; }
figure.fig { margin: 8px 0 14px; min-width: 0; }
.fig-grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 12px; }
@media (max-width: 980px) { .fig-grid { grid-template-columns: minmax(0, 1fr); } }
.preds { display: grid; grid-template-columns: repeat(auto-fit, minmax(400px, 1fr));
         gap: 8px 24px; }
.pred { border-top: 1px solid var(--line); padding-top: 6px; margin-top: 8px; min-width: 0; }
#fig-unembed_bias { max-width: 620px; }
pre { background: #f5f7f9; padding: 10px; overflow: auto; font-size: 12px; }
.attn-viewer { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.attn-controls { display: flex; gap: 16px; align-items: center; flex-wrap: wrap;
                 margin-bottom: 10px; font-size: 14px; }
.attn-info { color: var(--muted); }
.attn-tokens { display: flex; flex-wrap: wrap; gap: 4px 2px; margin: 6px 0 12px;
               font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.attn-tok { position: relative; white-space: pre; padding: 3px 5px 3px; border-radius: 4px;
            border: 1px solid #d5dce4; cursor: pointer; transition: background-color .1s; }
.attn-tok::after { content: attr(data-pos); position: absolute; top: -9px; right: 1px;
                   font-size: 9px; color: var(--muted); }
.attn-tok.attn-query { outline: 2px solid #d62728; }
.attn-tok.attn-future { opacity: .35; }
.attn-heat { display: flex; gap: 14px; align-items: flex-start; }
.attn-heat-caption { color: var(--muted); font-size: 13px; max-width: 360px; }
canvas.attn-canvas { border: 1px solid var(--line); image-rendering: pixelated; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl dt { font-weight: 600; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 16px; }
"""


def page(title: str, heading: str, sub: str, body: str, *, toc: Sequence[tuple[str, str]] | None = None,
         footer: str = "", scripts: Sequence[str] = ()) -> str:
    """One self-contained HTML document.

    Args:
        title: The document title (plain text; escaped here).
        heading: The header's ``<h1>`` (plain text).
        sub: The header's subtitle (plain text).
        body: The ``<main>`` content (HTML).
        toc: (anchor, heading) pairs for the sticky table of contents; None for none.
        footer: The footer's text (plain text); "" for no footer.
        scripts: Inline scripts run at the end of the body (before the page's own resize script).
    """
    nav = ("<nav class=\"toc\">" + "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h in toc) + "</nav>\n"
           if toc is not None else "")
    foot = f"<footer>{esc(footer)}</footer>\n" if footer else ""
    tail = "".join(f'<script type="text/javascript">{s}</script>\n' for s in (*scripts, RESIZE_JS))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n"
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head>\n<body>\n"
        f'<header class="top"><h1>{esc(heading)}</h1><div class="sub">{esc(sub)}</div></header>\n'
        f"{nav}<main>\n{body}\n</main>\n{foot}{tail}</body>\n</html>\n"
    )
