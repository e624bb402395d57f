"""compare.html: several runs side by side, from their results only.

Inputs are run folders (``logitlab run``, a grid's cells), formation folders (``logitlab formation``) and grid
folders (expanded into their finished cells). Battery runs are grouped by task; each group shows its models'
mean logit difference with the 95% CI, the layer attribution against relative depth (layer / n_layers, so
models of different depths share one axis), the top heads by direct logit attribution and by zero-ablation
with their CIs, each model's residual-patching heatmap, and the circuit sections (``attribution_patching``,
``path_patching``, ``circuit``) of runs that have them. Formation runs, and grid cells on training checkpoints,
are drawn on one log-step axis. Findings across models (:mod:`logitlab.report.compare_findings`) never claim
more than the numbers with their CIs show.

The page is built like ``report.html`` (:mod:`logitlab.report.html`): one self-contained file, plotly.js
inlined once, a Content-Security-Policy that forbids network access, every string escaped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from logitlab._io import write_text_atomic
from logitlab.errors import LogitlabError

from ._util import finite, fmt, head_name, is_matrix, plotly_text
from .compare_circuits import circuit_figures, circuit_html
from .compare_findings import (
    Run, compare_findings, depth, layer_components, series_points, side_by_side, task_groups,
    top_ablation_heads, top_dla_heads,
)
from .figures import TEMPLATE, resid_patching_figure
from .findings import Finding
from .html import CSP, CSS, RESIZE_JS
from .sections import esc, figure_html, grid, note, table

__all__ = ["Run", "load_runs", "compare_figures", "compare_findings", "render_compare", "write_compare"]

logger = logging.getLogger(__name__)

PALETTE = ("#2166ac", "#d6604d", "#1b7837", "#762a83", "#e08214", "#35978f", "#c51b7d", "#8c510a")
TOP_K = 5


# ---------------------------------------------------------------------------------------------------------
# Loading


def _run_label(results: dict[str, Any], cell: dict[str, Any]) -> str:
    if cell.get("model"):
        label = str(cell["model"])
    else:
        name = str((results.get("model") or {}).get("name", "model"))
        label = Path(name).name if "/" in name else name
    if cell.get("step") is not None:
        label += f" @ step {cell['step']}"
    elif cell.get("revision"):
        label += f" @ {cell['revision']}"
    return label


def _load_one(folder: Path) -> Run:
    path = folder if folder.is_file() else folder / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LogitlabError(f"no results.json in {folder}", "pass run, formation or grid folders") from e
    except ValueError as e:
        raise LogitlabError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(results, dict) or "model" not in results or "task" not in results:
        raise LogitlabError(f"{path} is not a logitlab results.json (no model or task)")
    kind = "formation" if results.get("kind") == "formation" else "battery"
    if kind == "battery" and "logit_diff" not in results:
        raise LogitlabError(f"{path} is not a logitlab results.json (no logit_diff)")
    try:
        cell = json.loads((path.parent / "cell.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cell = {}
    task = str((results.get("task") or {}).get("name", "task"))
    return Run(label=_run_label(results, cell), folder=str(path.parent), results=results, kind=kind,
               model=str(cell.get("model") or _run_label(results, {})), task=task, step=cell.get("step"))


def load_runs(paths: Sequence[Path | str]) -> list[Run]:
    """The runs in ``paths``: run or formation folders, ``results.json`` files, or grid folders (their
    finished cells, in grid order). Labels are made unique within each task."""
    runs: list[Run] = []
    for p in map(Path, paths):
        grid_json = p / "grid.json"
        if p.is_dir() and grid_json.is_file() and not (p / "results.json").is_file():
            try:
                cells = json.loads(grid_json.read_text(encoding="utf-8"))["cells"]
            except (OSError, ValueError, KeyError) as e:
                raise LogitlabError(f"cannot read {grid_json}: {e}") from e
            runs += [_load_one(p / c["folder"]) for c in cells if c.get("status") in ("done", "skipped")]
        else:
            runs.append(_load_one(p))
    if not runs:
        raise LogitlabError("no finished runs to compare", "pass run, formation or grid folders holding results")
    seen: dict[tuple[str, str], int] = {}  # labels are unique within a task: its section shows them together
    out = []
    for r in runs:
        label = r.label if r.kind == "battery" else f"{r.label} (formation, {r.task})"
        n = seen.get((label, r.task), 0)
        seen[(label, r.task)] = n + 1
        if n:
            label = f"{label} ({n + 1})"
        out.append(Run(label=label, folder=r.folder, results=r.results, kind=r.kind, model=r.model, task=r.task,
                       step=r.step))
    return out


# ---------------------------------------------------------------------------------------------------------
# Figures: pure functions of the runs


def _layout(fig: go.Figure, title: str, height: int, **kwargs: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.01, "xanchor": "left"}, height=height,
                      margin={"l": 70, "r": 30, "t": 60, "b": 60}, **kwargs)
    return fig


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _err(values: Sequence[float], cis: Sequence[Any]) -> dict[str, Any] | None:
    """Asymmetric error bars from 95% CIs (None when some CI is missing)."""
    if len(cis) != len(values) or not all(isinstance(c, (list, tuple)) and len(c) == 2 for c in cis):
        return None
    return {"type": "data", "symmetric": False, "array": [max(0.0, c[1] - v) for v, c in zip(values, cis)],
            "arrayminus": [max(0.0, v - c[0]) for v, c in zip(values, cis)], "color": "#777", "thickness": 1.2}


def logit_diff_figure(runs: Sequence[Run]) -> go.Figure:
    """Each run's mean logit difference with its 95% bootstrap CI."""
    fig = go.Figure()
    for i, r in enumerate(runs):
        ld = r.results["logit_diff"]
        ci = ld.get("ci") or [ld["mean"], ld["mean"]]
        fig.add_trace(go.Bar(
            x=[plotly_text(r.label)], y=[ld["mean"]], marker_color=_colour(i), name=plotly_text(r.label),
            error_y=_err([ld["mean"]], [ci]),
            hovertemplate=(f"{plotly_text(r.label)}<br>mean %{{y:.3f}}, 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]<br>"
                           f"accuracy {100 * float(ld.get('accuracy', 0)):.0f}% over "
                           f"{len(ld.get('per_prompt') or [])} prompts<extra></extra>")))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    return _layout(fig, "Mean logit difference (95% bootstrap CI over prompts)", 380, showlegend=False,
                   yaxis={"title": "logit(correct) − logit(incorrect)"})


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
                line={"color": _colour(i), "dash": dash}, error_y=_err(vals, [c.ci for c in pts]),
                customdata=[[c.layer, c.n_layers] for c in pts],
                hovertemplate=(f"{plotly_text(r.label)}: layer %{{customdata[0]}} of %{{customdata[1]}} {part}"
                               "<br>relative depth %{x:.2f}: %{y:.3f}<extra></extra>")))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    return _layout(fig, "Layer attribution against relative depth (attention solid, MLP dotted)", 440,
                   xaxis={"title": "relative depth (layer / n_layers)", "range": [-0.03, 1.0]},
                   yaxis={"title": "direct logit difference"})


def _heads_figure(runs: Sequence[Run], pick: Any, title: str, xaxis: str) -> go.Figure:
    fig = go.Figure()
    for i, r in enumerate(runs):
        heads = pick(r.results, TOP_K)
        if not heads:
            continue
        vals = [h.value for h in heads]
        fig.add_trace(go.Bar(
            y=[plotly_text(f"{r.label} · {head_name(h.layer, h.head)}") for h in heads], x=vals, orientation="h",
            marker_color=_colour(i), name=plotly_text(r.label),
            error_x=_err(vals, [h.ci for h in heads]),
            customdata=[[h.ci[0], h.ci[1], depth(h.layer, h.n_layers)] for h in heads],
            hovertemplate=("%{y}: %{x:.3f}, 95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                           "<br>relative depth %{customdata[2]:.2f}<extra></extra>")))
    n = sum(len(t.y) for t in fig.data)
    fig.add_vline(x=0, line_color="#999", line_width=1)
    return _layout(fig, title, max(300, 120 + 24 * n), xaxis={"title": xaxis},
                   yaxis={"autorange": "reversed", "type": "category"}, legend={"orientation": "h", "y": -0.2})


def heads_dla_figure(runs: Sequence[Run]) -> go.Figure:
    """Each run's top heads by |direct logit attribution|, with the 95% CI."""
    return _heads_figure(runs, top_dla_heads, f"Top {TOP_K} heads by |direct effect| (95% CI)",
                         "direct logit attribution")


def heads_ablation_figure(runs: Sequence[Run]) -> go.Figure:
    """Each run's heads whose zero-ablation lowers the logit difference most, with the paired 95% CI."""
    return _heads_figure(runs, top_ablation_heads, f"Top {TOP_K} heads by zero-ablation drop (paired 95% CI)",
                         "ablated − baseline logit difference")


def _patching_figure(run: Run) -> go.Figure | None:
    rp = run.results.get("resid_patching")
    if not isinstance(rp, dict) or not is_matrix(rp.get("values")):
        return None
    fig = resid_patching_figure(run.results)
    fig.update_layout(title={"text": f"{plotly_text(run.label)}: resid_pre patching"})
    return fig


def _log_step_axis(steps: Sequence[int]) -> dict[str, Any]:
    """A log x-axis over step + 1 whose ticks read as real steps (0, 1, 10, 100, …)."""
    top = max(steps, default=1)
    ticks = [0] + [10 ** k for k in range(len(str(max(top, 1))) + 1)]
    ticks = [t for t in ticks if t <= max(top, 1) * 10]
    return {"type": "log", "title": "training step (log scale; step 0 at the left edge)",
            "tickvals": [t + 1 for t in ticks], "ticktext": [str(t) for t in ticks]}


def formation_figure(runs: Sequence[Run]) -> go.Figure | None:
    """Mean logit difference against the training step for every formation run and checkpoint series."""
    series = series_points(runs)
    if not series:
        return None
    fig = go.Figure()
    steps: list[int] = []
    for i, (label, pts) in enumerate(series.items()):
        steps += [p.step for p in pts]
        vals = [p.value for p in pts]
        fig.add_trace(go.Scatter(
            x=[p.step + 1 for p in pts], y=vals, mode="lines+markers", name=plotly_text(label),
            line={"color": _colour(i)}, error_y=_err(vals, [p.ci for p in pts]), customdata=[p.step for p in pts],
            hovertemplate=f"{plotly_text(label)}<br>step %{{customdata}}: %{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    return _layout(fig, "Logit difference during training (bars: 95% CI, or ± 1.96 stderr for formation runs)",
                   440, xaxis=_log_step_axis(steps), yaxis={"title": "mean logit difference"})


def compare_figures(runs: Sequence[Run]) -> dict[str, go.Figure]:
    """Every figure of compare.html by id (``t{i}_…`` for task group i)."""
    figs: dict[str, go.Figure] = {}
    for i, (_, group) in enumerate(task_groups(runs).items()):
        shown = side_by_side(group)
        figs[f"t{i}_logit_diff"] = logit_diff_figure(shown)
        figs[f"t{i}_layers"] = layer_depth_figure(shown)
        figs[f"t{i}_heads_dla"] = heads_dla_figure(shown)
        figs[f"t{i}_heads_ablation"] = heads_ablation_figure(shown)
        for j, r in enumerate(shown):
            fig = _patching_figure(r)
            if fig is not None:
                figs[f"t{i}_patch_{j}"] = fig
        figs.update(circuit_figures(i, shown))
    fig = formation_figure(runs)
    if fig is not None:
        figs["formation"] = fig
    return figs


# ---------------------------------------------------------------------------------------------------------
# HTML


def _ci_cell(v: float, ci: Any) -> str:
    ci_txt = f" [{fmt(ci[0], True)}, {fmt(ci[1], True)}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return esc(f"{fmt(v, True)}{ci_txt}")


def _runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        m = r.results.get("model") or {}
        shape = f"{m.get('n_layers', '?')} × {m.get('n_heads', '?')}"
        if r.kind == "formation":
            cks = r.results.get("checkpoints") or [{}]
            last = cks[-1]
            ld = _ci_cell(last.get("logit_diff_mean"), None) + esc(f" (step {last.get('step')})")
            acc, dla = (f"{100 * float(last['accuracy']):.0f}%" if finite(last.get("accuracy")) else "n/a"), "n/a"
        else:
            d = r.results["logit_diff"]
            ld, acc = _ci_cell(d["mean"], d.get("ci")), f"{100 * float(d.get('accuracy', 0)):.0f}%"
            dla = f"{float((r.results.get('dla') or {}).get('relative_error', float('nan'))):.1e}"
        rows.append([esc(r.label), esc(r.kind), esc(r.task), esc(shape), esc(m.get("dtype", "?")), ld, esc(acc),
                     esc(dla), f'<span class="prompt">{esc(r.folder)}</span>'])
    return table(["run", "kind", "task", "layers × heads", "dtype", "mean logit diff [95% CI]", "accuracy",
                  "DLA rel. error", "folder"], rows)


def _heads_table(runs: Sequence[Run], pick: Any, what: str) -> str:
    rows = []
    for r in runs:
        for rank, h in enumerate(pick(r.results, TOP_K), 1):
            rows.append([esc(r.label), esc(rank), esc(head_name(h.layer, h.head)), esc(fmt(depth(h.layer, h.n_layers))),
                         _ci_cell(h.value, h.ci), esc(f"{100 * h.share:.0f}%") if h.share is not None else "n/a"])
    return table(["run", "rank", "head", "relative depth", f"{what} [95% CI]", "share of Σ|DLA|"], rows)


def _group_section(i: int, task: str, group: Sequence[Run], figures: dict[str, go.Figure]) -> str:
    shown = side_by_side(group)
    hidden = len(group) - len(shown)
    extra = (note(f"{hidden} earlier checkpoint run(s) of this task are drawn in the formation section only.")
             if hidden else "")
    patch_ids = [f"t{i}_patch_{j}" for j in range(len(shown)) if f"t{i}_patch_{j}" in figures]
    no_patch = [r.label for j, r in enumerate(shown) if f"t{i}_patch_{j}" not in figures]
    patch_note = note(f"No normalised residual patching in {esc(', '.join(no_patch))}.") if no_patch else ""
    return (
        f'<section id="task-{i}"><h2>Task: {esc(task)}</h2>{extra}'
        + "<h3>Logit difference</h3>" + figure_html(figures, f"t{i}_logit_diff")
        + "<h3>Layer attribution by relative depth</h3>"
        + note("Each layer's attention and MLP output's direct effect (mean over prompts, bars: 95% bootstrap CI), "
               "at layer / n_layers so that models of different depths line up; embeddings are left out.")
        + figure_html(figures, f"t{i}_layers")
        + "<h3>Top heads</h3>"
        + grid(figures, [f"t{i}_heads_dla", f"t{i}_heads_ablation"])
        + _heads_table(shown, top_dla_heads, "direct effect")
        + _heads_table(shown, top_ablation_heads, "zero-ablation Δ")
        + "<h3>Residual-stream patching</h3>"
        + note("resid_pre patched clean into corrupted, as a fraction of each pair's clean − corrupted gap "
               "(1 = fully restored).") + patch_note
        + grid(figures, patch_ids)
        + circuit_html(i, shown, figures)
        + "</section>"
    )


def render_compare(runs: Sequence[Run], figures: dict[str, go.Figure], findings: Sequence[Finding],
                   title: str = "logitlab comparison") -> str:
    """The whole comparison as one self-contained HTML document."""
    groups = task_groups(runs)
    sections: list[tuple[str, str, str]] = []
    items = "".join(f'<li><a href="#fig-{esc(f.figure_id)}">{esc(f.text)}</a></li>' for f in findings)
    sections.append(("findings", "Findings across models",
                     (f'<ol class="findings">{items}</ol>' if items else note("No finding could be derived."))
                     + note("Computed from the runs' numbers; a claim is made only where the 95% CIs support it. "
                            "Each sentence links to its figure.")))
    sections.append(("runs", "Runs", _runs_table(runs)))
    body = [f'<section id="{a}"><h2>{esc(h)}</h2>{b}</section>' for a, h, b in sections]
    toc = [f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections]
    for i, (task, group) in enumerate(groups.items()):
        try:
            body.append(_group_section(i, task, group, figures))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            logger.warning("task %r could not be rendered: %s", task, exc)
            body.append(f'<section id="task-{i}"><h2>Task: {esc(task)}</h2>'
                        + note(f"This section could not be rendered ({esc(type(exc).__name__)}).") + "</section>")
        toc.append(f'<a href="#task-{i}">{esc(task)}</a>')
    if "formation" in figures:
        body.append('<section id="formation"><h2>Formation</h2>'
                    + note("Formation runs and grid cells on training checkpoints, on one training-step axis.")
                    + figure_html(figures, "formation") + "</section>")
        toc.append('<a href="#formation">Formation</a>')
    sub = f"{len(runs)} runs · {len(groups)} task(s)"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n"
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        f'<header class="top"><h1>{esc(title)}</h1><div class="sub">{esc(sub)}</div></header>\n'
        f'<nav class="toc">{"".join(toc)}</nav>\n<main>\n' + "\n".join(body)
        + "\n</main>\n<footer>Written by logitlab from the runs' results.json files. Self-contained: no network "
        f'access needed.</footer>\n<script type="text/javascript">{RESIZE_JS}</script>\n</body>\n</html>\n'
    )


def write_compare(paths: Sequence[Path | str], out: Path | str, title: str | None = None) -> Path:
    """Load the runs in ``paths`` (:func:`load_runs`) and write their comparison to ``out`` atomically."""
    runs = load_runs(paths)
    figures = compare_figures(runs)
    findings = compare_findings(runs)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(out, render_compare(runs, figures, findings, title or "logitlab comparison"))
    except OSError as e:
        raise LogitlabError(f"cannot write {out}: {e.strerror or e}", "choose another --out") from e
