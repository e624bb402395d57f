"""Fixtures of the report tests: synthetic results (see ``synthetic.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # helpers (synthetic.py, cdp.py) importable in any import mode
    sys.path.insert(0, str(HERE))

from synthetic import make_results  # noqa: E402

from logitlab.results import Results  # noqa: E402


@pytest.fixture
def results() -> Results:
    """A fresh synthetic results dict (default sizes, seed 0)."""
    return make_results()
