"""One grid cell as a self-contained job: estimate memory, load, run the battery, write the run's files.

The job runs the same steps as ``logitlab run`` (``run_battery`` with the cell's config, ``write_results``,
``write_report``) into a private temporary folder on whatever machine runs it, and returns every file it
wrote as bytes: the grid's driver then puts them under the output folder atomically. So workers need no
shared file system with the driver (they do need the model: a hub name, or a path that exists there), and a
job killed half-way leaves nothing behind under the output folder.

The job's log (stages with their times, the memory estimate, warnings, and the traceback of a failure) is
returned as ``log.txt``. A failed job returns ``log.txt`` and ``error.txt`` only.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from logitlab.errors import LogitlabError
from logitlab.grid.progress import LOADING, WRITING, Reporter, Tracker
from logitlab.grid.spec import Cell
from logitlab.model.load import load_model

__all__ = ["Job", "CellOutcome", "run_cell", "LOG_NAME", "ERROR_NAME", "CELL_NAME"]

LOG_NAME = "log.txt"
ERROR_NAME = "error.txt"
CELL_NAME = "cell.json"  # the cell's key (config, task and model identity), its time and host


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one cell."""

    cell: Cell
    threads: int | None = None
    """torch threads for this job (None: leave torch's setting)"""
    key: dict[str, Any] | None = None
    """the cell's key as the grid's driver sees it (None: :meth:`Cell.key` here); stored in cell.json"""
    report: Reporter | None = None
    """where the job reports its current step (:mod:`logitlab.grid.progress`); None: nowhere"""


@dataclass(frozen=True)
class CellOutcome:
    """What a job returns: its files (relative path → bytes), or the error that stopped it."""

    name: str
    ok: bool
    seconds: float
    error: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    host: str = ""


def _load(cell: Cell):  # noqa: ANN202 - a logitlab Model
    """Load the cell's model: hub revisions and checkpoints bypass the processed-weights cache, as in formation."""
    from logitlab.formation.formation import load_checkpoint
    config = cell.config
    if cell.revision is not None or cell.step is not None:
        return load_checkpoint(config.model, device=config.device, dtype=config.dtype)
    return load_model(config.model, device=config.device, dtype=config.dtype)


def _read_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cell(job: Job) -> CellOutcome:
    """Run one cell and return its files; never raises for a failure of the run itself (it is returned)."""
    import torch

    from logitlab._console import quiet_libraries
    from logitlab.battery import run_battery, write_results
    from logitlab.grid.memory import check_memory, estimate_memory
    from logitlab.report import write_report

    cell, config = job.cell, job.cell.config
    t0 = time.perf_counter()
    host = f"{platform.node()} (pid {os.getpid()})"
    tmp = Path(tempfile.mkdtemp(prefix="logitlab-cell-"))
    handler = logging.FileHandler(tmp / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The cell's own messages go to log.txt only; what other loggers let through (warnings at least) too.
    own = logging.getLogger("logitlab.grid.cell")
    own.setLevel(logging.INFO)
    own.propagate = False
    own.addHandler(handler)
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    error: str | None = None
    model = None
    tracker = Tracker(cell.name, job.report)
    try:
        own.info("cell %s on %s: model %s, task %s (%s)", cell.name, host, config.model, cell.task_label, config.task)
        own.info("config %s", json.dumps(asdict(config)))
        if job.threads is not None:
            torch.set_num_threads(job.threads)
        own.info("torch threads: %d", torch.get_num_threads())
        est = estimate_memory(config.model, config.dtype, config.device, config.max_memory,
                              processed_cache=cell.step is None and cell.revision is None)
        own.info("memory estimate: %s", est.describe() if est else "none (nothing readable before downloading)")
        check_memory(est, config.device)
        quiet_libraries()
        # `logitlab run` runs with autograd enabled (torch's default), and the battery's numbers depend on the
        # grad mode at the 1e-6 level (different kernels), so a job pins it: a cell then gives the same numbers
        # in this process, in a Ray worker, and as `logitlab run`, whatever the caller's grad mode.
        torch.set_grad_enabled(True)
        t = time.perf_counter()
        tracker.stage(LOADING)
        model = _load(cell)
        own.info("loaded %s in %.1f s", model.name, time.perf_counter() - t)

        def step(desc: str, total: int) -> Callable[[int], None]:
            own.info("%s (%d items)", desc, total)
            return tracker.stage(desc, total)

        t = time.perf_counter()
        results = run_battery(model, cell.task, config, step)
        own.info("battery done in %.1f s", time.perf_counter() - t)
        tracker.stage(WRITING)
        write_results(results, tmp)
        write_report(tmp, results, static=False)
        seconds = time.perf_counter() - t0
        info = {"key": job.key if job.key is not None else cell.key(), "name": cell.name,
                "model": cell.model_label, "task": cell.task_label, "step": cell.step, "revision": cell.revision,
                "seconds": round(seconds, 3), "host": host, "torch_threads": torch.get_num_threads(),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "memory_estimate": None if est is None else asdict(est)}
        (tmp / CELL_NAME).write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
        own.info("cell done in %.1f s", seconds)
    except Exception as e:  # noqa: BLE001 - every failure of a cell is reported, not raised
        error = str(e) if isinstance(e, LogitlabError) else f"{type(e).__name__}: {e}"
        own.error("cell failed: %s\n%s", error, traceback.format_exc())
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        logging.captureWarnings(False)
        logging.getLogger().removeHandler(handler)
        own.removeHandler(handler)
        handler.close()
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        if error is not None:
            (tmp / ERROR_NAME).write_text(error + "\n", encoding="utf-8")
            files = {n: (tmp / n).read_bytes() for n in (LOG_NAME, ERROR_NAME)}
        else:
            files = _read_files(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CellOutcome(name=cell.name, ok=error is None, seconds=round(time.perf_counter() - t0, 3), error=error,
                       files=files, host=host)
