"""The report's entry check: the results it reads match the results schema (:mod:`logitlab.results`).

A key that the schema does not know but a registered section reads (a section registered by a plugin or a test,
whose analysis the schema does not declare) is left to that section; every other key is checked, so a renamed
or malformed section is an error naming it before any part of the report is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from logitlab.results import Results, validate_results

from .registry import sections

__all__ = ["validate"]


def validate(results: Mapping[str, Any]) -> None:
    """Check ``results`` against the schema (see the module docstring for section keys the schema lacks).

    Raises:
        LogitlabError: naming the first offending key.
    """
    known = set(Results.__annotations__)
    own = {k for s in sections() for k in s.keys if k not in known}
    validate_results({k: v for k, v in results.items() if k not in own})
