"""Command-line entry points ``logitlab grid`` and ``logitlab compare`` (plain functions; the main CLI registers
them as typer commands). They only wire options to the library and show one progress bar for the grid.

Example:
    logitlab grid grid.yaml --out grid-out                # sequential, in this process
    logitlab grid grid.yaml --out grid-out --ray local    # one Ray task per cell on this machine
    logitlab compare grid-out other-run/ --out compare.html
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from logitlab.errors import LogitlabError

__all__ = ["grid_cmd", "compare_cmd"]

console = Console(stderr=True)


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
    console.print(f"grid {grid.name!r}: {len(grid.cells)} cells"
                  + (f", on Ray ({ray})" if ray else ", sequential"), highlight=False)
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        tid = progress.add_task("cells", total=len(grid.cells))

        def on_cell(row) -> None:  # noqa: ANN001 - a CellStatus
            colour = {"done": "green", "skipped": "cyan", "failed": "red"}.get(row.status, "white")
            secs = f" ({row.seconds:.1f} s)" if row.status == "done" and row.seconds is not None else ""
            progress.console.print(f"[{colour}]{row.status}[/{colour}] {row.name}{secs}", highlight=False)
            if row.error:
                progress.console.print(f"  {row.error.splitlines()[0][:300]}", highlight=False, markup=False)
            progress.advance(tid, 1)

        rows = run_grid(grid, out, ray=ray, threads=threads, on_cell=on_cell, compare=compare)
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
