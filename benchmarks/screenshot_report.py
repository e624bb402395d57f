"""Regenerate the README's picture of the report (docs/img/report.png).

    python benchmarks/screenshot_report.py                  # runs logitlab on the built-in model first (~1 min)
    python benchmarks/screenshot_report.py logitlab-out     # screenshots an existing run's report.html

Without a folder it runs ``logitlab run --analyses ablation,patching --patching-pairs 0`` on the built-in model and
task into a temporary folder. The picture is the top of ``report.html``: its key findings followed directly by one
section's plot (``--section``, activation patching by default; the sections in between are hidden by a style
rule added to a copy of the page, the numbers are untouched). Headless Chromium captures it in a fixed viewport,
so the picture's size (and the PNG's, about 200-300 KB) is set by ``--width`` and ``--height``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_ARGS = ("run", "--force", "--analyses", "ablation,patching", "--patching-pairs", "0")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars")


def run_logitlab(out: Path) -> None:
    """Run the built-in model and task into ``out`` with the logitlab next to this interpreter."""
    exe = Path(sys.executable).with_name("logitlab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from logitlab.cli import main; main()"]
    subprocess.run([*cmd, *RUN_ARGS, "--out", str(out)], check=True)  # noqa: S603 - fixed arguments


def page_with(html: str, section: str) -> str:
    """``html`` with every section but the key findings and ``section`` hidden (one style rule before ``</head>``)."""
    ids = re.findall(r'<section id="([^"]+)"', html)
    if section not in ids:
        sys.exit(f"error: the report has no section {section!r}; it has {', '.join(ids)}")
    hidden = [f"section#{i}" for i in ids if i not in ("findings", section)]
    rule = f"<style>{', '.join(hidden)} {{display: none}}</style>" if hidden else ""
    return html.replace("</head>", rule + "</head>", 1)


def screenshot(report: Path, png: Path, chromium: str, section: str, width: int, height: int,
               wait_ms: int) -> None:
    """Capture the first ``width`` × ``height`` pixels of ``report`` (findings and ``section``) into ``png``."""
    with tempfile.TemporaryDirectory(prefix="logitlab-shot-") as tmp:
        page, shot = Path(tmp) / "report.html", Path(tmp) / "shot.png"
        page.write_text(page_with(report.read_text(encoding="utf-8"), section), encoding="utf-8")
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}",
               f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}",
               f"--screenshot={shot}", page.as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # noqa: S603 - fixed binary
        if not shot.exists():
            sys.exit(f"error: Chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}")
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, png)


def main() -> None:
    """Parse the arguments, run logitlab if no folder is given, and write the PNG."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", type=Path, help="a folder written by `logitlab run` (default: run one)")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "report.png", help="where the PNG goes")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    ap.add_argument("--section", default="patching", help="the report section shown under the findings")
    ap.add_argument("--width", type=int, default=1100, help="viewport width in CSS pixels")
    ap.add_argument("--height", type=int, default=1540, help="viewport height: how much of the page's top is shown")
    ap.add_argument("--wait-ms", type=int, default=5000, help="virtual time for the plots to draw")
    args = ap.parse_args()
    if args.run_dir is None:
        with tempfile.TemporaryDirectory(prefix="logitlab-run-") as tmp:
            run_logitlab(Path(tmp) / "out")
            screenshot(Path(tmp) / "out" / "report.html", args.png, args.chromium, args.section, args.width,
                       args.height, args.wait_ms)
    else:
        report = args.run_dir / "report.html"
        if not report.exists():
            sys.exit(f"error: {report} does not exist (give a folder written by `logitlab run`)")
        screenshot(report, args.png, args.chromium, args.section, args.width, args.height, args.wait_ms)
    print(f"wrote {args.png} ({args.png.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
