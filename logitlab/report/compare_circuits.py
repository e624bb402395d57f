"""The circuit sections of compare.html, drawn only for runs whose results hold them.

``attribution_patching`` (how closely attribution patching tracks exact patching: Pearson / Spearman / top-k
overlap per kind), ``path_patching`` (each sender head's whole effect with its CI) and ``circuit`` (the
faithfulness curve: share of the logit difference recovered against the number of edges kept). These
sections come from analyses newer than the battery's core, so every reader here is defensive: a section
whose layout it does not know is shown as a table of its scalar fields instead of a figure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from ._util import finite, fmt, plotly_text
from .compare_findings import CIRCUIT_KEYS, Run
from .figures import TEMPLATE
from .sections import esc, figure_html, note, table

__all__ = ["circuit_figures", "circuit_html"]

logger = logging.getLogger(__name__)

_ATP_KINDS = ("heads", "resid", "attn", "mlp")
_PALETTE = ("#2166ac", "#d6604d", "#1b7837", "#762a83", "#e08214", "#35978f", "#c51b7d", "#8c510a")
_READ_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _layout(fig: go.Figure, title: str, height: int, **kwargs: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.01, "xanchor": "left"}, height=height,
                      margin={"l": 70, "r": 30, "t": 60, "b": 60}, **kwargs)
    return fig


def _err(values: Sequence[float], cis: Sequence[Any]) -> dict[str, Any] | None:
    if len(cis) != len(values) or not all(isinstance(c, (list, tuple)) and len(c) == 2 and finite(c[0])
                                          and finite(c[1]) for c in cis):
        return None
    return {"type": "data", "symmetric": False, "array": [max(0.0, c[1] - v) for v, c in zip(values, cis)],
            "arrayminus": [max(0.0, v - c[0]) for v, c in zip(values, cis)], "color": "#777", "thickness": 1.2}


def _atp_figure(runs: Sequence[Run]) -> go.Figure | None:
    fig = go.Figure()
    for i, r in enumerate(runs):
        atp = r.results.get("attribution_patching")
        if not isinstance(atp, dict):
            continue
        kinds = [k for k in _ATP_KINDS if isinstance(atp.get(k), dict) and finite(atp[k].get("pearson"))]
        if kinds:
            fig.add_trace(go.Bar(x=kinds, y=[float(atp[k]["pearson"]) for k in kinds], name=plotly_text(r.label),
                                 marker_color=_PALETTE[i % len(_PALETTE)],
                                 hovertemplate=f"{plotly_text(r.label)}, %{{x}}: r = %{{y:.3f}}<extra></extra>"))
    if not fig.data:
        return None
    return _layout(fig, "Attribution patching against exact patching (Pearson r per kind)", 360, barmode="group",
                   yaxis={"title": "Pearson r", "range": [-1.05, 1.05]})


def _paths_figure(runs: Sequence[Run]) -> go.Figure | None:
    fig = go.Figure()
    for i, r in enumerate(runs):
        pp = r.results.get("path_patching")
        if not isinstance(pp, dict) or not isinstance(pp.get("senders"), list) or not isinstance(pp.get("node"), list):
            continue
        senders, node, cis = pp["senders"], pp["node"], pp.get("node_ci") or []
        keep = [j for j in range(min(len(senders), len(node))) if finite(node[j])]
        if not keep:
            continue
        vals = [float(node[j]) for j in keep]
        fig.add_trace(go.Bar(y=[plotly_text(f"{r.label} · {senders[j]}") for j in keep], x=vals, orientation="h",
                             name=plotly_text(r.label), marker_color=_PALETTE[i % len(_PALETTE)],
                             error_x=_err(vals, [cis[j] if j < len(cis) else None for j in keep]),
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    if not fig.data:
        return None
    n = sum(len(t.y) for t in fig.data)
    return _layout(fig, "Path patching: each sender head's whole effect (95% CI)", max(300, 120 + 24 * n),
                   xaxis={"title": "share of the clean − corrupted gap"}, yaxis={"autorange": "reversed",
                                                                                  "type": "category"})


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
        colour = _PALETTE[i % len(_PALETTE)]
        cis = f.get("recovered_ci") or []
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 name=plotly_text(r.label), line={"color": colour},
                                 error_y=_err([p[1] for p in pts], cis[:len(pts)]) if len(cis) >= len(pts) else None,
                                 hovertemplate=f"{plotly_text(r.label)}: %{{x}} edges, %{{y:.2f}}<extra></extra>"))
        rnd = f.get("random_mean")
        if isinstance(rnd, list) and len(rnd) == len(xs):
            fig.add_trace(go.Scatter(x=[int(x) for x in xs if x > 0], y=[float(v) for x, v in zip(xs, rnd) if x > 0],
                                     mode="lines", name=plotly_text(f"{r.label} random"),
                                     line={"color": colour, "dash": "dot"}))
    if not fig.data:
        return None
    return _layout(fig, "Circuit faithfulness: share recovered against edges kept (dotted: random edges)", 420,
                   xaxis={"type": "log", "title": "edges kept"}, yaxis={"title": "share of the logit difference recovered"})


def circuit_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    """The circuit figures of task group ``i`` (ids ``t{i}_attribution_patching`` …), for the runs that have them."""
    out: dict[str, go.Figure] = {}
    for key, make in (("attribution_patching", _atp_figure), ("path_patching", _paths_figure),
                      ("circuit", _faithfulness_figure)):
        try:
            fig = make(runs)
        except _READ_ERRORS as exc:
            logger.warning("%s figure could not be drawn: %s", key, exc)
            fig = None
        if fig is not None:
            out[f"t{i}_{key}"] = fig
    return out


def _scalars(section: Any) -> str:
    scalars = ({k: v for k, v in section.items() if isinstance(v, (str, int, float, bool)) or v is None}
               if isinstance(section, dict) else {"value": section})
    return f"<pre>{esc(json.dumps(scalars, ensure_ascii=False, indent=1)[:2000])}</pre>"


def _atp_rows(r: Run) -> list[list[str]]:
    atp = r.results["attribution_patching"]
    return [[esc(r.label), esc(k), esc(fmt(atp[k].get("pearson"))), esc(fmt(atp[k].get("spearman"))),
             esc(fmt(atp[k].get("top_k_overlap")))] for k in _ATP_KINDS if isinstance(atp.get(k), dict)]


def _ci_text(v: Any, ci: Any) -> str:
    tail = f" [{fmt(ci[0], True)}, {fmt(ci[1], True)}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return esc(fmt(v, True) + tail)


def _path_rows(r: Run) -> list[list[str]]:
    pp = r.results["path_patching"]
    senders, node, direct = pp["senders"], pp["node"], pp.get("direct") or []
    node_ci, direct_ci = pp.get("node_ci") or [], pp.get("direct_ci") or []
    order = sorted((j for j in range(len(senders)) if finite(node[j])), key=lambda j: -abs(float(node[j])))
    return [[esc(r.label), esc(senders[j]), _ci_text(node[j], node_ci[j] if j < len(node_ci) else None),
             _ci_text(direct[j], direct_ci[j] if j < len(direct_ci) else None) if j < len(direct) else "n/a"]
            for j in order[:5]]


def _circuit_rows(r: Run) -> list[list[str]]:
    c = r.results["circuit"]
    chosen = c.get("chosen") or {}
    ci = chosen.get("recovered_ci")
    rec = (f"{fmt(chosen.get('recovered'))}" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, list) else "")
           if chosen.get("n_edges") is not None else "not reached")
    return [[esc(r.label), esc(c.get("method", "?")), esc(chosen.get("n_edges", "none")), esc(rec),
             esc(fmt(chosen.get("threshold"))), esc(c.get("n_edges_total", "?"))]]


def circuit_html(i: int, runs: Sequence[Run], figures: dict[str, go.Figure]) -> str:
    """The circuit sections of task group ``i`` (empty when no run has any)."""
    parts = []
    tables = {"attribution_patching": (["run", "kind", "Pearson r", "Spearman ρ", "top-k overlap"], _atp_rows),
              "path_patching": (["run", "sender", "whole effect [95% CI]", "direct path [95% CI]"], _path_rows),
              "circuit": (["run", "method", "edges chosen", "recovered [95% CI]", "threshold", "edges in graph"],
                          _circuit_rows)}
    for key in CIRCUIT_KEYS:
        having = [r for r in runs if key in r.results]
        if not having:
            continue
        body = [f"<h3>{esc(key)}</h3>"]
        absent = [r.label for r in runs if key not in r.results]
        if absent:
            body.append(note(f"Not in the results of {esc(', '.join(absent))}."))
        body.append(figure_html(figures, f"t{i}_{key}"))
        header, rows_of = tables.get(key, (None, None))
        rows: list[list[str]] = []
        for r in having:
            try:
                if rows_of is None:
                    raise KeyError(key)
                rows += rows_of(r)
            except _READ_ERRORS:
                body.append(f"<p>{esc(r.label)}:</p>{_scalars(r.results[key])}")
        if rows and header:
            body.append(table(header, rows))
        parts.append("".join(body))
    return "".join(parts)
