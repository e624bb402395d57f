"""Open a synthetic report in headless Chromium and check that it really works.

Checks: every figure rendered (plotly's ``.main-svg``), no console error or
uncaught exception, no network request other than the file itself, no JS
dialog (the hostile ``<script>alert(1)</script>`` prompt must stay text), and
hovering a token in the attention viewer changes the highlighting. Saves
screenshots to ``$LOGITLAB_ARTIFACTS`` (default ``tests/report/artifacts/``).
Skipped when Chromium is absent, unless ``CI=true``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cdp import Chromium, require_chromium
from logitlab.report import build_figures, write_report
from synthetic import make_results

CHROMIUM = os.environ.get("LOGITLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("LOGITLAB_ARTIFACTS", Path(__file__).parent / "artifacts"))
ALLOWED_SCHEMES = ("file://", "data:", "about:")
WIDTH, HEIGHT = 1280, 900
TEST_BUDGET_S = 55.0

COUNT_PLOTS_JS = """
(() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  return {divs: divs.length,
          rendered: divs.filter(d => d.querySelector('.main-svg')).length,
          mainSvg: document.querySelectorAll('.main-svg').length};
})()
"""

HOVER_JS = """
(() => {
  const spans = [...document.querySelectorAll('#attn-viewer .attn-tok')];
  const bg = () => spans.map(s => s.style.backgroundColor);
  const before = bg();
  const target = spans[1];
  target.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
  const after = bg();
  const select = document.querySelector('#attn-viewer select.attn-select');
  let afterHead = null;
  if (select.options.length > 1) {
    select.value = '1';
    select.dispatchEvent(new Event('change'));
    afterHead = bg();
  }
  return {n: spans.length, before, after, afterHead,
          query: spans.findIndex(s => s.classList.contains('attn-query')),
          texts: spans.map(s => s.textContent), options: select.options.length,
          info: document.querySelector('#attn-viewer .attn-info').textContent};
})()
"""

DOM_JS = """
(() => ({
  prompts: [...document.querySelectorAll('.prompt')].map(e => e.textContent),
  scripts: document.querySelectorAll('script').length,
  findingLinks: [...document.querySelectorAll('ol.findings a')].map(a => a.getAttribute('href')),
  anchorsOk: [...document.querySelectorAll('ol.findings a')]
      .every(a => document.getElementById(a.getAttribute('href').slice(1)) !== null),
  sections: [...document.querySelectorAll('section > h2')].map(h => h.textContent),
  height: Math.ceil(document.documentElement.scrollHeight),
  viewer: (() => { const r = document.querySelector('#attn-viewer').getBoundingClientRect();
                   return {x: r.x + window.scrollX, y: r.y + window.scrollY,
                           width: r.width, height: r.height}; })(),
}))()
"""


def _wait(cond: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``cond()`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    """The report renders all figures, stays offline, raises no errors and is interactive."""
    require_chromium()
    start = time.monotonic()
    results = make_results()
    n_figures = len(build_figures(results))
    report = write_report(tmp_path / "out", results=results, static=False)
    assert report.is_file()
    assert not (tmp_path / "out" / "figures").exists()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with Chromium(CHROMIUM, tmp_path / "profile", ARTIFACTS / "chromium.log",
                  (f"--window-size={WIDTH},{HEIGHT}",)) as browser:
        url = report.resolve().as_uri()
        sid = browser.open_page(url, WIDTH, HEIGHT)

        plots = _wait(lambda: (lambda r: r if r["rendered"] == r["divs"] else None)(
            browser.evaluate(sid, COUNT_PLOTS_JS)), 20, "all plotly figures to render")
        assert plots["divs"] == n_figures
        assert plots["mainSvg"] >= n_figures

        dom = browser.evaluate(sid, DOM_JS)
        hover = browser.evaluate(sid, HOVER_JS)
        time.sleep(0.3)  # let late console messages / requests arrive

        # screenshots: the whole page, and the attention viewer after the hover
        browser.screenshot(sid, ARTIFACTS / "report_full.png",
                           {"x": 0, "y": 0, "width": WIDTH, "height": min(dom["height"], 16000)})
        v = dom["viewer"]
        browser.screenshot(sid, ARTIFACTS / "attention_viewer.png",
                           {"x": 0, "y": max(0, v["y"] - 60), "width": WIDTH,
                            "height": v["height"] + 80})

        errors = browser.page_errors()
        requests = [e["params"]["request"]["url"]
                    for e in browser.events_named("Network.requestWillBeSent")]
        dialogs = browser.events_named("Page.javascriptDialogOpening")

    (ARTIFACTS / "browser_check.json").write_text(json.dumps(
        {"plots": plots, "hover": hover, "dom": dom, "errors": errors,
         "requests": [u[:120] for u in requests]},
        indent=2, ensure_ascii=False, default=str))

    assert not errors, f"console errors: {errors}"
    assert not dialogs, f"a JS dialog opened (injection?): {dialogs}"
    external = [u for u in requests if not u.startswith(ALLOWED_SCHEMES)]
    assert not external, f"network requests other than the file itself: {external}"
    assert url in requests

    # the hostile prompt is shown as text, nothing was injected
    assert any("<script>alert(1)</script>" in p for p in dom["prompts"])
    assert dom["sections"][0] == "Key findings"
    assert dom["findingLinks"] and dom["anchorsOk"]

    # attention viewer: tokens inserted as text; hovering a token changes the highlight
    assert hover["n"] == len(results["attention"]["tokens"])
    assert hover["texts"] == results["attention"]["tokens"]
    assert "</script>" in hover["texts"]
    assert hover["query"] == 1
    assert hover["after"] != hover["before"]
    assert hover["options"] == len(results["attention"]["heads"])
    if hover["afterHead"] is not None:
        assert hover["afterHead"] != hover["after"]
    assert (ARTIFACTS / "report_full.png").stat().st_size > 10_000
    assert time.monotonic() - start < TEST_BUDGET_S
