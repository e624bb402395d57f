"""The self-contained HTML report of a logitlab run (figures, key findings, static images)."""

from __future__ import annotations

from .figures import build_figures
from .findings import Finding, key_findings
from .html import Report, build_report, render_report
from .write import StaticExporter, write_report

__all__ = [
    "Finding",
    "Report",
    "StaticExporter",
    "build_figures",
    "build_report",
    "key_findings",
    "render_report",
    "write_report",
]
