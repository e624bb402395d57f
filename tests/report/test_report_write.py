"""write_report: atomic HTML, optional static PNG/SVG, never crashing on export failures."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

import logitlab._io as io_mod
import logitlab.report.write as write_mod
from logitlab.battery import write_results
from logitlab.report import build_figures, write_report

CHROMIUM = os.environ.get("LOGITLAB_CHROMIUM", "/usr/bin/chromium")
PACKAGE = Path(write_mod.__file__).parent


def test_writes_html_from_results_json(tmp_path: Path, results: dict[str, Any]) -> None:
    """With results=None it reads results.json; static=False writes only the HTML."""
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    path = write_report(tmp_path, static=False)
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not (tmp_path / "figures").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "results.json"]


def test_atomic_replace(tmp_path: Path, results: dict[str, Any],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while replacing leaves the old report intact and no temp file behind."""
    (tmp_path / "report.html").write_text("old", encoding="utf-8")

    def boom(src: str, dst: str) -> None:
        """Simulate a failing rename."""
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "replace", boom)
    with pytest.raises(OSError):
        write_report(tmp_path, results, static=False)
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_written_files_get_the_umask_permissions(tmp_path: Path, results: dict[str, Any]) -> None:
    """results.json, config.json, tables and report.html get 0666 & ~umask (0644 under umask 022), as open() gives."""
    old = os.umask(0o022)
    try:
        write_results(results, tmp_path)
        write_report(tmp_path, results, static=False)
    finally:
        os.umask(old)
    files = [tmp_path / "results.json", tmp_path / "config.json", tmp_path / "report.html",
             *sorted((tmp_path / "tables").glob("*.csv"))]
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert len(files) > 3 and set(modes.values()) == {oct(0o644)}, modes


def test_static_failure_only_warns(tmp_path: Path, results: dict[str, Any],
                                   monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """A missing browser logs a clear warning and the HTML is still written."""
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    with caplog.at_level(logging.WARNING, logger="logitlab.report"):
        path = write_report(tmp_path, results, static=True)
    assert path.is_file() and path.stat().st_size > 100_000
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("logitlab.report")]
    assert any("Static figure export" in m and "BROWSER_PATH" in m for m in msgs)


def test_static_failure_any_exception(tmp_path: Path, results: dict[str, Any],
                                      monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the exporter raises, the report survives."""
    def broken(*args: Any, **kwargs: Any) -> None:
        """Simulate a crashing exporter."""
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(write_mod, "export_static", broken)
    with caplog.at_level(logging.WARNING, logger="logitlab.report"):
        assert write_report(tmp_path, results).is_file()
    assert any("renderer crashed" in r.getMessage() for r in caplog.records)


def test_find_browser_prefers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """BROWSER_PATH wins over the system locations."""
    monkeypatch.setenv("BROWSER_PATH", "/opt/x/chrome")
    assert write_mod.find_browser() == "/opt/x/chrome"
    monkeypatch.delenv("BROWSER_PATH")
    found = write_mod.find_browser()
    if Path(CHROMIUM).is_file():
        assert found is not None


def test_static_export(tmp_path: Path, results: dict[str, Any]) -> None:
    """With Chromium installed, every figure is written as a real PNG and SVG (offline)."""
    if not Path(CHROMIUM).is_file():
        msg = f"Chromium not found at {CHROMIUM}; install it with `apt-get install -y chromium`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    write_report(tmp_path, results, static=True)
    fig_dir = tmp_path / "figures"
    for fid in build_figures(results):
        png, svg = fig_dir / f"{fid}.png", fig_dir / f"{fid}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fid
        assert "<svg" in svg.read_text(encoding="utf-8")[:2000], fid
    # the hostile token is rendered as text in the SVG tick labels
    svg_text = (fig_dir / "resid_patching.svg").read_text(encoding="utf-8")
    assert re.search(r"&(#60|lt);/script&(#62|gt);", svg_text)
    assert "</script>" not in svg_text


def test_no_bare_print_in_package() -> None:
    """The report package logs instead of printing."""
    for py in PACKAGE.glob("*.py"):
        src = py.read_text(encoding="utf-8")
        assert "print(" not in src, py.name
        assert len(src.splitlines()) < 600, py.name


def test_tables_read_back_as_pandas_writes_them(tmp_path: Path, results: dict[str, Any]) -> None:
    """tables/*.csv are written without pandas; pandas reads each back as the table it would have written itself."""
    import io

    import pandas as pd

    from logitlab.battery import _tables
    write_results(results, tmp_path)
    tables = _tables(results)
    assert len(tables) > 3
    for name, rows in tables.items():
        ours = pd.read_csv(tmp_path / "tables" / f"{name}.csv")
        ref = pd.read_csv(io.StringIO(pd.DataFrame(rows).to_csv(index=False)))
        pd.testing.assert_frame_equal(ours, ref, check_exact=True)
