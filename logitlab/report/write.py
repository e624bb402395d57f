"""Write ``report.html`` (atomically) and, optionally, static PNG/SVG figures via kaleido.

kaleido ≥ 1 renders in a Chrome/Chromium it drives through choreographer. We
point it at a browser explicitly (``BROWSER_PATH`` if set, else the usual
system locations such as ``/usr/bin/chromium``), inline the plotly.js bundled
with plotly.py and disable MathJax (whose default is a CDN URL), so export works
offline. Any failure of the static export is logged as a warning; the HTML
report is written regardless.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from .html import build_report

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FIGURES_DIR = "figures"
STATIC_FORMATS = ("png", "svg")
STATIC_WIDTH = 1000
#: Seconds kaleido may take to render one image.
RENDER_TIMEOUT_S = 60
_BROWSER_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome-stable",
    "/usr/bin/google-chrome",
)


def find_browser() -> str | None:
    """Path of a Chrome/Chromium for kaleido: ``BROWSER_PATH``, system paths, then ``PATH``.

    Returns:
        The path, or None to let choreographer search (including its own download).
    """
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env
    for cand in _BROWSER_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def export_static(figures: Mapping[str, go.Figure], fig_dir: Path) -> list[Path]:
    """Write every figure as ``<id>.png`` and ``<id>.svg`` into ``fig_dir`` with kaleido.

    Args:
        figures: Figures keyed by id.
        fig_dir: Output folder (created if needed).

    Returns:
        The files written.

    Raises:
        Exception: Whatever kaleido/choreographer raise (no browser, render timeout, …).
    """
    import kaleido  # noqa: PLC0415 - optional at import time; heavy

    fig_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[dict[str, Any]] = []
    paths: list[Path] = []
    for fig_id, fig in figures.items():
        height = int(fig.layout.height or 500)
        for fmt in STATIC_FORMATS:
            path = fig_dir / f"{fig_id}.{fmt}"
            opts = {"format": fmt, "width": STATIC_WIDTH, "height": height,
                    "scale": 2 if fmt == "png" else 1}
            jobs.append({"fig": fig, "path": path, "opts": opts})
            paths.append(path)
    kopts: dict[str, Any] = {"mathjax": False, "timeout": RENDER_TIMEOUT_S}
    browser = find_browser()
    if browser:
        kopts["path"] = browser
    logger.info("Exporting %d static images with kaleido (browser: %s)", len(jobs),
                browser or "choreographer's search")
    kaleido.write_fig_from_object_sync(jobs, kopts=kopts)
    missing = [p for p in paths if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise RuntimeError(f"kaleido did not write {len(missing)} file(s), e.g. {missing[0]}")
    return paths


def write_report(out_dir: Path, results: dict[str, Any] | None = None, static: bool = True) -> Path:
    """Write ``out_dir/report.html`` and, if ``static``, ``out_dir/figures/<id>.{png,svg}``.

    Args:
        out_dir: The run's output folder.
        results: The results dict; read from ``out_dir/results.json`` when None.
        static: Also export every figure as PNG and SVG (failures only log a warning).

    Returns:
        The path of the report.
    """
    out_dir = Path(out_dir)
    if results is None:
        with (out_dir / "results.json").open(encoding="utf-8") as fh:
            results = json.load(fh)
    report = build_report(results)
    path = out_dir / REPORT_NAME
    atomic_write_text(path, report.html)
    logger.info("Wrote %s (%d figures, %d findings)", path, len(report.figures),
                len(report.findings))
    if static and report.figures:
        try:
            written = export_static(report.figures, out_dir / FIGURES_DIR)
            logger.info("Wrote %d static figures to %s", len(written), out_dir / FIGURES_DIR)
        except Exception as exc:  # noqa: BLE001 - static images must never break the report
            logger.warning(
                "Static figure export (PNG/SVG via kaleido) failed, HTML report written anyway: "
                "%s: %s. kaleido needs Chrome/Chromium: install it (e.g. `apt-get install "
                "chromium`) or set BROWSER_PATH to its executable.",
                type(exc).__name__, exc,
            )
    return path
