"""Run a grid's cells as independent jobs, in this process or on Ray, resumably, and record them in grid.json.

* **Cells are independent.** Each cell is one job (:func:`logitlab.grid.job.run_cell`) whose files land in
  ``OUT/<cell>/`` atomically (:func:`logitlab._io.atomic_dir`): a folder either holds a whole run or is absent.
* **Resumable.** A cell whose folder holds a valid ``results.json`` whose config, task and model identity
  match the cell's is *skipped*; an interrupted grid loses only the cells that were running.
* **grid.json** lists every cell's status (``done``, ``skipped``, ``failed``, or ``pending`` while it
  waits), its seconds, its error and its folder; it is rewritten after every cell.
* **Execution:** sequential in this process by default; with ``ray`` (``"local"``: a Ray instance started
  for the grid and shut down after it; ``"auto"`` or an address: an existing cluster; a Ray already
  initialised in this process is used as it is) one Ray task per cell, asking for ``threads`` CPUs, one GPU
  for a cuda cell and its estimated host memory. A task whose worker dies is retried twice by Ray
  (``max_retries=2``); an error of the run itself is deterministic, so it is reported, not retried.
* **Progress:** each running cell reports its current step (loading, each analysis, writing) to
  ``on_progress``: directly in this process, through a small Ray actor polled by the driver on Ray
  (:mod:`logitlab.grid.progress`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from logitlab._io import atomic_dir, write_text_atomic
from logitlab.errors import LogitlabError
from logitlab.grid.job import CELL_NAME, CellOutcome, Job, run_cell
from logitlab.grid.memory import estimate_memory, gib
from logitlab.grid.progress import CellProgress, ProgressBoard, RayReporter, Reporter
from logitlab.grid.spec import Cell, Grid

__all__ = ["CellStatus", "run_grid", "is_finished", "GRID_JSON", "COMPARE_HTML", "MAX_RETRIES"]

log = logging.getLogger(__name__)

GRID_JSON = "grid.json"
COMPARE_HTML = "compare.html"
MAX_RETRIES = 2  # Ray re-runs a task whose worker died at most this often
POLL_SECONDS = 0.5  # how often the driver reads the progress of Ray's running cells
_LOCK = ".grid.lock"


@dataclass
class CellStatus:
    """One row of grid.json."""

    name: str
    model: str
    task: str
    step: int | None
    revision: str | None
    status: str
    """pending, done, skipped or failed"""
    folder: str
    seconds: float | None = None
    """wall time of the cell in this grid run (None: not run in it)"""
    error: str | None = None
    finished_at: str | None = None
    """when the cell's results were written (for a skipped cell: by an earlier run)"""
    host: str | None = None


def is_finished(folder: Path, cell: Cell) -> dict[str, Any] | None:
    """The cell's stored ``cell.json`` if ``folder`` holds its finished run (valid results, same key), else None."""
    from logitlab.results import validate_results
    try:
        info = json.loads((folder / CELL_NAME).read_text(encoding="utf-8"))
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = json.loads(json.dumps({"key": cell.key(), "config": asdict(cell.config)}))  # as stored: lists, not tuples
    if info.get("key") != same["key"] or results.get("config") != same["config"]:
        return None
    try:
        validate_results(results)
    except LogitlabError as e:  # written by another schema version, or damaged: run it again
        log.info("%s: stored results are not valid (%s); running the cell again", folder, e)
        return None
    return info if (folder / "report.html").is_file() else None


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the grid's duration (two grids must not write one folder)."""
    with (out / _LOCK).open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise LogitlabError(f"another grid is running in {out}", "wait for it, or choose another --out") from e
        yield


def _write_grid_json(out: Path, grid: Grid, rows: Sequence[CellStatus], meta: dict[str, Any]) -> None:
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed", "pending")}
    doc = {"kind": "grid", "name": grid.name, "grid_file": grid.source, **meta, "counts": counts,
           "cells": [asdict(r) for r in rows]}
    write_text_atomic(out / GRID_JSON, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def _store(out: Path, outcome: CellOutcome) -> None:
    """Put a job's files into ``out/<cell>/`` atomically (a failed job's folder holds log.txt and error.txt)."""
    def write(tmp: Path) -> None:
        for rel, data in outcome.files.items():
            path = tmp / rel
            if tmp.resolve() not in path.resolve().parents:
                raise LogitlabError(f"cell {outcome.name}: refusing to write {rel!r} outside its folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    atomic_dir(out / outcome.name, write)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise LogitlabError("--ray needs the package ray, which is not installed",
                            "pip install 'logitlab[ray]' (or pip install 'ray>=2.9'), or run without --ray") from e
    return ray


def _sequential(jobs: Sequence[Job], job_fn: Callable[[Job], CellOutcome]) -> Iterator[CellOutcome]:
    for job in jobs:
        yield job_fn(job)


def _local_reporter(on_progress: Callable[[CellProgress], None]) -> Reporter:
    def report(name: str, description: str, done: int, total: int) -> None:
        on_progress(CellProgress(name, description, done, total))
    return report


def _failed(cell: Cell, error: str, seconds: float = 0.0) -> CellOutcome:
    return CellOutcome(name=cell.name, ok=False, seconds=seconds, error=error,
                       files={"error.txt": (error + "\n").encode()})


def _ray_jobs(cells: Sequence[Cell], address: str, threads: int | None, job_fn: Callable[[Job], CellOutcome],
              keys: dict[str, dict[str, Any]],
              on_progress: Callable[[CellProgress], None] | None = None) -> Iterator[CellOutcome]:
    """Run the cells as Ray tasks and yield their outcomes as they finish (their progress to ``on_progress``)."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if address == "local":
                # address="local": always a new instance (without it Ray joins whatever cluster a stale
                # /tmp/ray/ray_current_cluster names, and refuses num_cpus there).
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as e:  # ConnectionError, ValueError, … depending on the address
            raise LogitlabError(f"cannot start or reach Ray at {address!r}: {type(e).__name__}: {e}",
                                "start a cluster with `ray start --head`, or use --ray local") from e
        started = True
    refs: dict[Any, tuple[Cell, float]] = {}
    board = None
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        node_cpus = max((int(r.get("CPU", 0)) for r in nodes), default=0)
        node_mem = max((int(r.get("memory", 0)) for r in nodes), default=0)
        node_gpus = max((int(r.get("GPU", 0)) for r in nodes), default=0)
        total_cpus = sum(int(r.get("CPU", 0)) for r in nodes)
        if node_cpus < 1:
            raise LogitlabError("the Ray cluster has no node with a CPU", "check `ray status`")
        if threads is None:
            threads = max(1, min(node_cpus, total_cpus // max(1, len(cells))))
        if threads > node_cpus:
            raise LogitlabError(f"--threads {threads} is more than the largest Ray node has ({node_cpus} CPUs)",
                                f"use --threads {node_cpus} or fewer")
        log.info("Ray: %d node(s), %d CPUs; %d torch thread(s) per job", len(nodes), total_cpus, threads)
        remote = ray.remote(job_fn)
        report: Reporter | None = None
        if on_progress is not None:
            board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
            report = RayReporter(board)
        read, polling = 0, board is not None  # progress reports read so far; whether to read more
        for cell in cells:
            cuda = cell.config.device.startswith("cuda")
            est = estimate_memory(cell.config.model, cell.config.dtype, cell.config.device, cell.config.max_memory,
                                  processed_cache=cell.step is None and cell.revision is None)
            if cuda and node_gpus < 1:
                yield _failed(cell, f"device {cell.config.device!r}, but the Ray cluster has no GPU")
                continue
            if est is not None and est.host > node_mem:
                yield _failed(cell, f"{cell.config.model} needs an estimated {gib(est.host)} GiB of RAM, but the "
                                    f"largest Ray node offers {gib(node_mem)} GiB ({est.describe()})")
                continue
            opts: dict[str, Any] = {"num_cpus": threads, "num_gpus": 1 if cuda else 0, "max_retries": MAX_RETRIES,
                                    "retry_exceptions": False, "name": f"logitlab-grid:{cell.name}"}
            if est is not None:
                opts["memory"] = est.host
            job = Job(cell, threads, keys[cell.name], report)
            refs[remote.options(**opts).remote(job)] = (cell, time.perf_counter())
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS if polling else None)
            if polling and board is not None and on_progress is not None:
                try:
                    events = ray.get(board.since.remote(read))
                except ray.exceptions.RayError as e:  # progress is for show: without it the grid goes on
                    log.warning("no more progress from the running cells: %s", str(e).strip().splitlines()[:1])
                    polling = False
                    continue
                read += len(events)
                running = {c.name for c, _ in refs.values()}
                for name, desc, done, total in events:
                    if name in running:  # a late report of a finished cell is dropped
                        on_progress(CellProgress(name, desc, done, total))
            if not ready:
                continue
            cell, t0 = refs.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died more than MAX_RETRIES times, or was OOM-killed
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                yield _failed(cell, f"{type(e).__name__} after {MAX_RETRIES} retries: {first}",
                              round(time.perf_counter() - t0, 3))
    finally:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass
        if board is not None:
            try:
                ray.kill(board)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass
        if started:
            ray.shutdown()


def run_grid(grid: Grid, out: Path, ray: str | None = None, threads: int | None = None,
             job: Callable[[Job], CellOutcome] = run_cell, on_cell: Callable[[CellStatus], None] | None = None,
             compare: bool = True, on_progress: Callable[[CellProgress], None] | None = None) -> list[CellStatus]:
    """Run every cell of ``grid`` not yet finished under ``out``; write grid.json and compare.html.

    Args:
        grid: The parsed grid (:func:`logitlab.grid.load_grid`).
        out: The grid's output folder: one sub-folder per cell.
        ray: None (sequential, in this process), ``"local"``, ``"auto"`` or a Ray address.
        threads: torch threads per job (default: sequential, torch's own; Ray, the cluster's CPUs shared
            out among the cells, at most one node's).
        job: The function that runs one cell (a test may wrap :func:`run_cell`).
        on_cell: Called with each cell's status once it is known (skipped at once, the others when done).
        compare: Also write ``out/compare.html`` from every finished cell.
        on_progress: Called with a running cell's current step as the cell reports it (loading the model,
            each analysis with its items done and total, writing its files).

    Returns:
        Every cell's final status, in grid order.
    """
    if threads is not None and threads < 1:
        raise LogitlabError("--threads must be at least 1")
    if ray is not None:
        bad = [c for c in grid.cells if c.config.device.startswith("cuda:")]
        if bad:
            raise LogitlabError(f"cell {bad[0].name} asks for device {bad[0].config.device!r}: with Ray, Ray "
                                "assigns each job its GPU", "give device: cuda")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LogitlabError(f"cannot create output folder {out}: {e.strerror or e}", "choose another --out") from e
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta: dict[str, Any] = {"execution": "sequential" if ray is None else f"ray {ray}", "started_at": started_at}
    t0 = time.perf_counter()
    with _locked(out):
        for tmp in out.glob(".*.tmp"):  # left by a driver killed while storing a cell (we hold the lock)
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        rows: dict[str, CellStatus] = {}
        pending: list[Cell] = []
        for cell in grid.cells:
            row = CellStatus(name=cell.name, model=cell.model_label, task=cell.task_label, step=cell.step,
                             revision=cell.revision, status="pending", folder=cell.name)
            info = is_finished(out / cell.name, cell)
            if info is not None:
                row.status, row.seconds = "skipped", 0.0
                row.finished_at, row.host = info.get("finished_at"), info.get("host")
            else:
                pending.append(cell)
            rows[cell.name] = row
        _write_grid_json(out, grid, list(rows.values()), meta)
        for row in rows.values():
            if row.status == "skipped" and on_cell is not None:
                on_cell(row)
        keys = {c.name: c.key() for c in pending}  # the driver's view of each cell's identity, stored with it
        # Nothing left to run needs no Ray: a finished grid's re-run starts no cluster and joins none.
        if ray is None or not pending:
            report = None if on_progress is None else _local_reporter(on_progress)
            jobs = _sequential([Job(c, threads, keys[c.name], report) for c in pending], job)
        else:
            jobs = _ray_jobs(pending, ray, threads, job, keys, on_progress)
        for outcome in jobs:
            row = rows[outcome.name]
            _store(out, outcome)
            row.status = "done" if outcome.ok else "failed"
            row.seconds, row.error, row.host = outcome.seconds, outcome.error, outcome.host or None
            if outcome.ok:
                row.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            _write_grid_json(out, grid, list(rows.values()), meta)
            if on_cell is not None:
                on_cell(row)
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        finished = [out / r.folder for r in rows.values() if r.status in ("done", "skipped")]
        if compare and finished:
            from logitlab.report.compare import write_compare
            write_compare(finished, out / COMPARE_HTML, title=f"logitlab grid: {grid.name}")
            meta["compare"] = COMPARE_HTML
        _write_grid_json(out, grid, list(rows.values()), meta)
    return list(rows.values())
