"""Fixtures of the report tests: synthetic results (see ``synthetic.py``) and pages in headless Chromium."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # helpers (synthetic.py, cdp.py) importable in any import mode
    sys.path.insert(0, str(HERE))

from cdp import ARTIFACTS, CHROMIUM, Chromium, Page, open_file, require_chromium  # noqa: E402
from synthetic import make_results  # noqa: E402

from logitlab.results import Results  # noqa: E402


@pytest.fixture
def results() -> Results:
    """A fresh synthetic results dict (default sizes, seed 0)."""
    return make_results()


@pytest.fixture
def chromium_page(tmp_path: Path) -> Iterator[Callable[[Path, int, int, str], Page]]:
    """``chromium_page(html, width, height, log)``: ``html`` opened in a new headless Chromium (its output in
    ``ARTIFACTS / log``), in a tab of ``width`` × ``height``, once every plotly figure on it is drawn
    (:func:`cdp.open_file`). The browsers close when the test ends. Skipped when Chromium is absent, unless
    ``CI=true``."""
    require_chromium()
    opened: list[Chromium] = []

    def open_page(html: Path, width: int, height: int, log: str) -> Page:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        opened.append(Chromium(CHROMIUM, tmp_path / f"profile-{len(opened)}", ARTIFACTS / log,
                               (f"--window-size={width},{height}",)))
        return open_file(opened[-1], html, width, height)

    yield open_page
    for browser in opened:
        browser.close()
