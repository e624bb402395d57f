"""The findings of compare.html: every registered section's compare rules per task group, then training.

The rules live with their sections (:mod:`logitlab.report.sections`); the reading of the runs and the claims'
conventions in :mod:`logitlab.report.compare_runs`. A rule that cannot read a run's numbers is an error naming
it, not a silently missing sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

from .sections import MODULES as SECTION_MODULES  # importing the package registers every section
from .compare_runs import LOGIT_DIFF_THRESHOLD, Run, join, series_points, side_by_side, task_groups
from .registry import Finding, ReportError
from .registry import sections as registered

__all__ = ["compare_findings", "formation_finding", "SECTION_MODULES"]


def formation_finding(runs: Sequence[Run]) -> Finding | None:
    """When the mean logit difference first exceeds the threshold with its CI, per training series."""
    series = series_points(runs)
    if not series:
        return None
    parts = []
    for label, pts in series.items():
        first = next((p for p in pts if p.ci[0] > LOGIT_DIFF_THRESHOLD), None)
        parts.append(f"at step {first.step} in {label}" if first else f"never in {label} (last step {pts[-1].step})")
    return Finding(f"During training the mean logit difference first exceeds {LOGIT_DIFF_THRESHOLD:g} with its 95% "
                   f"CI above it {join(parts)}.", "formation")


def compare_findings(runs: Sequence[Run]) -> list[Finding]:
    """Findings across the runs, per task (the registered compare rules, in their order) and for training.

    Raises:
        ReportError: A rule cannot read a run's results; the message names the rule and the task.
    """
    rules = sorted((r for s in registered() if s.compare is not None for r in s.compare.rules),
                   key=lambda r: r.order)
    out: list[Finding] = []
    for i, (task, group) in enumerate(task_groups(runs).items()):
        shown = side_by_side(group)
        for rule in rules:
            try:
                f = rule.fn(i, task, shown)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise ReportError(f"compare finding {rule.fn.__name__} on task {task!r}: malformed results "
                                  f"({type(exc).__name__}: {exc})") from exc
            if f is not None:
                out.append(f)
    f = formation_finding(runs)
    if f is not None:
        out.append(f)
    return out
