"""HTML building blocks of the report pages: escaping, notes, tables, token chips and plotly figures.

Every string that comes from the results (prompts, tokens, names, notes, findings) goes through :func:`esc`
(:func:`html.escape`); :func:`table` escapes its header cells and expects its row cells as HTML already.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from ._util import visible

__all__ = ["PLOT_CONFIG", "Figures", "chip", "chips", "esc", "figure_html", "grid", "missing", "note", "scalars",
           "table"]

Figures = Mapping[str, go.Figure]
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "displayModeBar": "hover"}


def esc(x: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(x), quote=True)


def chip(token: Any, cls: str = "tok") -> str:
    """A token shown as a chip (whitespace preserved, control characters made visible)."""
    return f'<span class="{cls}">{esc(visible(token))}</span>'


def chips(tokens: Sequence[Any]) -> str:
    """A row of token chips."""
    return '<span class="toks">' + "".join(chip(t) for t in tokens) + "</span>"


def figure_html(figures: Figures, fig_id: str) -> str:
    """The figure ``fig_id`` as an anchored ``<figure>`` (plotly.js not included); "" when absent."""
    fig = figures.get(fig_id)
    if fig is None:
        return ""
    height = fig.layout.height or 450
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{fig_id}",
        config=PLOT_CONFIG,
        default_height=f"{int(height)}px",
        default_width="100%",
    )
    return f'<figure class="fig" id="fig-{esc(fig_id)}">{div}</figure>'


def grid(figures: Figures, ids: Sequence[str]) -> str:
    """Several figures side by side (wrapping on narrow screens)."""
    inner = "".join(figure_html(figures, i) for i in ids)
    return f'<div class="fig-grid">{inner}</div>' if inner else ""


def table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "",
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; header cells are escaped, row cells must already be HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    rc = list(row_classes or [""] * len(rows))
    body = "".join(
        (f'<tr class="{c}">' if c else "<tr>") + "".join(f"<td>{x}</td>" for x in r) + "</tr>"
        for r, c in zip(rows, rc)
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    """A muted note paragraph (``text`` must already be HTML)."""
    return f'<p class="note">{text}</p>'


def missing(what: str) -> str:
    """Note for an analysis that is absent from the results."""
    return note(f"No {esc(what)} in this results file (analysis not run).")


def scalars(section: Any) -> str:
    """A results section's scalar fields as escaped, pretty-printed JSON (at most 2,000 characters)."""
    values = ({k: v for k, v in section.items() if isinstance(v, (str, int, float, bool)) or v is None}
              if isinstance(section, dict) else {"value": section})
    return f"<pre>{esc(json.dumps(values, ensure_ascii=False, indent=1)[:2000])}</pre>"
