"""Plotly figures of a ``results.json`` dict: every registered section's figures, keyed by stable id.

Each figure is a pure function results → figure, defined with its section (:mod:`logitlab.report.sections`) and
listed in the section's registration (:mod:`logitlab.report.registry`). Diverging heatmaps are centred at 0
(``zmid=0``, ``RdBu``); strings from the results are escaped for plotly's pseudo-HTML labels. Averages over prompts
show the standard error and, where the results hold one, the 95% bootstrap CI.
"""

from __future__ import annotations

import plotly.graph_objects as go

from logitlab.results import Results

from .sections import MODULES as SECTION_MODULES  # importing the package registers every section
from .registry import ReportError, figure_specs, lookup

__all__ = ["build_figures", "SECTION_MODULES"]


def build_figures(results: Results) -> dict[str, go.Figure]:
    """Build every registered figure whose input is present in ``results``.

    Args:
        results: A ``results.json`` dict.

    Returns:
        Figures keyed by stable id, in report order; a figure whose input is absent or null is left out, and
        so is one whose builder has nothing to draw (it returns None).

    Raises:
        ReportError: A figure's input is malformed; the message names the figure and the key.
    """
    out: dict[str, go.Figure] = {}
    for spec in figure_specs():
        if lookup(results, spec.needs) is None:
            continue
        try:
            fig = spec.build(results)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ReportError(f"figure {spec.id!r}: malformed {spec.needs!r} in the results "
                              f"({type(exc).__name__}: {exc})",
                              "validate the results (`logitlab schema` prints the schema)") from exc
        if fig is not None:
            out[spec.id] = fig
    return out
