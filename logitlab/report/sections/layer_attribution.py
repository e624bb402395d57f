"""Direct logit attribution per component (embeddings, each layer's attention and MLP output); on compare.html
against relative depth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import ci_text
from .._util import fmt, fmt_pct, plotly_text, pre_cap
from ..compare_runs import Run, join, layer_components, models_word, region
from ..layout import COMPONENT_COLOURS, GREY, ci_pairs, colour, error_bars, plot_layout
from ..markup import Figures, esc, figure_html, missing, note
from ..registry import ComparePart, FigureSpec, Finding, Rule, Section, register

#: Share of the summed |attribution| above which named components "carry" the logit difference.
CARRY_SHARE = 0.5


def _component_colour(label: str) -> str:
    """Colour of a layer-attribution component by its kind."""
    if "attn" in label:
        return COMPONENT_COLOURS["attn"]
    if "mlp" in label:
        return COMPONENT_COLOURS["mlp"]
    return COMPONENT_COLOURS["embed"]


def layer_attribution_figure(results: Results) -> go.Figure:
    """Direct logit attribution per component (bars with stderr error bars)."""
    la = results["layer_attribution"]
    labels = [str(s) for s in la["labels"]]
    vals = [float(v) for v in la["values"]]
    err = [float(v) for v in (la.get("stderr") or [0.0] * len(vals))]
    ci = ci_pairs(la.get("ci"), len(vals))
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=vals,
            error_y={"type": "data", "array": err, "visible": True, "color": "#333", "thickness": 2,
                     "width": 0},
            marker_color=[_component_colour(s) for s in labels],
            customdata=[[e, *(ci[i] if ci else (v, v))] for i, (v, e) in enumerate(zip(vals, err))],
            hovertemplate="%{x}: %{y:.3f} ± %{customdata[0]:.3f}"
            + (", 95% CI [%{customdata[1]:.3f}, %{customdata[2]:.3f}]" if ci else "") + "<extra></extra>",
        )
    )
    if ci is not None:  # 95% CI whiskers over the stderr bars
        fig.add_trace(go.Scatter(
            x=labels, y=vals, mode="markers", marker={"size": 1, "color": GREY}, hoverinfo="skip",
            error_y={"type": "data", "symmetric": False, "array": [c[1] - v for c, v in zip(ci, vals)],
                     "arrayminus": [v - c[0] for c, v in zip(ci, vals)], "color": GREY, "thickness": 1,
                     "width": 5},
            name="95% CI"))
    plot_layout(fig, "Direct logit attribution per component (± stderr" + ("; whiskers: 95% CI)" if ci else ")"),
            420, showlegend=False)
    fig.update_xaxes(title_text="component (blue: attention, orange: MLP, green: embeddings)",
                     type="category", tickangle=-40 if len(labels) > 12 else 0)
    fig.update_yaxes(title_text="logit difference", zeroline=True)
    return fig


def section_layer_attribution(results: Results, figures: Figures,
                              findings: Sequence[Finding]) -> str:
    """Per-component direct logit attribution."""
    la = results.get("layer_attribution")
    if not la or "layer_attribution" not in figures:
        return missing("layer attribution")
    total = sum(float(v) for v in la.get("values") or [])
    return (
        note("Each component's direct contribution to the final logit difference (mean over "
             f"prompts; dark error bars ± stderr, grey whiskers the 95% bootstrap CI). The bars sum to {esc(fmt(total))}, the reconstructed mean of "
             "the DLA check. Positive bars push towards the correct answer.")
        + figure_html(figures, "layer_attribution")
    )


def _names(labels: Sequence[str], vals: Sequence[float], idx: Sequence[int]) -> str:
    """``"a (+1.00), b (+0.50) and c (−0.20)"`` for component indices."""
    items = [f"{labels[j]} ({fmt(vals[j], signed=True)})" for j in idx]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _layer_attribution(results: Results) -> Finding | None:
    """Which components carry the direct logit difference, only when they hold most of it (share stated)."""
    la = results.get("layer_attribution")
    if not la or not la.get("values"):
        return None
    labels = [str(s) for s in la["labels"]]
    vals = [float(v) for v in la["values"]]
    total_abs = sum(abs(v) for v in vals)
    if total_abs <= 0:
        return None
    share = lambda idx: sum(abs(vals[j]) for j in idx) / total_abs  # noqa: E731
    n, total = len(vals), fmt(sum(vals))
    tail = f" of the summed |attribution| over {n} components (which sum to {total})"
    # The fewest (≤ 3) components pushing towards the correct answer that hold more than half of it.
    pos = sorted((j for j in range(n) if vals[j] > 0), key=lambda j: -vals[j])
    carriers = next((pos[:k] for k in range(1, min(3, len(pos)) + 1) if share(pos[:k]) > CARRY_SHARE), None)
    if carriers is not None:
        text = (f"Direct logit attribution: the logit difference is carried mostly by "
                f"{_names(labels, vals, carriers)}, {fmt_pct(share(carriers))}{tail}")
        # Name a component pushing against it when it is among the three largest |values|.
        top3 = sorted(range(n), key=lambda i: -abs(vals[i]))[:3]
        neg = [j for j in top3 if vals[j] < 0]
        if neg:
            text += (f"; {_names(labels, vals, neg)} {'pushes' if len(neg) == 1 else 'push'} against it "
                     f"({fmt_pct(share(neg))})")
        return Finding(_capped(text + ".", results), "layer_attribution")
    top3 = sorted(range(n), key=lambda i: -abs(vals[i]))[:3]
    neg = [j for j in top3 if vals[j] < 0]
    against = (f" ({_names(labels, vals, neg)} {'pushes' if len(neg) == 1 else 'push'} against the correct "
               "answer)" if neg else "")
    text = (f"Direct logit attribution: no three components carry most of the logit difference; the three "
            f"with the highest |mean|, {_names(labels, vals, top3)}, hold {fmt_pct(share(top3))}{tail}{against}.")
    return Finding(_capped(text, results), "layer_attribution")


def _capped(text: str, results: Results) -> str:
    return f"{text} {pre_cap(results)}".rstrip()


# ---- compare.html


def layer_depth_figure(runs: Sequence[Run]) -> go.Figure:
    """Attention (solid) and MLP (dotted) attribution per layer against relative depth, one colour per run."""
    fig = go.Figure()
    for i, r in enumerate(runs):
        comps = layer_components(r.results)
        for part, dash in (("attn", "solid"), ("mlp", "dot")):
            pts = sorted((c for c in comps if c.part == part), key=lambda c: c.layer)
            if not pts:
                continue
            vals = [c.value for c in pts]
            fig.add_trace(go.Scatter(
                x=[c.depth for c in pts], y=vals, mode="lines+markers", name=plotly_text(f"{r.label} {part}"),
                line={"color": colour(i), "dash": dash}, error_y=error_bars(vals, [c.ci for c in pts]),
                customdata=[[c.layer, c.n_layers] for c in pts],
                hovertemplate=(f"{plotly_text(r.label)}: layer %{{customdata[0]}} of %{{customdata[1]}} {part}"
                               "<br>relative depth %{x:.2f}: %{y:.3f}<extra></extra>")))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    return plot_layout(fig, "Layer attribution against relative depth (attention solid, MLP dotted)", 440,
                   xaxis={"title": "relative depth (layer / n_layers)", "range": [-0.03, 1.0]},
                   yaxis={"title": "direct logit difference"})


def _compare_layers(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    parts, regions = [], set()
    for r in runs:
        comps = layer_components(r.results)
        if not comps:
            return None
        c = max(comps, key=lambda c: abs(c.value))
        regions.add(region(c.depth))
        sign = "" if c.ci[0] > 0 or c.ci[1] < 0 else ", CI includes 0"
        parts.append(f"{c.layer}_{c.part}_out in {r.label} (depth {fmt(c.depth)}, {fmt(c.value, True)} "
                     f"{ci_text(c.ci, True)}{sign})")
    tail = f"; in {models_word(len(runs))} it lies in the {regions.pop()} third" if len(regions) == 1 else ""
    return Finding(f"On {task}, the layer output with the largest mean |direct effect| is {join(parts)}{tail}.",
                   f"t{i}_layers")


def _compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    return {f"t{i}_layers": layer_depth_figure(runs)}


def _compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return ("<h3>Layer attribution by relative depth</h3>"
            + note("Each layer's attention and MLP output's direct effect (mean over prompts, bars: 95% bootstrap CI), "
                   "at layer / n_layers so that models of different depths line up; embeddings are left out.")
            + figure_html(figures, f"t{i}_layers"))


SECTION = register(Section(
    name="layer-attribution", title="Layer attribution", render=section_layer_attribution,
    analysis="layer_attribution", keys=("layer_attribution",),
    figures=(FigureSpec("layer_attribution", "layer_attribution", layer_attribution_figure),),
    rules=(Rule(20, _layer_attribution),),
    compare=ComparePart(_compare_html, _compare_figures, rules=(Rule(40, _compare_layers),)),
))
