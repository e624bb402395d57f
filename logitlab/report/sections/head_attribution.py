"""Direct logit attribution per head (and the naive pre-post-norm numbers for comparison); on compare.html each
model's top heads by direct effect and by zero-ablation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import ci_pair, ci_text
from .._util import finite, fmt, fmt_pct, head_name, is_matrix, plotly_text, pre_cap
from ..compare_runs import (
    HALF, Run, ci_cell, depth, join, models_word, region, separated, top_ablation_heads, top_dla_heads,
)
from ..layout import colour, diverging_heatmap, error_bars, head_axes, plot_layout
from ..markup import Figures, esc, figure_html, grid, missing, note, table
from ..registry import ComparePart, FigureSpec, Finding, Rule, Section, register

#: Heads per run on compare.html.
TOP_K = 5


def _head_attr_fig(z: list[list[float]], err: Any, title: str, cbar: str, ci: Any = None) -> go.Figure:
    """Layer × head heatmap of head attributions (optionally with stderr and the 95% CI on hover)."""
    x, y = head_axes(z)
    if is_matrix(err) and isinstance(ci, list) and len(ci) == len(z):
        custom = [[[float(err[l][h]), float(ci[l][h][0]), float(ci[l][h][1])] for h in range(len(row))]
                  for l, row in enumerate(z)]
        return diverging_heatmap(z, x, y, title, cbar, "head",
                                  "%{y}%{x}: %{z:.3f} ± %{customdata[0]:.3f} (stderr), "
                                  "95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]", custom)
    if is_matrix(err):
        return diverging_heatmap(z, x, y, title, cbar, "head",
                                  "%{y}%{x}: %{z:.3f} ± %{customdata:.3f}", err)
    return diverging_heatmap(z, x, y, title, cbar, "head", "%{y}%{x}: %{z:.3f}")


def head_attribution_figure(results: Results) -> go.Figure:
    """Direct logit attribution per head (layer × head, diverging, centred at 0)."""
    detail = results.get("head_attribution_detail") or {}
    return _head_attr_fig(results["head_attribution"], detail.get("stderr"),
                          "Direct logit attribution per head", "logit diff", detail.get("ci"))


def head_attribution_naive_figure(results: Results) -> go.Figure:
    """The naive (pre-post-norm) head attribution, for comparison only."""
    naive = results["head_attribution_detail"]["naive"]
    return _head_attr_fig(naive, None, "Naive head attribution (before the post-attention norm; "
                          "comparison only)", "logit diff")


def _naive_comparison(results: Results) -> str:
    """How different the naive (pre-post-norm) head attributions are, or ''."""
    detail = results.get("head_attribution_detail") or {}
    naive, exact = detail.get("naive"), results.get("head_attribution")
    if not (is_matrix(naive) and is_matrix(exact)):
        return ""
    a = [float(v) for row in exact for v in row]
    b = [float(v) for row in naive for v in row]
    if len(a) != len(b) or not a:
        return ""
    diffs = [abs(x - y) for x, y in zip(a, b)]
    scale = max(abs(x) for x in a) or 1.0
    corr = math.nan
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va > 0 and vb > 0:
        corr = sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(va * vb)
    return note(
        "This model has post-attention norms, so each head is pushed through the post-norm "
        "with its scale frozen at the cached value (exact). TransformerLens's naive "
        "<code>stack_head_results</code> (z·W_O before the post-norm) differs by up to "
        f"{esc(fmt(max(diffs)))} ({esc(fmt_pct(max(diffs) / scale))} of the largest head), "
        f"mean |Δ| {esc(fmt(sum(diffs) / len(diffs)))}, correlation r = {esc(fmt(corr))}. "
        "The naive numbers are shown below for comparison only."
    )


def section_head_attribution(results: Results, figures: Figures,
                             findings: Sequence[Finding]) -> str:
    """Per-head direct logit attribution (and the naive comparison if present)."""
    if "head_attribution" not in figures:
        return missing("head attribution")
    detail = results.get("head_attribution_detail") or {}
    bias = [float(v) for v in detail.get("attn_bias") or [] if finite(v)]
    bias_txt = (f" The attention output bias adds {esc(fmt(sum(bias)))} in total across layers "
                "(not shown per head)." if any(abs(v) > 0 for v in bias) else "")
    return (
        note("Each query head's direct contribution to the logit difference (mean over prompts; "
             "hover for stderr and the 95% bootstrap CI). Blue pushes towards the correct answer, red against it; the "
             "colour scale is centred at 0. Per layer, the heads plus the attention bias sum "
             "to that layer's attention bar above." + bias_txt)
        + figure_html(figures, "head_attribution")
        + _naive_comparison(results)
        + figure_html(figures, "head_attribution_naive")
    )


def _heads(results: Results) -> Finding | None:
    """The top heads by |mean attribution| and their share; "largest" only when the top head is separated."""
    z = results.get("head_attribution")
    if not is_matrix(z):
        return None
    flat = [(float(v), layer, h) for layer, row in enumerate(z) for h, v in enumerate(row)]
    total_abs = sum(abs(v) for v, _, _ in flat)
    if total_abs <= 0:
        return None
    flat.sort(key=lambda t: -abs(t[0]))
    top = flat[: min(3, len(flat))]
    share = sum(abs(v) for v, _, _ in top) / total_abs
    names = ", ".join(f"{head_name(layer, h)} ({fmt(v, signed=True)})" for v, layer, h in top)
    net_top = sum(v for v, _, _ in top)
    net_all = sum(v for v, _, _ in flat)
    summary = (f"{fmt_pct(share)} of the summed |attribution| over all {len(flat)} heads (their net effect "
               f"{fmt(net_top, signed=True)}; all heads together {fmt(net_all, signed=True)})")
    sep = (results.get("head_attribution_detail") or {}).get("top")
    lead = f"The heads ranked highest by |mean direct effect| are {names}"
    if sep and (sep["layer"], sep["head"]) == (top[0][1], top[0][2]) and len(flat) > 1:
        name, ru = head_name(sep["layer"], sep["head"]), head_name(*sep["runner_up"])
        ci, d_ci = ci_pair(sep.get("ci")), ci_pair(sep.get("difference_ci"))
        value = fmt(sep["value"], signed=True) + (f" {ci_text(ci, signed=True)}" if ci else "")
        if d_ci is not None and d_ci[0] > 0 and not sep.get("tied"):
            text = (f"{name} has the largest direct effect, {value} (95% CI over prompts), larger in size by "
                    f"{fmt(sep['difference'])} {ci_text(d_ci)} than the runner-up {ru} (paired 95% CI); the heads ranked "
                    f"highest by |mean direct effect| are {names}")
        else:
            tied = [head_name(int(a), int(b)) for a, b in sep.get("tied") or [sep["runner_up"]]]
            more = f" and {len(tied) - 4} more" if len(tied) > 4 else ""
            d_txt = f" (difference to {ru}: {fmt(sep['difference'])} {ci_text(d_ci)})" if d_ci else ""
            text = (f"{lead}; {name} ({value}, 95% CI) is not separated at 95% from {', '.join(tied[:4])}{more}"
                    f"{d_txt}, so no single head is the largest")
        return Finding(f"{text}: {summary}. {pre_cap(results)}".rstrip(), "head_attribution")
    return Finding(f"{lead}: {summary}. {pre_cap(results)}".rstrip(), "head_attribution")


# ---- compare.html: the top heads by direct effect and by zero-ablation (the ablation's figure sits beside the
# direct effect's, so both are drawn here)


def _heads_figure(runs: Sequence[Run], pick: Any, title: str, xaxis: str) -> go.Figure:
    fig = go.Figure()
    for i, r in enumerate(runs):
        heads = pick(r.results, TOP_K)
        if not heads:
            continue
        vals = [h.value for h in heads]
        fig.add_trace(go.Bar(
            y=[plotly_text(f"{r.label} · {head_name(h.layer, h.head)}") for h in heads], x=vals, orientation="h",
            marker_color=colour(i), name=plotly_text(r.label),
            error_x=error_bars(vals, [h.ci for h in heads]),
            customdata=[[h.ci[0], h.ci[1], depth(h.layer, h.n_layers)] for h in heads],
            hovertemplate=("%{y}: %{x:.3f}, 95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                           "<br>relative depth %{customdata[2]:.2f}<extra></extra>")))
    n = sum(len(t.y) for t in fig.data)
    fig.add_vline(x=0, line_color="#999", line_width=1)
    return plot_layout(fig, title, max(300, 120 + 24 * n), xaxis={"title": xaxis},
                   yaxis={"autorange": "reversed", "type": "category"}, legend={"orientation": "h", "y": -0.2})


def heads_dla_figure(runs: Sequence[Run]) -> go.Figure:
    """Each run's top heads by |direct logit attribution|, with the 95% CI."""
    return _heads_figure(runs, top_dla_heads, f"Top {TOP_K} heads by |direct effect| (95% CI)",
                         "direct logit attribution")


def heads_ablation_figure(runs: Sequence[Run]) -> go.Figure:
    """Each run's heads whose zero-ablation lowers the logit difference most, with the paired 95% CI."""
    return _heads_figure(runs, top_ablation_heads, f"Top {TOP_K} heads by zero-ablation drop (paired 95% CI)",
                         "ablated − baseline logit difference")


def _heads_table(runs: Sequence[Run], pick: Any, what: str) -> str:
    rows = []
    for r in runs:
        for rank, h in enumerate(pick(r.results, TOP_K), 1):
            rows.append([esc(r.label), esc(rank), esc(head_name(h.layer, h.head)), esc(fmt(depth(h.layer, h.n_layers))),
                         ci_cell(h.value, h.ci), esc(f"{100 * h.share:.0f}%") if h.share is not None else "n/a"])
    return table(["run", "rank", "head", "relative depth", f"{what} [95% CI]", "share of Σ|DLA|"], rows)


def _compare_top_heads(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    rows = []
    for r in runs:
        heads = top_dla_heads(r.results, 1)
        if not heads:
            return None
        h = heads[0]
        rows.append((r, h, separated((r.results.get("head_attribution_detail") or {}).get("top"), h)))
    pct = " / ".join(f"{100 * h.share:.0f}%" for _, h, _ in rows if h.share is not None)
    where = join([f"{head_name(h.layer, h.head)} in {r.label}" for r, h, _ in rows])
    if all(s for _, _, s in rows):
        regions = {region(depth(h.layer, h.n_layers)) for _, h, _ in rows}
        kind = f"one {regions.pop()} head" if len(regions) == 1 else "one head"
        text = (f"On {task}, {models_word(len(rows))} {'routes' if len(rows) == 1 else 'route'} the direct effect "
                f"through {kind} separated from its runner-up (paired 95% CI of the difference above 0): {where}, "
                f"carrying {pct} of the heads' summed |direct attribution|")
        if all(h.share_low is not None and h.share_low > HALF for _, h, _ in rows):
            text += ("; " + ("it carries" if len(rows) == 1 else "each carries")
                     + " more than half of it even at its CI's bound nearest 0")
        return Finding(text + ".", f"t{i}_heads_dla")
    parts = []
    for r, h, s in rows:
        share = f"{100 * h.share:.0f}% of the heads' summed |direct attribution|" if h.share is not None else ""
        parts.append(f"{head_name(h.layer, h.head)} in {r.label} ({share}; "
                     + ("separated from its runner-up)" if s else "not separated from its runner-up)"))
    return Finding(f"On {task}, the head with the largest |direct effect| is {join(parts)}: not every model has "
                   "a single leading head.", f"t{i}_heads_dla")


def _compare_ablation(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    parts, same = [], []
    for r in runs:
        heads = top_ablation_heads(r.results, 1)
        if not heads:
            return None
        h = heads[0]
        top_drop = (((r.results.get("head_ablation") or {}).get("zero") or {}).get("top_drop"))
        name = head_name(h.layer, h.head)
        if h.ci[1] >= 0:
            parts.append(f"in {r.label} no head's zero-ablation lowers the logit difference with a CI below 0 "
                         f"(largest drop {name}, {fmt(h.value, True)} {ci_text(h.ci, True)})")
            continue
        sep = separated(top_drop, h)
        parts.append(f"{name} in {r.label} ({fmt(h.value, True)} {ci_text(h.ci, True)}; "
                     + ("separated from the runner-up)" if sep else "not separated from the runner-up)"))
        dla = top_dla_heads(r.results, 1)
        if sep and dla and (dla[0].layer, dla[0].head) == (h.layer, h.head) and \
                separated((r.results.get("head_attribution_detail") or {}).get("top"), dla[0]):
            same.append(r.label)
    text = f"On {task}, the zero-ablation that lowers the logit difference most: {'; '.join(parts)}"
    if same:
        text += f". In {join(same)} that head is also the separated top head by direct effect"
    return Finding(text + ".", f"t{i}_heads_ablation")


def _compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    return {f"t{i}_heads_dla": heads_dla_figure(runs), f"t{i}_heads_ablation": heads_ablation_figure(runs)}


def _compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return ("<h3>Top heads</h3>"
            + grid(figures, [f"t{i}_heads_dla", f"t{i}_heads_ablation"])
            + _heads_table(runs, top_dla_heads, "direct effect")
            + _heads_table(runs, top_ablation_heads, "zero-ablation Δ"))


SECTION = register(Section(
    name="head-attribution", title="Head attribution", render=section_head_attribution,
    analysis="head_attribution", keys=("head_attribution", "head_attribution_detail"),
    figures=(FigureSpec("head_attribution", "head_attribution", head_attribution_figure),
             FigureSpec("head_attribution_naive", "head_attribution_detail.naive", head_attribution_naive_figure)),
    rules=(Rule(30, _heads),),
    compare=ComparePart(_compare_html, _compare_figures,
                        rules=(Rule(20, _compare_top_heads), Rule(30, _compare_ablation))),
))
