"""Key findings: short sentences generated from the numbers in ``results.json``.

Every registered section (:mod:`logitlab.report.sections`) lists its finding rules with their place among all
findings; :func:`key_findings` runs them in that order. Each :class:`Finding` links to the figure it is read
from, and a rule returns a sentence only when the numbers support it; it never claims more than they do:

* a preference for an answer only when the mean's 95% CI excludes 0;
* "mostly" / "carried by" only when the named components hold more than half of the
  summed |attribution|, with that share stated;
* "the largest" / "most" only when the paired 95% CI of the difference to the
  runner-up excludes 0 (computed by the analyses: ``head_attribution_detail.top``,
  ``head_ablation.<kind>.top_drop``; the report never recomputes);
* the "accuracy" is what it measures: the share of prompts on which the correct
  answer's logit beats the (mean) incorrect one's;
* patching as a fraction of the clean − corrupted gap with its 95% CI; "the information
  moves from X to Y between layer a and layer b" only when both ends restore more than
  half of the gap with the CI's lower bound above it, over layer ranges that do not overlap;
* attribution patching, path patching and the circuit: see their section modules.
"""

from __future__ import annotations

from logitlab.results import Results

from .sections import MODULES as SECTION_MODULES  # importing the package registers every section
from .registry import Finding, ReportError, figure_specs, lookup
from .registry import sections as registered
from .sections.dla_check import DLA_TOLERANCE, DLA_TOLERANCE_BF16, dla_tolerance
from .sections.patching import PATCH_THRESHOLD

__all__ = ["DLA_TOLERANCE", "DLA_TOLERANCE_BF16", "PATCH_THRESHOLD", "Finding", "dla_tolerance", "key_findings",
           "SECTION_MODULES"]


def key_findings(results: Results) -> list[Finding]:
    """Every registered rule's finding, in the rules' order (fewer when analyses are missing).

    A finding is kept only when the input of the figure it links to is present.

    Raises:
        ReportError: A rule cannot read its section; the message names the rule.
    """
    available = {f.id for f in figure_specs() if lookup(results, f.needs) is not None}
    rules = sorted(((r, s.name) for s in registered() for r in s.rules), key=lambda rs: rs[0].order)
    out: list[Finding] = []
    for rule, name in rules:
        try:
            f = rule.fn(results)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ReportError(f"finding {rule.fn.__name__} of section {name!r}: malformed results "
                              f"({type(exc).__name__}: {exc})",
                              "validate the results (`logitlab schema` prints the schema)") from exc
        if f is not None and f.figure_id in available:
            out.append(f)
    return out
