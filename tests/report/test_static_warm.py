"""StaticExporter: a browser started ahead of time writes the same static figures as
export_static, fails into write_report's warning without hanging, and leaves no
Chromium process behind once closed."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import logitlab.report.write as write_mod
from logitlab.report import StaticExporter, build_figures, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Generous bound for anything that must not hang (a failed startup takes well under 1 s).
NO_HANG_S = 60.0


def _require_browser() -> str:
    """The browser the exporter would use; skip (fail on CI) when there is none."""
    browser = write_mod.find_browser()
    if browser and os.access(browser, os.X_OK):
        return browser
    msg = "No Chrome/Chromium found; install it with `apt-get install -y chromium`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def _live_in_group(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run (zombies awaiting reaping excluded)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # fields after the parenthesised command: state, ppid, pgrp, …
        state, _ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            live.append(int(stat.parent.name))
    return live


def _assert_browser_gone(pid: int | None) -> None:
    """No process of the browser's group and no child of this process is left running."""
    deadline = time.monotonic() + 5
    while pid is not None and _live_in_group(pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # children of the browser may take a moment to exit
    if pid is not None:
        assert _live_in_group(pid) == [], f"browser processes left in group {pid}"
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    if children.is_file():
        for child in children.read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            assert b"chrom" not in cmdline.lower(), f"browser child {child} left running"


def _check_files(fig_dir: Path, fig_ids: list[str]) -> None:
    """Every figure has a real PNG and SVG in ``fig_dir``."""
    for fid in fig_ids:
        png, svg = fig_dir / f"{fid}.png", fig_dir / f"{fid}.svg"
        assert png.stat().st_size > 0 and png.read_bytes()[:8] == PNG_SIGNATURE, fid
        assert "<svg" in svg.read_text(encoding="utf-8")[:2000], fid


def _call_with_deadline(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` in a thread and fail the test, rather than hang, if it does not return."""
    out: dict[str, Any] = {}

    def target() -> None:
        """Run ``fn``, keeping its result or error."""
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(NO_HANG_S)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} did not return in {NO_HANG_S} s"
    if "error" in out:
        raise out["error"]
    return out.get("result")


def test_warm_export_matches_export_static(tmp_path: Path, results: dict[str, Any]) -> None:
    """The warm exporter writes the same files as export_static, then closes cleanly."""
    _require_browser()
    figures = build_figures(results)
    cold = write_mod.export_static(figures, tmp_path / "cold")
    with StaticExporter.start() as exporter:
        time.sleep(0.5)  # the caller's own work while the browser starts
        warm = exporter.export(figures, tmp_path / "warm")
        pid = exporter.pid
        assert pid is not None and _live_in_group(pid)
    assert [p.name for p in warm] == [p.name for p in cold]
    assert sorted(p.name for p in (tmp_path / "warm").iterdir()) == sorted(p.name for p in cold)
    assert len(warm) == 2 * len(figures)
    _check_files(tmp_path / "warm", list(figures))
    _assert_browser_gone(pid)
    exporter.close()  # idempotent


def test_close_leaves_no_browser_process(tmp_path: Path, results: dict[str, Any]) -> None:
    """After export and close, nothing of the browser runs; a reused exporter exports twice."""
    _require_browser()
    figures = build_figures(results)
    fid = next(iter(figures))
    exporter = StaticExporter.start()
    exporter.export({fid: figures[fid]}, tmp_path / "a")
    exporter.export({fid: figures[fid]}, tmp_path / "b")
    pid = exporter.pid
    t0 = time.monotonic()
    exporter.close()
    assert time.monotonic() - t0 < write_mod.CLOSE_TIMEOUT_S
    _assert_browser_gone(pid)
    _check_files(tmp_path / "b", [fid])


def test_close_during_startup(results: dict[str, Any]) -> None:
    """Closing right after start (the run failed early) neither hangs nor leaks the browser."""
    _require_browser()
    exporter = StaticExporter.start()
    _call_with_deadline(exporter.close)
    _assert_browser_gone(exporter.pid)


def test_export_timeout_then_close(tmp_path: Path, results: dict[str, Any]) -> None:
    """An export over its time bound raises TimeoutError, and close still cleans up."""
    _require_browser()
    figures = build_figures(results)
    exporter = StaticExporter.start()
    try:
        with pytest.raises(TimeoutError, match="did not finish"):
            _call_with_deadline(exporter.export, figures, tmp_path / "figures", timeout_s=0.01)
    finally:
        _call_with_deadline(exporter.close)
    _assert_browser_gone(exporter.pid)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_bad_browser_only_warns(tmp_path: Path, results: dict[str, Any], how: str,
                                monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    """A missing browser: write_report still writes the HTML and logs a warning, quickly."""
    bad = str(tmp_path / "no-such-chromium")
    if how == "env":
        monkeypatch.setenv("BROWSER_PATH", bad)
        exporter = StaticExporter.start()
    else:
        exporter = StaticExporter.start(browser=bad)
    try:
        with caplog.at_level(logging.WARNING, logger="logitlab.report"):
            path = _call_with_deadline(write_report, tmp_path, results, exporter=exporter)
    finally:
        _call_with_deadline(exporter.close)
    assert path == tmp_path / "report.html"
    assert path.is_file() and path.stat().st_size > 100_000
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("logitlab.report")]
    assert any("Static figure export" in m and "no-such-chromium" in m for m in msgs), msgs
    assert not any((tmp_path / "figures").glob("*"))
    with pytest.raises(RuntimeError, match="closed"):
        exporter.export(build_figures(results), tmp_path / "figures")


def test_export_after_close_raises(tmp_path: Path, results: dict[str, Any]) -> None:
    """Export on a closed exporter raises a clear error instead of starting anything."""
    exporter = StaticExporter.start()
    exporter.close()
    with pytest.raises(RuntimeError, match="StaticExporter is closed"):
        exporter.export(build_figures(results), tmp_path / "figures")
    assert not (tmp_path / "figures").exists()
    _assert_browser_gone(exporter.pid)
