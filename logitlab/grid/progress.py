"""Progress of a grid's running cells: each job reports its current step, the driver shows it.

A job (:func:`logitlab.grid.job.run_cell`) reports through the ``report`` callable of its
:class:`~logitlab.grid.job.Job`: ``report(cell name, description, done, total)`` at each step of the cell
(loading the model, each of the battery's analyses as ``run_battery``'s ``progress`` callback names it,
writing the files) and, throttled, as the step advances.

* **In this process** the callable is the driver's own callback.
* **On Ray** it is a :class:`RayReporter`: a handle to one small actor, :class:`ProgressBoard`, that keeps the
  reports in order; the driver reads the new ones each time it polls for finished cells. Workers need no
  shared file system with the driver, and a report that cannot be delivered never fails the cell.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CellProgress", "Reporter", "Tracker", "ProgressBoard", "RayReporter", "LOADING", "WRITING"]

log = logging.getLogger(__name__)

Reporter = Callable[[str, str, int, int], None]
"""``report(cell name, description, done, total)``; total 0: a step with no count"""

LOADING = "loading the model"
WRITING = "writing results and report"
_EVERY = 0.5  # seconds between two reports of one step's advance


@dataclass(frozen=True)
class CellProgress:
    """A running cell's current step."""

    name: str
    """the cell's name (its folder)"""
    description: str
    """the step: loading the model, an analysis of the battery, writing the files"""
    done: int
    total: int
    """items of the step (0: not counted)"""


class Tracker:
    """The job side: turns a cell's steps and advances into reports (an advance at most every half second)."""

    def __init__(self, name: str, report: Reporter | None) -> None:
        self.name, self._report = name, report
        self.description, self.done, self.total, self._sent = "", 0, 0, 0.0

    def stage(self, description: str, total: int = 0) -> Callable[[int], None]:
        """Start a step of ``total`` items; returns its ``advance(n)``."""
        self.description, self.done, self.total = description, 0, max(0, int(total))
        self._send()
        return self.advance

    def advance(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self._sent >= _EVERY or (self.total and self.done >= self.total):
            self._send()

    def _send(self) -> None:
        self._sent = time.monotonic()
        if self._report is None:
            return
        try:
            self._report(self.name, self.description, self.done, self.total)
        except Exception as e:  # noqa: BLE001 - progress is for show: it never fails the cell
            log.debug("progress report of %s failed: %s", self.name, e)


class ProgressBoard:
    """The Ray actor between workers and driver: every report in order, read by the driver from where it left."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, int]] = []

    def report(self, name: str, description: str, done: int, total: int) -> None:
        self.events.append((name, description, done, total))

    def since(self, start: int) -> list[tuple[str, str, int, int]]:
        """The reports from the ``start``-th on."""
        return self.events[start:]


@dataclass(frozen=True)
class RayReporter:
    """A job's :data:`Reporter` on Ray: sends each report to the grid's :class:`ProgressBoard` actor."""

    board: Any
    """the actor's handle"""

    def __call__(self, name: str, description: str, done: int, total: int) -> None:
        self.board.report.remote(name, description, done, total)  # not awaited: the worker does not wait
