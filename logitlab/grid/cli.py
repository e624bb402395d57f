"""Command-line entry points ``logitlab grid`` and ``logitlab compare`` (plain functions; the main CLI registers
them as typer commands). They only wire options to the library and show the grid's progress.

Example:
    logitlab grid grid.yaml --out grid-out                # sequential, in this process
    logitlab grid grid.yaml --out grid-out --ray local    # one Ray task per cell on this machine
    logitlab compare grid-out other-run/ --out compare.html
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from logitlab.errors import LogitlabError

if TYPE_CHECKING:
    from logitlab.grid.progress import CellProgress
    from logitlab.grid.run import CellStatus

__all__ = ["grid_cmd", "compare_cmd"]

console = Console(stderr=True)


class _Board:
    """The grid's progress: one bar for the cells (done, running, left; elapsed) and, per running cell, its current
    step (loading, the analysis the battery is running with its items, writing). Without a live terminal (a log
    file), each step is printed as one line instead."""

    def __init__(self, progress: Progress, n_cells: int) -> None:
        self.progress, self.n_cells, self.done, self.t0 = progress, n_cells, 0, time.perf_counter()
        self.live = progress.console.is_terminal and not progress.console.is_dumb_terminal
        self.cells = progress.add_task("cells", total=n_cells)
        self.steps: dict[str, TaskID] = {}  # running cell → its line
        self.last: dict[str, str] = {}  # running cell → its step's description
        self.started: dict[str, float] = {}  # running cell → when it first reported
        self._summary()

    def running(self, p: CellProgress) -> None:
        text = f"  {p.name}: {p.description}"
        total = p.total or None  # an uncounted step: a pulsing bar
        if p.name not in self.steps:
            self.started[p.name] = time.perf_counter()
            self.steps[p.name] = self.progress.add_task(text, total=total, completed=p.done, visible=self.live)
            self._summary()
        else:
            self.progress.update(self.steps[p.name], description=text, total=total, completed=p.done)
        if not self.live and self.last.get(p.name) != p.description:
            count = f" ({p.total} items)" if p.total else ""
            secs = time.perf_counter() - self.started[p.name]
            self.progress.console.print(f"  {p.name}: {p.description}{count}, at {secs:.0f} s", highlight=False,
                                        markup=False)
        self.last[p.name] = p.description

    def finished(self, row: CellStatus) -> None:
        colour = {"done": "green", "skipped": "cyan", "failed": "red"}.get(row.status, "white")
        secs = f" ({row.seconds:.1f} s)" if row.status == "done" and row.seconds is not None else ""
        self.progress.console.print(f"[{colour}]{row.status}[/{colour}] {row.name}{secs}", highlight=False)
        if row.error:
            self.progress.console.print(f"  {row.error.splitlines()[0][:300]}", highlight=False, markup=False)
        if row.name in self.steps:
            self.progress.remove_task(self.steps.pop(row.name))
        self.last.pop(row.name, None)
        self.started.pop(row.name, None)
        self.done += 1
        self.progress.advance(self.cells, 1)
        text = self._summary()
        if not self.live:
            self.progress.console.print(f"{text}; {time.perf_counter() - self.t0:.0f} s", highlight=False)

    def _summary(self) -> str:
        running = len(self.steps)
        left = self.n_cells - self.done - running
        text = f"cells: {self.done} finished, {running} running, {left} left"
        self.progress.update(self.cells, description=text)
        return text


def grid_cmd(
    grid_file: Annotated[Path, typer.Argument(help="The grid YAML: models, tasks, optional checkpoints/revisions and RunConfig options.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one sub-folder per cell, grid.json and compare.html (re-running resumes).")] = Path("grid-out"),
    ray: Annotated[str | None, typer.Option("--ray", help="Run the cells on Ray: 'local' (start a Ray instance on this machine), 'auto' (the running cluster) or a cluster address.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads per job (default: sequential, torch's own; with Ray, the CPUs shared out among the cells).")] = None,
    compare: Annotated[bool, typer.Option("--compare/--no-compare", help="Write compare.html at the end.")] = True,
    device_map: Annotated[str | None, typer.Option("--device-map", hidden=True)] = None,
) -> None:
    """Run every model × task (× checkpoint) cell of a grid file as an independent job and compare them."""
    from logitlab.grid import load_grid, run_grid
    from logitlab.grid.run import COMPARE_HTML, GRID_JSON
    if device_map is not None:
        raise LogitlabError("--device-map is not supported: logitlab's runner keeps a model on one device",
                            "give each model one device (cpu, cuda or cuda:N) in the grid file; see docs/scaling.md")
    grid = load_grid(grid_file)
    devices = ", ".join(sorted({c.config.device for c in grid.cells}))
    console.print(f"grid {grid.name!r}: {len(grid.cells)} cells"
                  + (f", on Ray ({ray})" if ray else ", sequential") + f"; device: {devices}", highlight=False)
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        board = _Board(progress, len(grid.cells))
        rows = run_grid(grid, out, ray=ray, threads=threads, on_cell=board.finished, compare=compare,
                        on_progress=board.running)
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed")}
    console.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed in "
                  f"{time.perf_counter() - t0:.0f} s; [green]grid:[/green] {out / GRID_JSON}", highlight=False)
    if compare and (out / COMPARE_HTML).is_file():
        console.print(f"[green]compare:[/green] {out / COMPARE_HTML}", highlight=False)
    failed = [r.name for r in rows if r.status == "failed"]
    if failed:
        raise LogitlabError(f"{len(failed)} of {len(rows)} cells failed: {', '.join(failed[:5])}"
                            + (" …" if len(failed) > 5 else ""),
                            f"see {out / GRID_JSON} and each cell's log.txt; re-running retries only the failed and "
                            "missing cells")


def compare_cmd(
    dirs: Annotated[list[Path], typer.Argument(help="Run folders, formation folders or grid folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("compare.html"),
    title: Annotated[str | None, typer.Option("--title", help="The page's title.")] = None,
) -> None:
    """Write compare.html: the runs side by side per task, formation curves, and findings across models."""
    from logitlab.report.compare import write_compare
    path = write_compare(dirs, out, title=title)
    console.print(f"[green]compare:[/green] {path}", highlight=False)
