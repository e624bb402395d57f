from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import torch

from tests.tiny import KINDS, TASK_YAML, make_model_folder

torch.set_grad_enabled(False)

# --- skips ------------------------------------------------------------------------------------------------------
# A skip hides a check, so each one must be expected by design: every skip whose reason is not listed here fails
# the test (a browser test that cannot find Chromium, a fixture that skips after a change, ...). A listed skip that
# does not happen is fine: a subset of the tests, or a machine with a GPU, runs more.
#: (node id prefix, reason pattern, why it is expected)
EXPECTED_SKIPS: tuple[tuple[str, str, str], ...] = (
    ("tests/unit/test_cuda.py", r"needs a CUDA device",
     "the CUDA tests run the invariants on a GPU and skip on a machine without one"),
    ("tests/unit/test_grid.py", r"ray is not installed \(pip install 'logitlab\[ray\]'\)",
     "Ray is an optional extra: the Ray grid tests skip where it is not installed"),
    ("tests/", r"LOGITLAB_SKIP_SLOW=1",
     "the user asked to skip the built-in real model's tests (LOGITLAB_SKIP_SLOW=1)"),
    ("tests/unit/test_features_export.py", r"circuit-tracer's environment \(.*\) is absent",
     "the export's comparison with circuit-tracer's own code needs its separate environment (built by "
     "benchmarks/compare_circuit_tracer.py); the schema test of the export runs everywhere"),
)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def expected_skip(nodeid: str, reason: str) -> str | None:
    """Why the skip of ``nodeid`` with ``reason`` is expected, or None when it is not."""
    for prefix, pattern, why in EXPECTED_SKIPS:
        if nodeid.startswith(prefix) and re.search(pattern, reason):
            return why
    return None


_expected_seen: dict[str, int] = {}
_unexpected_modules: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:  # noqa: ARG001
    """Turn a skip that is not in EXPECTED_SKIPS into a failure that names its reason."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        why = expected_skip(report.nodeid, reason)
        if why is not None:
            _expected_seen[why] = _expected_seen.get(why, 0) + 1
        else:
            report.outcome = "failed"
            report.longrepr = (f"unexpected skip: {reason}\n(a skip hides a check: fix its cause, or, when it is "
                               "expected by design, add it with why to EXPECTED_SKIPS in tests/conftest.py)")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A whole module skipped at collection (``pytest.skip(..., allow_module_level=True)``): the run fails at
    its end (turning it into a collection error would stop the run before any test)."""
    if report.skipped:
        reason = _skip_reason(report)
        why = expected_skip(report.nodeid, reason)
        if why is not None:
            _expected_seen[why] = _expected_seen.get(why, 0) + 1
        else:
            _unexpected_modules.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected_modules and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for why, n in _expected_seen.items():
        terminalreporter.write_line(f"expected skip ({n}): {why}")
    for line in _unexpected_modules:
        terminalreporter.write_line(f"unexpected skip of a whole module (the run fails): {line}", red=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_task_file(tiny_dir: Path) -> Path:
    path = tiny_dir / "task.yaml"
    path.write_text(TASK_YAML, encoding="utf-8")
    return path


_models: dict[str, object] = {}


@pytest.fixture(scope="session", params=KINDS)
def tiny_model(request: pytest.FixtureRequest, tiny_dir: Path):  # noqa: ANN201
    """Each architecture kind, loaded through logitlab's own loader (read-only: do not mutate)."""
    from logitlab.model.load import load_model
    kind = request.param
    if kind not in _models:
        folder = make_model_folder(kind, tiny_dir / kind)
        _models[kind] = load_model(str(folder), cache=False)
    return _models[kind]


@pytest.fixture(scope="session")
def builtin_model():  # noqa: ANN201
    """The built-in Gemma-3-270M (slow: dequantised once into the user cache)."""
    if os.environ.get("LOGITLAB_SKIP_SLOW") == "1":
        pytest.skip("LOGITLAB_SKIP_SLOW=1")
    from logitlab.model.load import load_model
    return load_model("builtin")
