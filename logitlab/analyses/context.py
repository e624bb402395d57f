"""What a registered analysis computes from: the run so far (:class:`RunContext`).

The battery builds one context per run (model, task, clean run, config, progress) and hands it to each
registered analysis's ``compute`` in turn (:mod:`logitlab.registry`); an analysis keeps a value for the later
ones that need it (``ctx.keep``), e.g. head ablation's scores for path patching's senders.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from logitlab.analyses._common import CleanRun
from logitlab.analyses.patching import PatchingSettings, patching_items
from logitlab.model.load import Model
from logitlab.registry import settings_of
from logitlab.sweep import SweepSettings, SweepStats
from logitlab.task import Task, TokenizedTask

__all__ = ["RunContext", "Step", "no_progress"]

S = TypeVar("S")
Step = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


def no_progress(_: str, __: int) -> Callable[[int], None]:
    """A progress callback that shows nothing."""
    return lambda _n: None


@dataclass
class RunContext:
    """One battery run as the analyses see it."""

    model: Model
    task: Task
    tt: TokenizedTask
    run: CleanRun
    config: Any  # logitlab.config.RunConfig (built from the registry, so typed loosely here)
    progress: Step = no_progress
    stats: SweepStats | None = None
    _kept: dict[str, Any] = field(default_factory=dict)

    def settings(self, kind: type[S]) -> S:
        """An analysis's settings (its frozen dataclass) as this run's config holds them."""
        return settings_of(self.config, kind)

    def sweep(self, description: str, total: int) -> SweepSettings:
        """Sweep settings with this run's memory budget and a progress bar of ``total`` items."""
        return SweepSettings(max_memory=self.config.max_memory, progress=self.progress(description, total),
                             stats=self.stats)

    def keep(self, name: str, value: Any) -> None:
        """Keep ``value`` as what analysis ``name`` leaves to later ones."""
        self._kept[name] = value

    def value(self, name: str) -> Any:
        """What analysis ``name`` kept, or None when it did not run (or kept nothing)."""
        return self._kept.get(name)

    @functools.cached_property
    def pair_items(self) -> int:
        """Sweep items of activation patching's pairs (0: the task yields no clean/corrupted pair)."""
        return patching_items(self.model, self.tt, max_pairs=self.settings(PatchingSettings).patching_pairs)
