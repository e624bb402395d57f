"""The report's section registry: every part of ``report.html`` and ``compare.html`` registers itself here.

A :class:`Section` names its anchor and heading, the analysis it belongs to (the same string as in
``results["config"]["analyses"]`` and in logitlab's analysis registry; None for the always-run parts), the
``results.json`` keys it reads, its place in the report (``order``), its render function, its figures, its
finding rules and, optionally, its part of ``compare.html``. The run report, its findings and figures and the
compare page iterate :func:`sections`; nothing else lists them.

Each module of :mod:`logitlab.report.sections` calls :func:`register` when it is imported; a test (or a
plugin) registers its own section the same way and removes it with :func:`unregister`.

This module imports nothing from the rest of the report at runtime: every other report module may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
        order: Its place in the report (lower first).
        render: ``(results, figures, findings) -> HTML``; None leaves the section out.
        analysis: The analysis it belongs to (a name of ``results["config"]["analyses"]``), or None for the
            always-run parts. A section whose analysis did not run (and whose keys are absent) says so.
        keys: The ``results.json`` keys it reads.
        figures: Its figures, in order.
        rules: Its finding rules on the run report.
        compare: Its part of compare.html, or None.
        omit_when_not_run: Leave the section out (instead of saying "not run") when its analysis did not run.
    """

    name: str
    title: str
    order: int
    render: Render
    analysis: str | None = None
    keys: tuple[str, ...] = ()
    figures: tuple[FigureSpec, ...] = ()
    rules: tuple[Rule, ...] = ()
    compare: ComparePart | None = None
    omit_when_not_run: bool = False

    def present(self, results: Mapping[str, Any]) -> bool:
        """Whether any of its keys is in ``results`` (not null)."""
        return any(results.get(k) is not None for k in self.keys)

    def ran(self, results: Mapping[str, Any]) -> bool:
        """Whether its analysis ran: always-run, listed in ``config.analyses``, or its keys are present."""
        if self.analysis is None or self.present(results):
            return True
        config = results.get("config")
        return isinstance(config, Mapping) and self.analysis in (config.get("analyses") or ())


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
    """Every registered section, in report order (by ``order``, then name)."""
    return sorted(_SECTIONS.values(), key=lambda s: (s.order, s.name))


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
