"""compare.html: several runs side by side, from their results only.

Inputs are run folders (``logitlab run``, a grid's cells), formation folders (``logitlab formation``) and grid
folders (expanded into their finished cells). Battery runs are grouped by task; each group shows its models'
mean logit difference with the 95% CI, the layer attribution against relative depth (layer / n_layers, so
models of different depths share one axis), the top heads by direct logit attribution and by zero-ablation
with their CIs, each model's residual-patching heatmap, and the circuit sections (``attribution_patching``,
``path_patching``, ``circuit``) of runs that have them. Formation runs, and grid cells on training checkpoints,
are drawn on one log-step axis. Findings across models (:mod:`logitlab.report.compare_findings`) never claim
more than the numbers with their CIs show.

Each task group's parts come from the registered sections (:mod:`logitlab.report.registry`, a section's
``compare`` part), in report order. Every battery run is read with :func:`logitlab.results.load_results` when it is
loaded (an older schema version migrated once, or refused; then validated).
The page shell is ``report.html``'s (:mod:`logitlab.report.page`): one self-contained file, plotly.js inlined once,
a Content-Security-Policy that forbids network access, every string escaped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from logitlab._io import write_text_atomic
from logitlab.errors import LogitlabError
from logitlab.results import load_results

from .sections import MODULES as SECTION_MODULES  # importing the package registers every section
from ._util import finite, plotly_text
from .compare_findings import compare_findings
from .compare_runs import Run, ci_cell, series_points, side_by_side, task_groups
from .layout import colour, error_bars, plot_layout
from .markup import esc, figure_html, note, table
from .page import page
from .registry import Finding
from .registry import sections as registered

__all__ = ["Run", "load_runs", "compare_figures", "compare_findings", "render_compare", "SECTION_MODULES", "write_compare"]


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
    if kind == "battery":
        if "logit_diff" not in results:
            raise LogitlabError(f"{path} is not a logitlab results.json (no logit_diff)")
        try:
            results = load_results(results)
        except LogitlabError as e:
            raise LogitlabError(f"{path}: {e.args[0]}", e.hint) from None
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
            line={"color": colour(i)}, error_y=error_bars(vals, [p.ci for p in pts]), customdata=[p.step for p in pts],
            hovertemplate=f"{plotly_text(label)}<br>step %{{customdata}}: %{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    return plot_layout(fig, "Logit difference during training (bars: 95% CI, or ± 1.96 stderr for formation runs)",
                   440, xaxis=_log_step_axis(steps), yaxis={"title": "mean logit difference"})


def compare_figures(runs: Sequence[Run]) -> dict[str, go.Figure]:
    """Every figure of compare.html by id (``t{i}_…`` for task group i, from the registered sections' compare
    parts), and ``formation``."""
    figs: dict[str, go.Figure] = {}
    for i, (_, group) in enumerate(task_groups(runs).items()):
        shown = side_by_side(group)
        for sec in registered():
            if sec.compare is not None and sec.compare.figures is not None:
                figs.update(sec.compare.figures(i, shown))
    fig = formation_figure(runs)
    if fig is not None:
        figs["formation"] = fig
    return figs


# ---------------------------------------------------------------------------------------------------------
# HTML


def _runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        m = r.results.get("model") or {}
        shape = f"{m.get('n_layers', '?')} × {m.get('n_heads', '?')}"
        if r.kind == "formation":
            cks = r.results.get("checkpoints") or [{}]
            last = cks[-1]
            ld = ci_cell(last.get("logit_diff_mean"), None) + esc(f" (step {last.get('step')})")
            acc, dla = (f"{100 * float(last['accuracy']):.0f}%" if finite(last.get("accuracy")) else "n/a"), "n/a"
        else:
            d = r.results["logit_diff"]
            ld, acc = ci_cell(d["mean"], d.get("ci")), f"{100 * float(d.get('accuracy', 0)):.0f}%"
            dla = f"{float((r.results.get('dla') or {}).get('relative_error', float('nan'))):.1e}"
        rows.append([esc(r.label), esc(r.kind), esc(r.task), esc(shape), esc(m.get("dtype", "?")), ld, esc(acc),
                     esc(dla), f'<span class="prompt">{esc(r.folder)}</span>'])
    return table(["run", "kind", "task", "layers × heads", "dtype", "mean logit diff [95% CI]", "accuracy",
                  "DLA rel. error", "folder"], rows)


def _group_section(i: int, task: str, group: Sequence[Run], figures: dict[str, go.Figure]) -> str:
    shown = side_by_side(group)
    hidden = len(group) - len(shown)
    extra = (note(f"{hidden} earlier checkpoint run(s) of this task are drawn in the formation section only.")
             if hidden else "")
    parts = "".join(sec.compare.render(i, shown, figures) for sec in registered() if sec.compare is not None)
    return f'<section id="task-{i}"><h2>Task: {esc(task)}</h2>{extra}' + parts + "</section>"


def render_compare(runs: Sequence[Run], figures: dict[str, go.Figure], findings: Sequence[Finding],
                   title: str = "logitlab comparison") -> str:
    """The whole comparison as one self-contained HTML document."""
    groups = task_groups(runs)
    items = "".join(f'<li><a href="#fig-{esc(f.figure_id)}">{esc(f.text)}</a></li>' for f in findings)
    body = [
        '<section id="findings"><h2>Findings across models</h2>'
        + (f'<ol class="findings">{items}</ol>' if items else note("No finding could be derived."))
        + note("Computed from the runs' numbers; a claim is made only where the 95% CIs support it. "
               "Each sentence links to its figure.") + "</section>",
        f'<section id="runs"><h2>Runs</h2>{_runs_table(runs)}</section>',
    ]
    toc = [("findings", "Findings across models"), ("runs", "Runs")]
    for i, (task, group) in enumerate(groups.items()):
        body.append(_group_section(i, task, group, figures))
        toc.append((f"task-{i}", task))
    if "formation" in figures:
        body.append('<section id="formation"><h2>Formation</h2>'
                    + note("Formation runs and grid cells on training checkpoints, on one training-step axis.")
                    + figure_html(figures, "formation") + "</section>")
        toc.append(("formation", "Formation"))
    sub = f"{len(runs)} runs · {len(groups)} task(s)"
    return page(title, title, sub, "\n".join(body), toc=toc,
                footer="Written by logitlab from the runs' results.json files. Self-contained: no network access "
                       "needed.")


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
