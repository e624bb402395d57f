"""The report's path-patching section: each top sender head's effect through each single path.

Reads ``path_patching``: for each sender head, the fraction of the clean − corrupted gap restored when only one
path carries its clean output into the corrupted run (a later head's query, key or value input, a later MLP,
or the logits directly), mean over pairs with a 95% CI; ``node`` patches all of its paths at once. On grouped
KV models (``kv_groups`` > 1) a key/value receiver ``L{l}G{k}`` serves query heads k·g … (k+1)·g − 1.

A sender's path is called *its largest* only when that path's 95% CI of |effect| lies above every other
path's (:func:`separation`; the CIs are marginal, so non-overlap is the conservative test); otherwise the
paths whose CIs overlap it are named as not separated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from logitlab.results import Results

from .._numbers import HEAD, INPUT_NAMES, at, ci_pair, ci_txt, excludes_zero, magnitude, num, pairs_txt
from .._util import finite, fmt, head_name, layer_labels, plotly_text
from ..compare_runs import Run, compare_block
from ..layout import colour, error_bars, plot_layout
from ..markup import esc, figure_html, note, table
from ..registry import ComparePart, FigureSpec, Finding, Rule, Section, register

#: Senders a finding names at most.
MAX_SENDERS = 3


@dataclass(frozen=True)
class PathCell:
    """One path of a sender: through receiver input ``kind`` (q/k/v/mlp/direct) at (layer, index)."""

    kind: str
    layer: int | None  # None for the direct path
    index: int | None  # receiver head (q), KV head or group (k, v); None for mlp/direct
    value: float
    ci: tuple[float, float] | None

    def receiver(self, kv_groups: int) -> str:
        """Plain-text receiver: ``L14H3's value input``, ``L14G1's key input (query heads L14H2–H3)``, ``MLP 14``."""
        if self.kind == "direct":
            return "direct to the logits"
        if self.kind == "mlp":
            return f"MLP {self.layer}"
        what = f"{INPUT_NAMES[self.kind]} input"
        if self.kind != "q" and kv_groups > 1:
            a, b = self.index * kv_groups, (self.index + 1) * kv_groups - 1  # type: ignore[operator]
            return f"L{self.layer}G{self.index}'s {what} (query heads L{self.layer}H{a}–H{b})"
        return f"{head_name(self.layer, self.index)}'s {what}"  # type: ignore[arg-type]


def _kv_groups(pp: Mapping[str, Any]) -> int:
    """Query heads per key/value head (1 without grouped KV heads)."""
    g = pp.get("kv_groups")
    return g if isinstance(g, int) and g > 0 else 1


def sender_paths(pp: Mapping[str, Any], s: int) -> list[PathCell]:
    """Every path of sender ``s`` with a finite value (null cells: receivers not after the sender)."""
    out: list[PathCell] = []
    for kind in ("q", "k", "v"):
        for l, row in enumerate(at(pp.get(kind), s) or []):
            for j, v in enumerate(row or []):
                if finite(v):
                    out.append(PathCell(kind, l, j, float(v), ci_pair(at(pp.get(f"{kind}_ci"), s, l, j))))
    for l, v in enumerate(at(pp.get("mlp"), s) or []):
        if finite(v):
            out.append(PathCell("mlp", l, None, float(v), ci_pair(at(pp.get("mlp_ci"), s, l))))
    d = at(pp.get("direct"), s)
    if finite(d):
        out.append(PathCell("direct", None, None, float(d), ci_pair(at(pp.get("direct_ci"), s))))
    return out


def _n_senders(pp: Mapping[str, Any]) -> int:
    """Number of senders (from whichever per-sender list is longest)."""
    return max(len(pp.get(k) or []) for k in ("senders", "sender_heads", "node", "direct"))


def _sender_layer(pp: Mapping[str, Any], s: int) -> int | None:
    """The layer of sender ``s`` (``sender_heads``, else parsed from its label); None if unknown."""
    sh = at(pp.get("sender_heads"), s)
    if isinstance(sh, list) and sh and isinstance(sh[0], int):
        return sh[0]
    m = HEAD.fullmatch(str(at(pp.get("senders"), s) or ""))
    return int(m.group(1)) if m else None


def _sender_name(pp: Mapping[str, Any], s: int) -> str:
    """The label of sender ``s`` as given (plain text; escape it where it is shown)."""
    name = at(pp.get("senders"), s)
    if name is not None:
        return str(name)
    sh = at(pp.get("sender_heads"), s)
    return head_name(*sh) if isinstance(sh, list) and len(sh) == 2 else f"sender {s}"


def path_patching_figure(results: Results) -> go.Figure:
    """One heatmap per sender: rows = receiver layers (and the logits), columns = receiver q/k/v heads, MLP, direct.

    Shared diverging colour scale centred at 0; null cells (receivers not after the sender) are left blank;
    hover shows the path, its value and 95% CI.
    """
    pp = results["path_patching"]
    n_s = _n_senders(pp)
    if n_s == 0:
        raise ValueError("path_patching has no senders")
    g = _kv_groups(pp)
    n_layers = max([len(at(pp.get(k), s) or []) for k in ("q", "k", "v", "mlp") for s in range(n_s)] + [0])
    width = {k: max([len(r or []) for s in range(n_s) for r in (at(pp.get(k), s) or [])] + [0]) for k in "qkv"}
    kv = "G" if g > 1 else "H"
    cols = ([f"q H{h}" for h in range(width["q"])] + [f"k {kv}{j}" for j in range(width["k"])]
            + [f"v {kv}{j}" for j in range(width["v"])] + ["MLP", "direct"])
    col_of = {"q": 0, "k": width["q"], "v": width["q"] + width["k"]}
    first = min([l for s in range(n_s) if (l := _sender_layer(pp, s)) is not None] or [0])
    rows = layer_labels(n_layers)[first:] + ["logits"]
    n_cols = 2 if n_s > 1 and len(cols) <= 16 else 1
    n_grid = -(-n_s // n_cols)
    titles = []
    for s in range(n_s):
        node, ci = num(at(pp.get("node"), s)), ci_pair(at(pp.get("node_ci"), s))
        whole = f": whole head {fmt(node)}{ci_txt(ci)}" if node is not None else ""
        titles.append(f"sender {plotly_text(_sender_name(pp, s), 40)}{whole}")
    plot_h, extra = 15 * len(rows), 95  # px per facet; x tick labels and title
    height = 80 + n_grid * (plot_h + extra)
    fig = make_subplots(rows=n_grid, cols=n_cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=min(0.3, extra / height) if n_grid > 1 else 0.0)
    for s in range(n_s):
        z: list[list[float | None]] = [[None] * len(cols) for _ in rows]
        custom: list[list[list[str]]] = [[["", ""] for _ in cols] for _ in rows]
        sender = plotly_text(_sender_name(pp, s), 40)
        for p in sender_paths(pp, s):
            r = len(rows) - 1 if p.kind == "direct" else p.layer - first  # type: ignore[operator]
            c = len(cols) - 1 if p.kind == "direct" else len(cols) - 2 if p.kind == "mlp" else col_of[p.kind] + p.index
            if 0 <= r < len(rows):
                z[r][c] = p.value
                custom[r][c] = [f"{sender} → {plotly_text(p.receiver(g))}",
                                f"95% CI{ci_txt(p.ci)}" if p.ci else "no CI"]
        fig.add_trace(go.Heatmap(
            z=z, x=cols, y=rows, customdata=custom, coloraxis="coloraxis", xgap=1, ygap=1, hoverongaps=False,
            hovertemplate="%{customdata[0]}: %{z:.3f} of the gap, %{customdata[1]}<extra></extra>"),
            row=s // n_cols + 1, col=s % n_cols + 1)
    fig.update_xaxes(type="category", tickangle=-90, tickfont={"size": 10})
    fig.update_yaxes(type="category", autorange="reversed", tickfont={"size": 10})
    pairs = pairs_txt(pp)
    plot_layout(fig, "Path patching: each sender's effect through one receiver input"
           + (f" ({pairs})" if pairs else ""), int(height),
           coloraxis={"colorscale": "RdBu", "cmid": 0.0,
                      "colorbar": {"title": {"text": "restored<br>(1 = clean)", "side": "right"}}})
    for a in fig.layout.annotations:  # the facet titles
        a.font = {"size": 12}
    return fig


def separation(paths: Sequence[PathCell]) -> tuple[PathCell, list[PathCell], bool] | None:
    """The path with the largest |mean|, the others whose |effect| CI overlaps its own, and whether it is separated.

    Separated: its CI excludes 0 and its |effect| interval lies above every other path's (each with a CI).
    Paths without a CI cannot be separated from; None when the top path has no CI.
    """
    if not paths:
        return None
    ranked = sorted(paths, key=lambda p: -abs(p.value))
    top = ranked[0]
    if top.ci is None:
        return None
    low = magnitude(top.ci)[0]
    tied = [p for p in ranked[1:] if p.ci is None or magnitude(p.ci)[1] >= low]
    return top, tied, excludes_zero(top.ci) and not tied


def path_finding(results: Results) -> Finding | None:
    """Each top sender's largest path, only where its CI lies above every other path's."""
    pp = results.get("path_patching")
    if not isinstance(pp, dict):
        return None
    g = _kv_groups(pp)
    n_s = _n_senders(pp)
    parts = []
    for s in range(min(n_s, MAX_SENDERS)):
        sep = separation(sender_paths(pp, s))
        if sep is None:
            continue
        top, tied, separated = sep
        name = _sender_name(pp, s)
        if not excludes_zero(top.ci):
            parts.append(f"no path of {name} is distinguishable from 0 (largest |mean|: {top.receiver(g)}, "
                         f"{fmt(top.value)}{ci_txt(top.ci)})")
        elif separated:
            node, nci = num(at(pp.get("node"), s)), ci_pair(at(pp.get("node_ci"), s))
            whole = f"; the whole head: {fmt(node)}{ci_txt(nci)}" if node is not None else ""
            route = "runs direct to the logits" if top.kind == "direct" else f"runs through {top.receiver(g)}"
            parts.append(f"{name}'s largest path {route}: {fmt(top.value)}{ci_txt(top.ci)} of the gap, its CI "
                         f"above every other path's{whole}")
        elif len(tied) <= 2:
            shown = [f"{p.receiver(g)} ({fmt(p.value)}{ci_txt(p.ci)})" for p in [top, *tied]]
            parts.append(f"{name} has no single largest path: {', '.join(shown[:-1])} and {shown[-1]} are not "
                         "separated at 95%")
        else:
            parts.append(f"{name} has no single largest path: {top.receiver(g)} ({fmt(top.value)}{ci_txt(top.ci)}) "
                         f"is not separated at 95% from {len(tied)} other paths")
    if not parts:
        return None
    rest = f"; {n_s - MAX_SENDERS} more sender{'s' if n_s - MAX_SENDERS > 1 else ''} in the figure" \
        if n_s > MAX_SENDERS else ""
    pairs = pairs_txt(pp)
    head = f"Path patching ({pairs}; 95% CIs)" if pairs else "Path patching (95% CIs)"
    return Finding(f"{head}: {'; '.join(parts)}{rest}.", "path_patching")


def _precision_note(pp: Any) -> str:
    """How many pairs the precision target took, or ``""`` without one."""
    prec = pp.get("precision") if isinstance(pp, dict) else None
    if not isinstance(prec, dict) or not finite(prec.get("target")):
        return ""
    reached = f"reached {fmt(prec['achieved'])}" if finite(prec.get("achieved")) else "no pair was usable"
    return (f" Pairs were added until each sender's whole-head value and largest path had a 95% CI half-width of at "
            f"most {fmt(prec['target'])} or all {prec.get('n_available')} were used: {prec.get('n_pairs')} patched, "
            f"widest half-width {reached}" + ("" if prec.get("met") else " (target not met)") + ".")


def section_path_patching(results: Results, figures: Mapping[str, go.Figure],
                          findings: Sequence[Finding]) -> str | None:
    """Path patching from the top senders: the faceted heatmap and each sender's top path; None when absent."""
    pp = results.get("path_patching")
    if not isinstance(pp, dict):
        return None

    g = _kv_groups(pp)
    rows = []
    for s in range(_n_senders(pp)):
        node, nci = num(at(pp.get("node"), s)), ci_pair(at(pp.get("node_ci"), s))
        d, dci = num(at(pp.get("direct"), s)), ci_pair(at(pp.get("direct_ci"), s))
        sep = separation(sender_paths(pp, s))
        top = verdict = ""
        if sep is not None:
            p, tied, separated = sep
            top = f"{p.receiver(g)}: {fmt(p.value)}{ci_txt(p.ci)}"
            verdict = ("separated" if separated else "CI includes 0" if not excludes_zero(p.ci)
                       else f"not separated from {len(tied)} other path{'s' if len(tied) > 1 else ''}")
        rows.append([f'<span class="prompt">{esc(_sender_name(pp, s))}</span>',
                     esc(f"{fmt(node)}{ci_txt(nci)}"), esc(f"{fmt(d)}{ci_txt(dci)}"), esc(top), esc(verdict)])
    gq = (f" This model groups its key/value heads: the receiver L<i>l</i>G<i>k</i> is the key or value head "
          f"shared by query heads <i>k</i>·{g} … <i>k</i>·{g}+{g - 1}." if g > 1 else "")
    pairs = pairs_txt(pp)
    return (
        note("Path patching restores one path at a time: the sender head's clean output reaches only that one "
             "receiver input (a later head's query, key or value input, a later MLP, or the logits directly), "
             "everything else stays corrupted. Each cell is the fraction of the clean − corrupted gap restored "
             "(mean over pairs, 95% CI on hover); blank cells are receivers not after the sender. "
             "\"Whole head\" patches all of the sender's paths at once." + gq
             + (f" {esc(pairs)}." if pairs else "") + esc(_precision_note(pp)))
        + figure_html(figures, "path_patching")
        + (table(["sender", "whole head [95% CI]", "direct [95% CI]", "largest path [95% CI]", "vs the others"],
                 rows, "kv") if rows else "")
    )



# ---- compare.html: each sender head's whole effect in each run


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
                             name=plotly_text(r.label), marker_color=colour(i),
                             error_x=error_bars(vals, [cis[j] if j < len(cis) else None for j in keep]),
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    if not fig.data:
        return None
    n = sum(len(t.y) for t in fig.data)
    return plot_layout(fig, "Path patching: each sender head's whole effect (95% CI)", max(300, 120 + 24 * n),
                   xaxis={"title": "share of the clean − corrupted gap"}, yaxis={"autorange": "reversed",
                                                                                  "type": "category"})


def _value_ci(v: Any, ci: Any) -> str:
    tail = f" [{fmt(ci[0], True)}, {fmt(ci[1], True)}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return esc(fmt(v, True) + tail)


def _path_rows(r: Run) -> list[list[str]]:
    pp = r.results["path_patching"]
    senders, node, direct = pp["senders"], pp["node"], pp.get("direct") or []
    node_ci, direct_ci = pp.get("node_ci") or [], pp.get("direct_ci") or []
    order = sorted((j for j in range(len(senders)) if finite(node[j])), key=lambda j: -abs(float(node[j])))
    return [[esc(r.label), esc(senders[j]), _value_ci(node[j], node_ci[j] if j < len(node_ci) else None),
             _value_ci(direct[j], direct_ci[j] if j < len(direct_ci) else None) if j < len(direct) else "n/a"]
            for j in order[:5]]


def _compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    fig = _paths_figure(runs)
    return {} if fig is None else {f"t{i}_path_patching": fig}


def _compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return compare_block(i, runs, figures, "path_patching",
                         ["run", "sender", "whole effect [95% CI]", "direct path [95% CI]"], _path_rows)


SECTION = register(Section(
    name="path-patching", title="Path patching", render=section_path_patching, analysis="path_patching",
    keys=("path_patching",), omit_when_not_run=True,
    figures=(FigureSpec("path_patching", "path_patching", path_patching_figure),), rules=(Rule(62, path_finding),),
    compare=ComparePart(_compare_html, _compare_figures),
))
