"""The self-contained HTML report of a logitlab run (figures, key findings, static images).

The report is a list of registered sections (:mod:`logitlab.report.registry`), one module each in
:mod:`logitlab.report.sections`; compare.html (:mod:`logitlab.report.compare`) iterates the same registry.
"""

from __future__ import annotations

from .figures import build_figures
from .findings import key_findings
from .html import Report, build_report, render_report
from .registry import Finding, ReportError, Section, register, unregister
from .write import StaticExporter, write_report

__all__ = [
    "Finding",
    "Report",
    "ReportError",
    "Section",
    "StaticExporter",
    "build_figures",
    "build_report",
    "key_findings",
    "register",
    "render_report",
    "unregister",
    "write_report",
]
