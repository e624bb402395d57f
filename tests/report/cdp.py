"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

Chromium reads NUL-terminated JSON commands from fd 3 and writes NUL-terminated
JSON responses/events to fd 4. A reader thread collects responses (by id) and
events (in order); :meth:`Chromium.send` blocks until its response arrives or a
timeout passes. :func:`open_file` opens a file in a tab and waits until its figures are drawn (the report tests'
``chromium_page`` fixture, ``conftest.py``, starts the browser and calls it). Used by the report's browser tests
only.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

logger = logging.getLogger(__name__)

CHROMIUM = os.environ.get("LOGITLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("LOGITLAB_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class CDPError(RuntimeError):
    """A CDP command failed, timed out, or the browser went away."""


class Chromium:
    """A headless Chromium driven over the DevTools pipe (use as a context manager)."""

    def __init__(self, binary: str, user_data_dir: Path, log_path: Path,
                 extra_flags: tuple[str, ...] = ()) -> None:
        """Start Chromium.

        Args:
            binary: Path of the chromium executable.
            user_data_dir: A fresh profile folder.
            log_path: Where Chromium's stdout/stderr go.
            extra_flags: More command-line flags.
        """
        to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, from_chrome_w = os.pipe()

        def _child_fds() -> None:
            """In the child (between fork and exec): put the pipe ends on fds 3 and 4."""
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.close(a)
            os.close(b)

        self._log = log_path.open("wb")
        cmd = [binary, *CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={user_data_dir}",
               "about:blank"]
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary and flags
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            close_fds=False, preexec_fn=_child_fds, start_new_session=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._responses: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        """Split the pipe into NUL-terminated JSON messages and file them."""
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                try:
                    msg = json.loads(raw)
                except json.JSONDecodeError:
                    logger.warning("Unparsable CDP message: %r", raw[:200])
                    continue
                with self._cond:
                    if "id" in msg:
                        self._responses[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None,
             session_id: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Send one command and wait for its result.

        Raises:
            CDPError: On an error response, a timeout or a closed pipe.
        """
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        try:
            os.write(self._to_chrome_w, json.dumps(msg).encode() + b"\0")
        except OSError as exc:
            raise CDPError(f"{method}: cannot write to browser ({exc})") from exc
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._responses:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "browser closed the pipe" if self._closed else f"timeout {timeout}s"
                    raise CDPError(f"{method}: {why}")
                self._cond.wait(left)
            resp = self._responses.pop(msg_id)
        if "error" in resp:
            raise CDPError(f"{method}: {resp['error']}")
        return resp.get("result", {})

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool],
                   timeout: float = 60.0) -> dict[str, Any]:
        """Wait until an event satisfying ``predicate`` has arrived (past events count)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if predicate(ev):
                        return ev
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CDPError("event not seen before timeout")
                self._cond.wait(left)

    def open_page(self, url: str, width: int, height: int) -> str:
        """A new tab of ``width`` × ``height`` with the Runtime, Log, Network and Page events on, loaded with ``url``
        (waits for its load event); returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session_id=sid)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session_id=sid)
        self.send("Page.navigate", {"url": url}, session_id=sid)
        self.wait_event(lambda e: e.get("method") == "Page.loadEventFired", timeout=30)
        return sid

    def page_errors(self) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and error log entries received so far."""
        errors = [e["params"] for e in self.events_named("Runtime.consoleAPICalled")
                  if e["params"].get("type") == "error"]
        errors += [e["params"] for e in self.events_named("Runtime.exceptionThrown")]
        errors += [e["params"]["entry"] for e in self.events_named("Log.entryAdded")
                   if e["params"]["entry"].get("level") == "error"]
        return errors

    def events_named(self, method: str) -> list[dict[str, Any]]:
        """All events received so far with this method name."""
        with self._lock:
            return [e for e in self.events if e.get("method") == method]

    def evaluate(self, session_id: str, expression: str, timeout: float = 60.0) -> Any:
        """Evaluate a JS expression in the page and return its value (by value)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, session_id, timeout)
        if "exceptionDetails" in res:
            raise CDPError(f"JS exception: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def screenshot(self, session_id: str, path: Path, clip: dict[str, float] | None = None) -> None:
        """Save a PNG screenshot (optionally of a clip rectangle, beyond the viewport)."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.send("Page.captureScreenshot", params, session_id, timeout=30)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """Ask the browser to close, then make sure the process is gone."""
        try:
            self.send("Browser.close", timeout=5)
        except CDPError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for fd in (self._to_chrome_w, self._from_chrome_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()

    def __enter__(self) -> Chromium:
        """Context-manager entry."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the browser."""
        self.close()


@dataclass(frozen=True)
class Page:
    """A file opened in a tab of a headless Chromium."""

    browser: Chromium
    sid: str
    """the tab's CDP session id"""
    url: str
    """the file's ``file://`` URL"""

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression evaluated in the page."""
        return self.browser.evaluate(self.sid, expression)


#: [plotly figures on the page, those drawn]
_DRAWN_JS = """
(() => { const divs = [...document.querySelectorAll('.plotly-graph-div')];
         return [divs.length, divs.filter(d => d.querySelector('.main-svg')).length]; })()
"""


def open_file(browser: Chromium, html: Path, width: int, height: int, timeout: float = 20.0) -> Page:
    """``html`` in a new tab of ``width`` × ``height`` (:meth:`Chromium.open_page`), once every plotly figure on it
    is drawn.

    Raises:
        CDPError: Some figure is not drawn after ``timeout`` seconds.
    """
    url = html.resolve().as_uri()
    page = Page(browser, browser.open_page(url, width, height), url)
    deadline = time.monotonic() + timeout
    while (counts := page.evaluate(_DRAWN_JS))[1] < counts[0]:
        if time.monotonic() > deadline:
            raise CDPError(f"{counts[1]} of {counts[0]} plotly figures drawn after {timeout:.0f} s in {html}")
        time.sleep(0.2)
    return page


def require_chromium() -> None:
    """Skip (or fail on CI) when Chromium is not installed."""
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return
    msg = (f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
           "(or set LOGITLAB_CHROMIUM) to run the browser tests")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)
