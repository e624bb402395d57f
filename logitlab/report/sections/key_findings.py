"""The report's first section: the key findings, each sentence linking to its figure."""

from __future__ import annotations

from collections.abc import Sequence

from logitlab.results import Results

from ..markup import Figures, esc, note
from ..registry import Finding, Section, register


def section_findings(results: Results, figures: Figures, findings: Sequence[Finding]) -> str:
    """Key findings: each sentence links to its figure."""
    if not findings:
        return note("No findings could be derived from this results file.")
    items = "".join(
        f'<li><a href="#fig-{esc(f.figure_id)}">{esc(f.text)}</a></li>' for f in findings
    )
    return (
        f'<ol class="findings">{items}</ol>'
        + note("Generated from the numbers below; each sentence links to its figure.")
    )


SECTION = register(Section(name="findings", title="Key findings", order=0, render=section_findings))
