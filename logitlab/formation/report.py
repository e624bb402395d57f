"""The circuit-formation report: pure functions from a formation ``results.json`` dict to figures and HTML.

Figures (plotly): the logit difference and accuracy against the training step (log axis; step 0 is drawn at
``step + 1 = 1``, ticks show the real steps), the top heads' direct attribution and zero-ablation effect
against the step, a heatmap of every head's attribution ("L.H") against the step, and the layer components.
Findings are sentences computed from the numbers. ``report.html`` is one self-contained file: plotly.js
inlined once, no network URL, a Content-Security-Policy that forbids network access, and every string taken
from the results escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from logitlab._io import write_text_atomic
from logitlab.formation.schema import FormationResults
from logitlab.report._util import fmt
from logitlab.report.markup import esc as _esc
from logitlab.report.markup import figure_html
from logitlab.report.page import page

__all__ = ["formation_figures", "formation_findings", "render_formation_report", "write_formation_report",
           "LOGIT_DIFF_THRESHOLD", "GENERALISES_ACCURACY"]

LOGIT_DIFF_THRESHOLD = 1.0  # "the behaviour is there": p(correct)/p(incorrect) > e
GENERALISES_ACCURACY = 0.9  # held-out accuracy needed (with the threshold above) to call it generalisation
REPORT_NAME = "report.html"


def _plot_text(x: Any) -> str:
    """Escape a string for plotly labels, which render a subset of HTML."""
    return html.escape(str(x), quote=False)


def _steps(results: FormationResults) -> list[int]:
    return [int(c["step"]) for c in results["checkpoints"]]


def _log_step_axis(steps: Sequence[int]) -> dict[str, Any]:
    """A log x-axis over step + 1 whose ticks read as real steps (0, 1, 10, 100, …)."""
    ticks = [0] + [10 ** k for k in range(0, len(str(max(steps, default=1))) + 1)]
    ticks = [t for t in ticks if t <= max(steps, default=0) * 10]
    return {"type": "log", "title": "training step (log scale; step 0 at the left edge)",
            "tickvals": [t + 1 for t in ticks], "ticktext": [str(t) for t in ticks]}


def _head_label(layer: int, head: int) -> str:
    return f"{int(layer)}.{int(head)}"


def fig_logit_diff(results: FormationResults) -> go.Figure:
    """Mean logit difference (± stderr) and accuracy against the step."""
    steps = _steps(results)
    cks = results["checkpoints"]
    x = [s + 1 for s in steps]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[c["logit_diff_mean"] for c in cks], mode="lines+markers", name="logit diff",
                             customdata=steps, hovertemplate="step %{customdata}: %{y:.3f}<extra></extra>",
                             error_y={"type": "data", "array": [c.get("logit_diff_stderr", 0) for c in cks]}))
    fig.add_trace(go.Scatter(x=x, y=[c["accuracy"] for c in cks], mode="lines+markers", name="accuracy",
                             yaxis="y2", line={"dash": "dot"}, customdata=steps,
                             hovertemplate="step %{customdata}: %{y:.0%}<extra></extra>"))
    fig.add_hline(y=LOGIT_DIFF_THRESHOLD, line_dash="dash", line_color="#999",
                  annotation_text=f"logit diff {LOGIT_DIFF_THRESHOLD:g}")
    fig.update_layout(title="Logit difference and accuracy during training", xaxis=_log_step_axis(steps),
                      yaxis={"title": "mean logit difference"}, height=420,
                      yaxis2={"title": "accuracy", "overlaying": "y", "side": "right", "range": [0, 1.05],
                              "tickformat": ".0%", "tickvals": [0, 0.25, 0.5, 0.75, 1], "showgrid": False}, legend={"x": 0.01, "y": 0.99})
    return fig


def fig_heads(results: FormationResults) -> go.Figure:
    """The followed heads' direct attribution (solid) and zero-ablation effect (dotted) against the step."""
    steps = _steps(results)
    x = [s + 1 for s in steps]
    cks = results["checkpoints"]
    fig = go.Figure()
    heads = [(h["layer"], h["head"]) for h in results.get("top_heads", [])]
    heads += [(h["layer"], h["head"]) for h in results.get("ablation_heads", []) if (h["layer"], h["head"]) not in heads]
    for i, (l, h) in enumerate(heads):
        color = f"hsl({(i * 67) % 360},60%,42%)"
        lab = _head_label(l, h)
        fig.add_trace(go.Scatter(x=x, y=[c["head_attribution"][l][h] for c in cks], mode="lines+markers",
                                 name=f"{lab} attribution", line={"color": color}, customdata=steps,
                                 hovertemplate=f"head {lab}, step %{{customdata}}: %{{y:.3f}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=x, y=[c["zero_ablation_effect"][l][h] for c in cks], mode="lines",
                                 name=f"{lab} ablation effect", line={"color": color, "dash": "dot"},
                                 customdata=steps,
                                 hovertemplate=f"head {lab} ablated, step %{{customdata}}: %{{y:.3f}}<extra></extra>"))
    for s in results.get("switch_on", []):
        if s.get("step") is not None:
            fig.add_vline(x=s["step"] + 1, line_dash="dot", line_color="#bbb",
                          annotation_text=f"{_head_label(s['layer'], s['head'])} on", annotation_textangle=-90)
    fig.update_layout(title="Heads: direct attribution (solid) and zero-ablation effect (dotted)",
                      xaxis=_log_step_axis(steps), yaxis={"title": "logit difference"}, height=440)
    return fig


def fig_head_heatmap(results: FormationResults) -> go.Figure:
    """Every head's attribution (rows "L.H") at every checkpoint (columns)."""
    cks = results["checkpoints"]
    L = len(cks[-1]["head_attribution"])
    H = len(cks[-1]["head_attribution"][0]) if L else 0
    labels = [_head_label(l, h) for l in range(L) for h in range(H)]
    z = [[c["head_attribution"][l][h] for c in cks] for l in range(L) for h in range(H)]  # (head, checkpoint)
    vmax = max((abs(v) for row in z for v in row), default=1.0) or 1.0
    fig = go.Figure(go.Heatmap(z=z, x=[str(s) for s in _steps(results)], y=labels, colorscale="RdBu",
                               zmin=-vmax, zmax=vmax, colorbar={"title": "attribution"},
                               hovertemplate="head %{y}, step %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title="Head attribution at each checkpoint", height=max(300, 22 * len(labels) + 140),
                      xaxis={"title": "training step (checkpoints, evenly spaced)", "type": "category"},
                      yaxis={"title": "head (layer.head)", "autorange": "reversed", "type": "category"})
    return fig


def fig_layers(results: FormationResults) -> go.Figure:
    """Each residual-stream component's attribution against the step."""
    steps = _steps(results)
    cks = results["checkpoints"]
    labels = cks[-1]["layer_attribution"]["labels"]
    fig = go.Figure()
    for i, lab in enumerate(labels):
        fig.add_trace(go.Scatter(x=[s + 1 for s in steps], y=[c["layer_attribution"]["values"][i] for c in cks],
                                 mode="lines+markers", name=_plot_text(lab), customdata=steps,
                                 hovertemplate="step %{customdata}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title="Layer attribution during training", xaxis=_log_step_axis(steps),
                      yaxis={"title": "logit difference"}, height=420)
    return fig


def formation_figures(results: FormationResults) -> dict[str, go.Figure]:
    """All figures of the report, by id."""
    return {"logit_diff": fig_logit_diff(results), "heads": fig_heads(results),
            "head_heatmap": fig_head_heatmap(results), "layers": fig_layers(results)}


def formation_findings(results: FormationResults) -> list[str]:
    """Plain-text findings computed from the numbers (escape before putting them into HTML)."""
    cks = results["checkpoints"]
    steps = _steps(results)
    first, last = cks[0], cks[-1]
    out = [f"The mean logit difference starts at {fmt(first['logit_diff_mean'], True)} (step {steps[0]}, "
           f"accuracy {first['accuracy']:.0%}) and ends at {fmt(last['logit_diff_mean'], True)} "
           f"(step {steps[-1]}, accuracy {last['accuracy']:.0%})."]
    above = next((i for i, c in enumerate(cks) if c["logit_diff_mean"] > LOGIT_DIFF_THRESHOLD), None)
    if above is None:
        out.append(f"It never exceeds {LOGIT_DIFF_THRESHOLD:g} at any checkpoint.")
    else:
        before = f"; step {steps[above - 1]}: {fmt(cks[above - 1]['logit_diff_mean'], True)}" if above else ""
        out.append(f"It first exceeds {LOGIT_DIFF_THRESHOLD:g} at step {steps[above]} "
                   f"({fmt(cks[above]['logit_diff_mean'], True)}{before}).")
    on = {(s["layer"], s["head"]): s.get("step") for s in results.get("switch_on", [])}
    for h in results.get("top_heads", []):
        key = (h["layer"], h["head"])
        when = f"switches on at step {on[key]}" if on.get(key) is not None else "has no switch-on step"
        series = [c["head_attribution"][key[0]][key[1]] for c in cks]
        peak = max(range(len(series)), key=lambda i: abs(series[i]))
        transient = ""
        if abs(series[peak]) > 2 * abs(h["final_attribution"]):  # a head that wrote the answer, then handed over
            transient = (f"; its attribution peaked at {fmt(series[peak], True)} at step {steps[peak]} before "
                         "falling back")
        out.append(f"Top head {_head_label(*key)} (final attribution {fmt(h['final_attribution'], True)}, "
                   f"zero-ablation effect {fmt(h['final_ablation_effect'], True)}) {when}{transient}.")
    final_ld = last["logit_diff_mean"]
    direct = sum(h["final_attribution"] for h in results.get("top_heads", []))
    if results.get("top_heads") and abs(direct) < 0.25 * abs(final_ld):
        out.append(f"Heads write little directly: the {len(results['top_heads'])} top heads together contribute "
                   f"{fmt(direct, True)} of the final {fmt(final_ld, True)}.")
    on_abl = {(s["layer"], s["head"]): s.get("step") for s in results.get("ablation_switch_on", [])}
    top_keys = {(h["layer"], h["head"]) for h in results.get("top_heads", [])}
    for h in results.get("ablation_heads", [])[:1]:
        key = (h["layer"], h["head"])
        attribution = last["head_attribution"][key[0]][key[1]]
        text = (f"Zero-ablating head {_head_label(*key)} changes the final logit difference most "
                f"({fmt(h['final_ablation_effect'], True)}); that effect reaches half its final size to stay at "
                f"step {on_abl.get(key, 'n/a')}")
        if key not in top_keys and abs(attribution) < 0.25 * abs(h["final_ablation_effect"]):
            text += (f". Its direct attribution is only {fmt(attribution, True)}: it acts indirectly, "
                     "through later layers")
        out.append(text + ".")
    labels, values = last["layer_attribution"]["labels"], last["layer_attribution"]["values"]
    if values:
        i = max(range(len(values)), key=lambda j: abs(values[j]))
        out.append(f"At the last checkpoint the largest direct contribution is {labels[i]} "
                   f"({fmt(values[i], True)} of {fmt(final_ld, True)}).")
    patch = last.get("resid_patching_summary") or {}
    if patch.get("normalised"):
        subj = [i for i, v in enumerate(patch["subject"]) if v > 0.5]
        fin = [i for i, v in enumerate(patch["final"]) if v > 0.5]
        where = []
        if subj:
            where.append(f"the subject position alone restores over half the clean logit difference up to layer {subj[-1]}'s input")
        if fin:
            where.append(f"the final position alone does so from layer {fin[0]}'s input on")
        if where:
            out.append(f"Residual-stream patching at the last checkpoint (clean into corrupted): {'; '.join(where)}.")
    n = len(results["task"].get("prompts", []))
    if results.get("heldout"):
        ok = last["accuracy"] >= GENERALISES_ACCURACY and final_ld > LOGIT_DIFF_THRESHOLD
        out.append(f"The {n} evaluated prompts are held out from training: "
                   f"the behaviour {'generalises' if ok else 'does not generalise'} to them (final accuracy "
                   f"{last['accuracy']:.0%}, mean logit difference {fmt(final_ld, True)}; generalising means "
                   f"accuracy ≥ {GENERALISES_ACCURACY:.0%} and mean logit difference > {LOGIT_DIFF_THRESHOLD:g}).")
    else:
        out.append(f"The task ({n} prompts) is not marked as held out, so these numbers do not measure "
                   "generalisation.")
    return out


def _table(results: FormationResults) -> str:
    rows = []
    for c in results["checkpoints"]:
        rows.append(f"<tr><td class=num>{_esc(c['step'])}</td><td class=num>{fmt(c['logit_diff_mean'], True)}</td>"
                    f"<td class=num>{c['accuracy']:.0%}</td><td class=num>{fmt(c.get('loss_mean'))}</td></tr>")
    return ("<table><thead><tr><th>step</th><th>logit diff</th><th>accuracy</th><th>answer loss</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def render_formation_report(results: FormationResults) -> str:
    """The whole report as one self-contained HTML document."""
    figs = formation_figures(results)
    task = results.get("task", {})
    model = results.get("model", {})
    title = f"Circuit formation: {task.get('name', 'task')} on {model.get('name', 'model')}"
    findings = "".join(f"<li>{_esc(f)}</li>" for f in formation_findings(results))
    definitions = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in results.get("definitions", {}).items())
    desc = f'<p class="note">{_esc(task["description"])}</p>' if task.get("description") else ""
    body = (
        f"<section><h2>Findings</h2>{desc}<ol>{findings}</ol></section>"
        f"<section><h2>Behaviour</h2>{figure_html(figs, 'logit_diff')}{_table(results)}</section>"
        f"<section><h2>Heads</h2>{figure_html(figs, 'heads')}"
        f"{figure_html(figs, 'head_heatmap')}</section>"
        f"<section><h2>Layers</h2>{figure_html(figs, 'layers')}</section>"
        f"<section><h2>Definitions</h2><dl>{definitions}</dl></section>"
    )
    sub = f"{len(results['checkpoints'])} checkpoints · logitlab {results.get('logitlab_version', '?')}"
    return page(title, title, sub, body)


def write_formation_report(out: Path, results: FormationResults) -> Path:
    """Write ``out/report.html`` atomically (:func:`logitlab._io.write_text_atomic`)."""
    out.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out / REPORT_NAME, render_formation_report(results))
