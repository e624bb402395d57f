"""Assemble the self-contained HTML report of one run from the registered sections.

The sections come from :func:`logitlab.report.registry.sections`, in their order; the page shell (CSP, CSS,
plotly.js inlined once) from :mod:`logitlab.report.page`; the attention viewer's script is included once.
Every string taken from the results is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from logitlab.results import Results, load_results

from .attention import ATTENTION_JS
from .figures import build_figures
from .findings import key_findings
from .markup import esc, note
from .page import page
from .registry import Finding, ReportError, Section
from .registry import sections as registered

__all__ = ["Report", "build_report", "not_run", "render_report"]


def _title(results: Results) -> tuple[str, str]:
    """Plain-text title and subtitle of the report."""
    task, model = results["task"]["name"], results["model"]["name"]
    return f"logitlab report: {task} on {model}", f"{task} · {model}"


def not_run(sec: Section) -> str:
    """The body of a section whose analysis did not run."""
    return note(f"Not run: the {esc(sec.analysis)} analysis is not among this run's analyses "
                "(<code>--analyses</code>).")


def _body(sec: Section, results: Results, figures: Mapping[str, go.Figure], findings: Sequence[Finding]) -> str | None:
    """The HTML of one section; None to leave it out."""
    if not sec.ran(results):
        return None if sec.omit_when_not_run else not_run(sec)
    try:
        return sec.render(results, figures, findings)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        keys = ", ".join(sec.keys) or "(none)"
        raise ReportError(f"section {sec.name!r} (results keys: {keys}) could not be rendered: "
                          f"{type(exc).__name__}: {exc}",
                          "validate the results (`logitlab schema` prints the schema)") from exc


def render_report(results: Results, figures: Mapping[str, go.Figure], findings: Sequence[Finding]) -> str:
    """Render the whole report as one self-contained HTML document.

    Args:
        results: A ``results.json`` dict (validated by the caller: :func:`build_report` does it).
        figures: Figures from :func:`build_figures` (missing ids are skipped).
        findings: Findings from :func:`key_findings`.

    Returns:
        The HTML text.

    Raises:
        ReportError: A section cannot read its part of the results; the message names the section and its keys.
    """
    parts: list[str] = []
    toc: list[tuple[str, str]] = []
    for sec in registered():
        body = _body(sec, results, figures, findings)
        if body is None:
            continue
        parts.append(f'<section id="{esc(sec.name)}"><h2>{esc(sec.title)}</h2>{body}</section>')
        toc.append((sec.name, sec.title))
    title, sub = _title(results)
    footer = (f"Written by logitlab {results['logitlab_version']} from results.json schema version "
              f"{results['schema_version']}. Self-contained: no network access needed.")
    return page(title, "logitlab report", sub, "\n".join(parts), toc=toc, footer=footer, scripts=(ATTENTION_JS,))


@dataclass(frozen=True)
class Report:
    """A rendered report: its HTML, figures and findings; displays itself in notebooks."""

    html: str
    figures: Mapping[str, go.Figure] = field(default_factory=dict)
    findings: Sequence[Finding] = ()

    def _repr_html_(self) -> str:
        """Notebook display: the report in an isolated ``<iframe srcdoc>``."""
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
            'style="width:100%;height:820px;border:1px solid #ddd" '
            'sandbox="allow-scripts" title="logitlab report"></iframe>'
        )


def build_report(results: Results | str | Path) -> Report:
    """Load ``results`` (a results dict or a ``results.json`` path) with :func:`logitlab.results.load_results`
    (an older schema version migrated once, or refused; then validated against the schema of the registered
    analyses), then build its figures, findings and HTML in one go.

    Raises:
        LogitlabError: The results are of a schema version that cannot be migrated, or do not match the schema
            (the message names the first offending key).
        ReportError: A section cannot read its part of the results.
    """
    loaded: Results = load_results(results)
    figures = build_figures(loaded)
    findings = key_findings(loaded)
    return Report(render_report(loaded, figures, findings), figures, tuple(findings))
