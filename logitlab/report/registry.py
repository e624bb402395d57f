"""The report's section registry: every part of ``report.html`` and ``compare.html`` registers itself here.

A :class:`Section` names its anchor and heading, the analysis it belongs to (a name of logitlab's analysis
registry, :mod:`logitlab.registry`; None for the report's own parts: key findings, setup), the ``results.json``
keys it reads, its render function, its figures, its finding rules and, optionally, its part of
``compare.html``. Its place in the report follows its analysis's place in the analysis registry (the report's
own parts first); ``order`` only orders the sections of one analysis. The run report, its findings and figures
and the compare page iterate :func:`sections`; nothing else lists them.

Each module of :mod:`logitlab.report.sections` calls :func:`register` when it is imported; a test (or a
plugin) registers its own section the same way and removes it with :func:`unregister`.

This module imports nothing from the rest of the report at runtime: every other report module may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import logitlab.registry as analysis_registry
from logitlab.errors import LogitlabError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from logitlab.results import Results

__all__ = [
    "CompareFigures", "ComparePart", "CompareRender", "FigureSpec", "Finding", "ReportError", "Rule", "Run",
    "Section",
    "figure_specs", "lookup", "register", "section", "sections", "unregister",
]


class ReportError(LogitlabError):
    """A results section the report cannot read: the message names the key (or figure) and the problem."""


@dataclass(frozen=True)
class Finding:
    """One key-finding sentence and the id of the figure it comes from."""

    text: str
    figure_id: str


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its id, the dotted results key that must be present (not null), and its builder."""

    id: str
    needs: str
    build: Callable[[Results], go.Figure]


@dataclass(frozen=True)
class Rule:
    """A finding rule and its place among all findings (lower first).

    On the run report ``fn(results)``; on compare.html ``fn(i, task, runs)`` for task group ``i``. It returns a
    :class:`Finding` or None when the numbers support no sentence.
    """

    order: int
    fn: Callable[..., Finding | None]


@dataclass(frozen=True)
class Run:
    """One run of compare.html (:func:`logitlab.report.compare.load_runs`)."""

    label: str
    folder: str
    results: dict[str, Any]
    kind: str
    """battery or formation"""
    model: str
    task: str
    step: int | None = None
    """the training step of a grid cell on a checkpoint"""


CompareFigures = Callable[[int, "Sequence[Run]"], "Mapping[str, go.Figure]"]
CompareRender = Callable[[int, "Sequence[Run]", "Mapping[str, go.Figure]"], str]


@dataclass(frozen=True)
class ComparePart:
    """A section's part of compare.html, per task group ``i``: figures (ids ``t{i}_…``), HTML and findings."""

    render: CompareRender
    figures: CompareFigures | None = None
    rules: tuple[Rule, ...] = ()


Render = Callable[["Results", "Mapping[str, go.Figure]", "Sequence[Finding]"], "str | None"]


@dataclass(frozen=True)
class Section:
    """One section of the run report.

    Attributes:
        name: The anchor (``id``) of the section, unique.
        title: Its heading.
        order: Its place among the sections of its analysis (or among the report's own parts), lower first.
        render: ``(results, figures, findings) -> HTML``; None leaves the section out.
        analysis: The registered analysis it belongs to (:func:`logitlab.registry.get`), or None for the
            report's own parts. A section whose analysis did not run (neither always-run nor in
            ``config.analyses``) says so.
        keys: The ``results.json`` keys it reads.
        figures: Its figures, in order.
        rules: Its finding rules on the run report.
        compare: Its part of compare.html, or None.
        omit_when_not_run: Leave the section out (instead of saying "not run") when its analysis did not run.
    """

    name: str
    title: str
    render: Render
    analysis: str | None = None
    order: int = 0
    keys: tuple[str, ...] = ()
    figures: tuple[FigureSpec, ...] = ()
    rules: tuple[Rule, ...] = ()
    compare: ComparePart | None = None
    omit_when_not_run: bool = False

    def ran(self, results: Mapping[str, Any]) -> bool:
        """Whether its analysis ran: a report part of its own, an always-run analysis, or one listed in the
        run's ``config.analyses``.

        Raises:
            ReportError: Its analysis is not registered.
        """
        if self.analysis is None or _analysis(self).always:
            return True
        config = results.get("config")
        return isinstance(config, Mapping) and self.analysis in (config.get("analyses") or ())


def _analysis(sec: Section) -> analysis_registry.Analysis:
    try:
        return analysis_registry.get(sec.analysis or "")
    except KeyError:
        raise ReportError(f"report section {sec.name!r} belongs to the analysis {sec.analysis!r}, which is not "
                          "registered", "register the analysis (logitlab.registry.register) before drawing the "
                          "report") from None


_SECTIONS: dict[str, Section] = {}


def register(sec: Section) -> Section:
    """Add ``sec`` to the report; its name and its figure ids must be new.

    Raises:
        ValueError: A section of that name, or a figure of one of its ids, is registered already.
    """
    if sec.name in _SECTIONS:
        raise ValueError(f"report section {sec.name!r} is registered already")
    taken = {f.id for s in _SECTIONS.values() for f in s.figures}
    if clash := taken & {f.id for f in sec.figures}:
        raise ValueError(f"figure id(s) {sorted(clash)} of section {sec.name!r} are registered already")
    _SECTIONS[sec.name] = sec
    return sec


def unregister(name: str) -> None:
    """Remove the section ``name`` (no error when it is not registered)."""
    _SECTIONS.pop(name, None)


def section(name: str) -> Section:
    """The registered section ``name``."""
    return _SECTIONS[name]


def sections() -> list[Section]:
    """Every registered section, in report order: the report's own parts, then each analysis's sections in the
    analysis registry's order (:func:`logitlab.registry.analyses`), by ``order`` (then name) within each.

    Raises:
        ReportError: A section belongs to an analysis that is not registered.
    """
    place = {a.name: i for i, a in enumerate(analysis_registry.analyses())}

    def key(sec: Section) -> tuple[int, int, str]:
        if sec.analysis is None:
            return (-1, sec.order, sec.name)
        if sec.analysis not in place:
            _analysis(sec)  # raises, naming the section
        return (place[sec.analysis], sec.order, sec.name)

    return sorted(_SECTIONS.values(), key=key)


def figure_specs() -> list[FigureSpec]:
    """Every registered figure, in report order."""
    return [f for s in sections() for f in s.figures]


def lookup(results: Mapping[str, Any], dotted: str) -> Any:
    """``results["a"]["b"]`` for ``"a.b"``; None when any part is absent or null."""
    cur: Any = results
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or cur.get(part) is None:
            return None
        cur = cur[part]
    return cur
