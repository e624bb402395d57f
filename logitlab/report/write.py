"""Write ``report.html`` (atomically) and, optionally, static PNG/SVG figures via kaleido.

kaleido ≥ 1 renders in a Chrome/Chromium it drives through choreographer. We
point it at a browser explicitly (``BROWSER_PATH`` if set, else the usual
system locations such as ``/usr/bin/chromium``), inline the plotly.js bundled
with plotly.py and disable MathJax (whose default is a CDN URL), so export works
offline. Any failure of the static export is logged as a warning; the HTML
report is written regardless.

Starting that browser costs about 2 s, so :class:`StaticExporter` can launch it
in a background thread early in a run (while the model loads) and render the
figures in the already-open browser once the analyses are done.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import importlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import plotly.graph_objects as go

from logitlab._io import write_text_atomic
from logitlab.results import Results

from .html import build_report

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FIGURES_DIR = "figures"
STATIC_FORMATS = ("png", "svg")
STATIC_WIDTH = 1000
#: Seconds kaleido may take to render one image.
RENDER_TIMEOUT_S = 60
#: Seconds the browser may take to start, and to shut down cleanly before it is killed.
STARTUP_TIMEOUT_S = 60
CLOSE_TIMEOUT_S = 15
#: Extra seconds an export may take per image on top of one RENDER_TIMEOUT_S, as a
#: bound on the whole export (a normal image takes well under a second).
_EXPORT_BUDGET_PER_IMAGE_S = 10
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


def _static_jobs(figures: Mapping[str, go.Figure], fig_dir: Path, formats: Sequence[str] = STATIC_FORMATS,
                 ) -> tuple[list[dict[str, Any]], list[Path]]:
    """kaleido jobs writing every figure as ``<id>.png`` (2x) and/or ``<id>.svg`` into ``fig_dir``.

    Returns:
        The jobs for ``Kaleido.write_fig_from_object`` and the paths they write.
    """
    jobs: list[dict[str, Any]] = []
    paths: list[Path] = []
    for fig_id, fig in figures.items():
        height = int(fig.layout.height or 500)
        for fmt in formats:
            path = fig_dir / f"{fig_id}.{fmt}"
            opts = {"format": fmt, "width": STATIC_WIDTH, "height": height,
                    "scale": 2 if fmt == "png" else 1}
            jobs.append({"fig": fig, "path": path, "opts": opts})
            paths.append(path)
    return jobs, paths


class StaticExporter:
    """A kaleido browser started in the background and reused to export static figures.

    ``start()`` returns at once; the browser starts in a daemon thread running its
    own asyncio loop, so its ~2 s startup overlaps with whatever the caller does
    next (loading a model). ``export()`` then renders in the open browser and
    ``close()`` shuts it down. A failed startup (no browser, …) is raised by
    ``export()``; every wait is bounded, and ``close()`` kills the browser's
    process group as a last resort, so no failure hangs or leaves Chromium behind.
    The exporter is also a context manager, and is closed at interpreter exit.

    Example::

        with StaticExporter.start() as exporter:
            ...  # load the model, run the analyses
            write_report(out_dir, results, exporter=exporter)
    """

    def __init__(self, browser: str | None = None) -> None:
        """Prepare an exporter for ``browser`` (None: :func:`find_browser`); use :meth:`start`."""
        self.browser = browser if browser is not None else find_browser()
        self._kaleido: Any = None  # kaleido.Kaleido, created in the loop's thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None  # set in the loop by close()
        self._started = threading.Event()  # set once the browser is open or has failed
        self._open = False
        self._error: BaseException | None = None
        self._closing = threading.Event()
        self._closed = False

    @classmethod
    def start(cls, browser: str | None = None) -> StaticExporter:
        """Start the browser in the background and return at once.

        Args:
            browser: Chrome/Chromium executable; None for :func:`find_browser`.

        Returns:
            The exporter; errors of the startup are raised by :meth:`export`.
        """
        exporter = cls(browser)
        try:  # optional and heavy: imported on the first start, not with the report
            kaleido = importlib.import_module("kaleido")
        except Exception as exc:  # noqa: BLE001 - reported by export()
            exporter._error = exc
            exporter._started.set()
            return exporter
        kopts: dict[str, Any] = {"mathjax": False, "timeout": RENDER_TIMEOUT_S}
        if exporter.browser:
            kopts["path"] = exporter.browser
        exporter._thread = threading.Thread(target=exporter._run, args=(kaleido, kopts),
                                            name="logitlab-kaleido", daemon=True)
        exporter._thread.start()
        atexit.register(exporter.close)
        return exporter

    @property
    def pid(self) -> int | None:
        """Process id (and process group) of the browser launcher, once launched."""
        proc = getattr(self._kaleido, "subprocess", None)
        return None if proc is None else proc.pid

    def _run(self, kaleido: Any, kopts: dict[str, Any]) -> None:
        """Body of the background thread: serve the browser until :meth:`close`."""
        try:
            asyncio.run(self._serve(kaleido, kopts))
        except BaseException as exc:  # noqa: BLE001 - reported by export()
            if self._error is None:
                self._error = exc
        finally:
            self._started.set()

    async def _serve(self, kaleido: Any, kopts: dict[str, Any]) -> None:
        """Open the browser, keep it open until :meth:`close` sets ``_stop``, then close it.

        The startup itself is never cancelled: cancelling it between launching the
        browser and recording its process would leave that process running.
        """
        stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        try:
            self._kaleido = kaleido.Kaleido(**kopts)
            await asyncio.wait_for(self._kaleido.open(), STARTUP_TIMEOUT_S)
            self._open = True
            self._started.set()
            logger.debug("kaleido browser started (%s)", self.browser or "choreographer's search")
            # close() sets _closing before it reads _stop: one of the two sees the other
            if not self._closing.is_set():
                await stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported by export()
            self._error = exc
        finally:
            self._open = False
            self._started.set()
            if self._kaleido is not None:
                try:
                    await asyncio.wait_for(self._kaleido.close(), CLOSE_TIMEOUT_S)
                except Exception as exc:  # noqa: BLE001 - close() kills what is left
                    logger.debug("kaleido close failed: %s: %s", type(exc).__name__, exc)

    def export(self, figures: Mapping[str, go.Figure], fig_dir: Path,
               timeout_s: float | None = None, formats: Sequence[str] = STATIC_FORMATS) -> list[Path]:
        """Write every figure as ``<id>.png`` and ``<id>.svg`` into ``fig_dir``; block until done.

        Args:
            figures: Figures keyed by id.
            fig_dir: Output folder (created if needed).
            timeout_s: Bound on the whole export; by default one RENDER_TIMEOUT_S plus
                a generous budget per image.

        Returns:
            The files written.

        Raises:
            RuntimeError: The exporter is closed, or files are missing.
            TimeoutError: The browser did not start, or the export did not finish, in time.
            Exception: The startup's error (no browser, …) or kaleido's render error.
        """
        if self._closed:
            raise RuntimeError("StaticExporter is closed; start a new one to export figures")
        if not self._started.wait(STARTUP_TIMEOUT_S + CLOSE_TIMEOUT_S):
            raise TimeoutError(f"kaleido's browser did not start within {STARTUP_TIMEOUT_S} s")
        if self._error is not None:
            raise self._error
        loop = self._loop
        if not self._open or loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError("kaleido's browser is no longer running")
        fig_dir.mkdir(parents=True, exist_ok=True)
        jobs, paths = _static_jobs(figures, fig_dir, formats)
        if timeout_s is None:
            timeout_s = RENDER_TIMEOUT_S + _EXPORT_BUDGET_PER_IMAGE_S * len(jobs)
        logger.info("Exporting %d static images with kaleido (browser: %s)", len(jobs),
                    self.browser or "choreographer's search")
        future = asyncio.run_coroutine_threadsafe(
            self._kaleido.write_fig_from_object(jobs, cancel_on_error=True), loop)
        try:
            future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"static export did not finish within {timeout_s:g} s") from None
        missing = [p for p in paths if not p.is_file() or p.stat().st_size == 0]
        if missing:
            raise RuntimeError(f"kaleido did not write {len(missing)} file(s), e.g. {missing[0]}")
        return paths

    def close(self) -> None:
        """Shut the browser down; idempotent and safe after any error.

        Takes a fraction of a second once the browser is up; called while it is still
        starting, it waits for the startup to end first. Everything is bounded by
        the timeouts, after which the browser's process group is killed.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop is closed: the thread has finished
                pass
        # a browser still starting is let finish (≈2 s) so that it can be closed cleanly
        thread.join((0 if self._started.is_set() else STARTUP_TIMEOUT_S) + CLOSE_TIMEOUT_S + 5)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Kill the browser's process group if anything of it is still running."""
        proc = getattr(self._kaleido, "subprocess", None)
        if proc is None:
            return
        if proc.poll() is None:
            logger.warning("kaleido's browser did not shut down in time; killing it (pid %d)",
                           proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher leads its own process group
        except (ProcessLookupError, PermissionError, AttributeError):
            if proc.poll() is None:
                proc.kill()
        try:
            proc.wait(5)
        except Exception:  # noqa: BLE001 - nothing more to do
            pass

    def __enter__(self) -> StaticExporter:
        """Use the exporter in a ``with`` block that closes it."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the exporter."""
        self.close()


def export_static(figures: Mapping[str, go.Figure], fig_dir: Path,
                  formats: Sequence[str] = STATIC_FORMATS) -> list[Path]:
    """Write every figure as ``<id>.<format>`` (``png``, ``svg``) into ``fig_dir`` with kaleido.

    Starts a browser, exports and closes it; see :class:`StaticExporter` to start
    the browser ahead of time instead.

    Args:
        figures: Figures keyed by id.
        fig_dir: Output folder (created if needed).

    Returns:
        The files written.

    Raises:
        Exception: Whatever kaleido/choreographer raise (no browser, render timeout, …).
    """
    with StaticExporter.start() as exporter:
        return exporter.export(figures, fig_dir, formats=formats)


def write_report(out_dir: Path, results: Results | None = None, static: bool = True,
                 exporter: StaticExporter | None = None, formats: Sequence[str] = STATIC_FORMATS) -> Path:
    """Write ``out_dir/report.html`` and, if ``static``, ``out_dir/figures/<id>.<format>`` for ``formats``.

    Args:
        out_dir: The run's output folder.
        results: The results dict; read from ``out_dir/results.json`` when None (either way loaded with
            :func:`logitlab.results.load_results`: migrated once, or refused, and validated).
        static: Also export every figure as PNG and SVG (failures only log a warning).
        exporter: A browser started earlier with :meth:`StaticExporter.start`, used
            for the static export instead of starting one now; the caller closes it.

    Returns:
        The path of the report.
    """
    out_dir = Path(out_dir)
    report = build_report(out_dir / "results.json" if results is None else results)
    path = out_dir / REPORT_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, report.html)
    logger.info("Wrote %s (%d figures, %d findings)", path, len(report.figures),
                len(report.findings))
    if static and report.figures:
        try:
            fig_dir = out_dir / FIGURES_DIR
            written = (exporter.export(report.figures, fig_dir, formats=formats) if exporter is not None
                       else export_static(report.figures, fig_dir, formats))
            logger.info("Wrote %d static figures to %s", len(written), out_dir / FIGURES_DIR)
        except Exception as exc:  # noqa: BLE001 - static images must never break the report
            logger.warning(
                "Static figure export (PNG/SVG via kaleido) failed, HTML report written anyway: "
                "%s: %s. kaleido needs Chrome/Chromium: install it (e.g. `apt-get install "
                "chromium`) or set BROWSER_PATH to its executable.",
                type(exc).__name__, exc,
            )
    return path
