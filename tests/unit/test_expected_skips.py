"""A skip that tests/conftest.py does not list as expected fails the run; a listed one stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXPECTED_SKIPS, expected_skip

REPO = Path(__file__).resolve().parents[2]


def test_expected_skip_matches_its_file_and_reason() -> None:
    assert expected_skip("tests/unit/test_cuda.py::test_forward_and_dla_on_cuda[gpt2]", "needs a CUDA device")
    assert expected_skip("tests/integration/test_builtin.py::test_x", "LOGITLAB_SKIP_SLOW=1")
    assert expected_skip("tests/unit/test_grid.py::test_ray_grid",
                         "ray is not installed (pip install 'logitlab[ray]'): Ray grids untested")
    assert expected_skip("tests/unit/test_invariants.py::test_x", "needs a CUDA device") is None, "wrong file"
    assert expected_skip("tests/report/test_browser.py::test_report_in_browser",
                         "Chromium not found at /usr/bin/chromium: install it") is None
    assert all(why for _, _, why in EXPECTED_SKIPS), "each expected skip says why"


_FILES = {
    "tests/unit/test_cuda.py": """
import pytest

@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_marked():
    pass

def test_inside():
    pytest.skip("needs a CUDA device")
""",
    "tests/report/test_browser.py": """
import pytest

def test_browser():
    pytest.skip("Chromium not found at /usr/bin/chromium")

@pytest.mark.skipif(True, reason="no Chrome/Chromium")
def test_marked_browser():
    pass

def test_runs():
    assert True
""",
    "tests/report/test_module.py": """
import pytest

pytest.skip("no browser for this module", allow_module_level=True)

def test_never():
    pass
""",
}


def _pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                           "-p", "tests.conftest", "--rootdir", str(root), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_unexpected_skip_fails_the_run_and_a_subset_passes(tmp_path: Path) -> None:
    for rel, text in _FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # (no project settings from above)
    run = _pytest(tmp_path, "tests")
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    # The two expected skips stay skips; the two browser skips fail, naming their reasons.
    assert "3 skipped" in out and "1 passed" in out, out
    assert "FAILED tests/report/test_browser.py::test_browser" in out, out
    assert "tests/report/test_browser.py::test_marked_browser" in out and "unexpected skip: no Chrome/Chromium" in out, out
    assert "unexpected skip: Chromium not found at /usr/bin/chromium" in out, out
    assert "expected skip (2): the CUDA tests" in out, out
    assert "unexpected skip of a whole module (the run fails): tests/report/test_module.py: no browser for this module" \
        in out, out
    # A subset without the unexpected skips passes (an expected skip that does not happen is no failure either).
    run = _pytest(tmp_path, "tests/unit/test_cuda.py::test_inside", "tests/report/test_browser.py::test_runs")
    assert run.returncode == 0 and "1 passed, 1 skipped" in run.stdout, run.stdout + run.stderr
    # A module skipped as a whole, alone: no test fails, the run does.
    run = _pytest(tmp_path, "tests/report/test_module.py")
    assert run.returncode == 1 and "unexpected skip of a whole module" in run.stdout, run.stdout + run.stderr
