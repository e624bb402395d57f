"""The report's attribution-patching section: AtP estimates against exact patching.

Reads ``attribution_patching`` (:meth:`logitlab.analyses.atp.AtPResult.to_dict`): per kind (``heads``,
``resid``, ``attn``, ``mlp``) the mean AtP estimate and, when exact patching ran on the same pairs, the exact
scores, Pearson/Spearman r, the top-k overlap and the worst misses; all as fractions of the clean − corrupted
gap. Every key is read with ``.get``, so extra keys are ignored and missing ones leave their part out.

The finding's verdict per kind (:func:`atp_verdict`): AtP *agrees* with exact patching when Pearson r ≥
:data:`ATP_AGREE_R` and the top-k overlap ≥ :data:`ATP_AGREE_OVERLAP`; it *misses* (do not trust it there)
when r < :data:`ATP_POOR_R` or the overlap < :data:`ATP_POOR_OVERLAP`; in between it only *roughly tracks*
it. Pearson rather than Spearman because the many near-zero components make the rank order noisy; the top-k
overlap checks the ranking that matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import at, num, pairs_txt
from .._util import finite, fmt, head_name, is_matrix, layer_labels, plotly_text
from ..compare_runs import Run, compare_block
from ..layout import colour, plot_layout
from ..markup import esc, figure_html, note, table
from ..registry import ComparePart, FigureSpec, Finding, Rule, Section, register

#: AtP agrees with exact patching at r ≥ this and a top-k overlap ≥ ATP_AGREE_OVERLAP.
ATP_AGREE_R = 0.9
ATP_AGREE_OVERLAP = 0.7
#: AtP misses (do not trust it) at r < this or a top-k overlap < ATP_POOR_OVERLAP.
ATP_POOR_R = 0.7
ATP_POOR_OVERLAP = 0.5

KIND_NAMES = {"heads": "heads", "resid": "the residual stream", "attn": "attention outputs",
              "mlp": "MLP outputs"}
KIND_COLOURS = {"heads": "#4c78a8", "resid": "#54a24b", "attn": "#b279a2", "mlp": "#f58518"}


def _atp_kinds(ap: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The AtP kinds present with estimates, in a fixed order."""
    return [(k, ap[k]) for k in KIND_NAMES if isinstance(ap.get(k), dict) and is_matrix(ap[k].get("atp"))]


def _component_labels(kind: str, part: Mapping[str, Any], n_layers: int, width: int) -> list[list[str]]:
    """Plotly-safe labels per (layer, column): ``L1H2`` or ``L3 · 5: token``."""
    if kind == "heads":
        return [[head_name(l, h) for h in range(width)] for l in range(n_layers)]
    toks = list(part.get("tokens") or [])
    toks += ["?"] * (width - len(toks))
    return [[f"L{l} · {p}: {plotly_text(toks[p], 24)}" for p in range(width)] for l in range(n_layers)]


def atp_verdict(part: Mapping[str, Any]) -> str | None:
    """``"agrees"``, ``"tracks"`` or ``"misses"`` for one AtP kind by the thresholds above; None if not compared."""
    r, overlap = num(part.get("pearson")), num(part.get("top_k_overlap"))
    if r is None or overlap is None or not part.get("top_k"):
        return None
    if r < ATP_POOR_R or overlap < ATP_POOR_OVERLAP:
        return "misses"
    if r >= ATP_AGREE_R and overlap >= ATP_AGREE_OVERLAP:
        return "agrees"
    return "tracks"


def _overlap(part: Mapping[str, Any]) -> str | None:
    """``8/10``: how many of the top-k components by |AtP| are among the top-k by |exact|; None if absent."""
    k, overlap = part.get("top_k"), num(part.get("top_k_overlap"))
    return f"{round(overlap * k)}/{k}" if isinstance(k, int) and k > 0 and overlap is not None else None


def _atp_stats(part: Mapping[str, Any]) -> str:
    """``r = 0.93, ρ = 0.91, top-10 overlap 8/10`` (what is present)."""
    bits = []
    if num(part.get("pearson")) is not None:
        bits.append(f"r = {fmt(part['pearson'])}")
    if num(part.get("spearman")) is not None:
        bits.append(f"ρ = {fmt(part['spearman'])}")
    if (ov := _overlap(part)) is not None:
        bits.append(f"top-{part['top_k']} overlap {ov}")
    exact = part.get("exact")
    if isinstance(exact, list):  # screened: compared over the cells activation patching computed exactly
        flat = [v for row in exact if isinstance(row, list) for v in row]
        n = sum(v is not None for v in flat)
        if n < len(flat):
            bits.append(f"over the {n} of {len(flat)} cells patched exactly")
    return ", ".join(bits)


def atp_figure(results: Results) -> go.Figure:
    """AtP estimate against exact patching, one trace per kind, with the diagonal y = x.

    Without exact patching for any kind: the AtP head estimates as a layer × head heatmap.
    """
    ap = results["attribution_patching"]
    kinds = _atp_kinds(ap)
    fig = go.Figure()
    lo, hi = math.inf, -math.inf
    for kind, part in kinds:
        atp, exact = part["atp"], part.get("exact")
        if not is_matrix(exact):
            continue
        labels = _component_labels(kind, part, len(atp), max(len(r) for r in atp))
        xs, ys, custom = [], [], []
        for l, row in enumerate(atp):
            for j, a in enumerate(row):
                e = at(exact, l, j)
                if finite(a) and finite(e):
                    xs.append(float(e))
                    ys.append(float(a))
                    custom.append(labels[l][j])
        if not xs:
            continue
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        stats = _atp_stats(part)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", customdata=custom,
            name=f"{kind} ({stats})" if stats else kind,
            marker={"size": 7 if kind == "heads" else 5, "color": KIND_COLOURS[kind], "opacity": 0.75},
            hovertemplate=f"{kind} %{{customdata}}<br>exact %{{x:.3f}}, AtP %{{y:.3f}}<extra></extra>"))
    pairs = pairs_txt(ap)
    if fig.data:
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines",
                                 line={"color": "#888888", "dash": "dash", "width": 1}, hoverinfo="skip",
                                 name="AtP = exact"))
        plot_layout(fig, "Attribution patching (AtP) vs exact patching" + (f" ({pairs})" if pairs else ""), 540,
               legend={"orientation": "h", "y": -0.2, "x": 0, "font": {"size": 11}})
        fig.update_layout(margin={"b": 130})
        rng = [lo - pad, hi + pad]  # the same range on both axes: the diagonal runs corner to corner
        fig.update_xaxes(title_text="exact patching (fraction of the gap restored)", zeroline=True, range=rng)
        fig.update_yaxes(title_text="AtP estimate", zeroline=True, range=rng)
        return fig
    heads = ap.get("heads") or {}
    z = [[float(v) if finite(v) else None for v in row] for row in heads.get("atp") or []] if is_matrix(
        heads.get("atp")) else []
    fig.add_trace(go.Heatmap(z=z, x=[f"H{h}" for h in range(max((len(r) for r in z), default=0))],
                             y=layer_labels(len(z)), zmid=0.0, colorscale="RdBu", xgap=1, ygap=1,
                             colorbar={"title": {"text": "AtP<br>(1 = clean)", "side": "right"}},
                             hovertemplate="%{y}%{x}: AtP %{z:.3f}<extra></extra>"))
    plot_layout(fig, "Attribution patching (AtP) per head; no exact patching to compare with"
           + (f" ({pairs})" if pairs else ""), int(min(900, max(320, 150 + 26 * len(z)))))
    fig.update_xaxes(title_text="head", type="category")
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    if not z:
        fig.add_annotation(text="no AtP estimates (no pair with a large enough gap)", x=0.5, y=0.5,
                           xref="paper", yref="paper", showarrow=False, font={"size": 14, "color": "#888888"})
    return fig


def section_attribution_patching(results: Results, figures: Mapping[str, go.Figure],
                                 findings: Sequence[Finding]) -> str | None:
    """AtP vs exact patching: the scatter, the agreement per kind and the worst misses; None when absent."""
    ap = results.get("attribution_patching")
    if not isinstance(ap, dict):
        return None

    kinds = _atp_kinds(ap)
    verdicts = {"agrees": "agrees", "tracks": "roughly tracks", "misses": "misses: do not trust AtP here"}
    rows, misses = [], []
    for kind, part in kinds:
        v = atp_verdict(part)
        rows.append([esc(KIND_NAMES[kind]), esc(part.get("n_pairs", "")), esc(fmt(part.get("pearson"))),
                     esc(fmt(part.get("spearman"))),
                     esc(_overlap(part) or "n/a"),
                     esc(verdicts.get(v or "", "not compared"))])
        for m in part.get("worst") or []:
            if isinstance(m, dict) and finite(m.get("atp")) and finite(m.get("exact")):
                misses.append([esc(KIND_NAMES[kind]), f'<span class="prompt">{esc(m.get("label", "?"))}</span>',
                               esc(fmt(m["atp"])), esc(fmt(m["exact"])),
                               esc(fmt(float(m["atp"]) - float(m["exact"]), signed=True))])
    pairs = pairs_txt(ap)
    body = note(
        "AtP estimates every activation-patching score from one forward and one backward pass of the corrupted "
        "run: (a<sub>clean</sub> − a<sub>corrupted</sub>) · ∂m/∂a, divided by each pair's clean − corrupted gap. "
        "Each point is one component (head, or layer × position); on the dashed diagonal AtP equals exact "
        "patching. Agreement per kind: Pearson r and the overlap of the top-k components by |value|; AtP "
        f"<b>agrees</b> at r ≥ {ATP_AGREE_R:g} and overlap ≥ {ATP_AGREE_OVERLAP:.0%}, <b>misses</b> at "
        f"r &lt; {ATP_POOR_R:g} or overlap &lt; {ATP_POOR_OVERLAP:.0%}."
        + (f" {esc(pairs)}." if pairs else ""))
    body += figure_html(figures, "atp_vs_exact")
    if rows:
        body += table(["kind", "pairs", "Pearson r", "Spearman ρ", "top-k overlap", "verdict"], rows, "kv")
    if misses:
        body += ("<h3>Largest misses (|AtP − exact|)</h3>" + '<div class="scroll">'
                 + table(["kind", "component", "AtP", "exact", "AtP − exact"], misses, "kv") + "</div>")
    return body


def atp_finding(results: Results) -> Finding | None:
    """Where AtP can stand in for exact patching, and where it must not."""
    ap = results.get("attribution_patching")
    if not isinstance(ap, dict):
        return None
    groups: dict[str, list[str]] = {"agrees": [], "tracks": [], "misses": []}  # kinds by verdict
    worst = ""
    for kind, part in _atp_kinds(ap):
        v = atp_verdict(part)
        if v is None:
            continue
        groups[v].append(kind)
        if v == "misses" and not worst:
            m = next((m for m in part.get("worst") or [] if isinstance(m, dict) and finite(m.get("atp"))
                      and finite(m.get("exact"))), None)
            if m is not None:
                worst = f"; its largest miss is {m.get('label', '?')}: AtP {fmt(m['atp'])} vs exact {fmt(m['exact'])}"
    if not any(groups.values()):
        return None

    def join(items: list[str], sep: str = "; ") -> str:
        return items[0] if len(items) == 1 else sep.join(items[:-1]) + " and " + items[-1]

    def with_stats(kinds: list[str]) -> str:
        return join([f"{KIND_NAMES[k]} ({_atp_stats(ap[k])})" for k in kinds])

    parts = []
    if groups["agrees"]:
        parts.append(f"AtP agrees with exact patching on {with_stats(groups['agrees'])}")
    if groups["tracks"]:
        parts.append(f"{'it' if parts else 'AtP'} only roughly tracks exact patching on "
                     f"{with_stats(groups['tracks'])}: check its large values against exact patching")
    if groups["misses"]:
        parts.append(f"{'it' if parts else 'AtP'} misses exact patching on {with_stats(groups['misses'])}{worst}: "
                     f"do not trust AtP for {join([KIND_NAMES[k] for k in groups['misses']], ', ')}")
    pairs = pairs_txt(ap)
    text = "; ".join(parts) + (f" ({pairs})" if pairs else "") + "."
    return Finding(text[0].upper() + text[1:], "atp_vs_exact")



# ---- compare.html: how closely AtP tracks exact patching in each run (Pearson r per kind)


def _atp_figure(runs: Sequence[Run]) -> go.Figure | None:
    fig = go.Figure()
    for i, r in enumerate(runs):
        atp = r.results.get("attribution_patching")
        if not isinstance(atp, dict):
            continue
        kinds = [k for k in KIND_NAMES if isinstance(atp.get(k), dict) and finite(atp[k].get("pearson"))]
        if kinds:
            fig.add_trace(go.Bar(x=kinds, y=[float(atp[k]["pearson"]) for k in kinds], name=plotly_text(r.label),
                                 marker_color=colour(i),
                                 hovertemplate=f"{plotly_text(r.label)}, %{{x}}: r = %{{y:.3f}}<extra></extra>"))
    if not fig.data:
        return None
    return plot_layout(fig, "Attribution patching against exact patching (Pearson r per kind)", 360, barmode="group",
                   yaxis={"title": "Pearson r", "range": [-1.05, 1.05]})


def _atp_rows(r: Run) -> list[list[str]]:
    atp = r.results["attribution_patching"]
    return [[esc(r.label), esc(k), esc(fmt(atp[k].get("pearson"))), esc(fmt(atp[k].get("spearman"))),
             esc(fmt(atp[k].get("top_k_overlap")))] for k in KIND_NAMES if isinstance(atp.get(k), dict)]


def _compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    fig = _atp_figure(runs)
    return {} if fig is None else {f"t{i}_attribution_patching": fig}


def _compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return compare_block(i, runs, figures, "attribution_patching",
                         ["run", "kind", "Pearson r", "Spearman ρ", "top-k overlap"], _atp_rows)


SECTION = register(Section(
    name="attribution-patching", title="Attribution patching vs exact patching",
    render=section_attribution_patching, analysis="atp", keys=("attribution_patching",), omit_when_not_run=True,
    figures=(FigureSpec("atp_vs_exact", "attribution_patching", atp_figure),), rules=(Rule(63, atp_finding),),
    compare=ComparePart(_compare_html, _compare_figures),
))
