"""Assemble the self-contained HTML report.

plotly.js is inlined exactly once (``plotly.offline.get_plotlyjs()``), the
attention viewer's script once, and nothing is loaded from the network (a
Content-Security-Policy forbids it). Every string taken from the results is
escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from logitlab.results import Results

from .attention import ATTENTION_JS
from .figures import build_figures
from .findings import Finding, key_findings
from .sections import SECTIONS, esc

logger = logging.getLogger(__name__)

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
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 16px; }
"""


def _title(results: Results) -> tuple[str, str]:
    """Plain-text title and subtitle of the report."""
    task = (results.get("task") or {}).get("name", "task")
    model = (results.get("model") or {}).get("name", "model")
    return f"logitlab report: {task} on {model}", f"{task} · {model}"


def _section(anchor: str, heading: str, body: str) -> str:
    """One ``<section>`` with its heading."""
    return f'<section id="{anchor}"><h2>{esc(heading)}</h2>{body}</section>'


def render_report(
    results: Results,
    figures: Mapping[str, go.Figure],
    findings: Sequence[Finding],
) -> str:
    """Render the whole report as one self-contained HTML document.

    Args:
        results: A ``results.json`` dict (schema version 1).
        figures: Figures from :func:`build_figures` (missing ids are skipped).
        findings: Findings from :func:`key_findings`.

    Returns:
        The HTML text.
    """
    parts: list[str] = []
    toc: list[str] = []
    for anchor, heading, render in SECTIONS:
        try:
            body = render(results, figures, findings)
            if body is None:  # a section whose results key is absent (the circuit sections)
                continue
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            logger.warning("Section %r could not be rendered: %s", heading, exc)
            body = f'<p class="note">This section could not be rendered ({esc(type(exc).__name__)}).</p>'
        parts.append(_section(anchor, heading, body))
        toc.append(f'<a href="#{anchor}">{esc(heading)}</a>')
    title, sub = _title(results)
    version = esc(results.get("logitlab_version", "?"))
    schema = esc(results.get("schema_version", "?"))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n"
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head>\n<body>\n"
        f'<header class="top"><h1>logitlab report</h1><div class="sub">{esc(sub)}</div></header>\n'
        f'<nav class="toc">{"".join(toc)}</nav>\n<main>\n'
        + "\n".join(parts)
        + f"\n</main>\n<footer>Written by logitlab {version} from results.json schema "
        f"version {schema}. Self-contained: no network access needed.</footer>\n"
        f'<script type="text/javascript">{ATTENTION_JS}</script>\n'
        f'<script type="text/javascript">{RESIZE_JS}</script>\n</body>\n</html>\n'
    )


@dataclass(frozen=True)
class Report:
    """A rendered report: its HTML, figures and findings; displays itself in notebooks."""

    html: str
    figures: Mapping[str, go.Figure] = field(default_factory=dict)
    findings: Sequence[Finding] = ()

    def _repr_html_(self) -> str:
        """Notebook display: the report in an isolated ``<iframe srcdoc>``."""
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
            'style="width:100%;height:820px;border:1px solid #ddd" '
            'sandbox="allow-scripts" title="logitlab report"></iframe>'
        )


def build_report(results: Results) -> Report:
    """Build figures, findings and HTML of ``results`` in one go."""
    figures = build_figures(results)
    findings = key_findings(results)
    return Report(render_report(results, figures, findings), figures, tuple(findings))
