"""compare.html: runs side by side, findings across models, and the page in headless Chromium.

The runs are synthetic results (``synthetic.py``, hostile strings included), a hand-made formation run and two
grid cells on training checkpoints; the browser check is the report's (``test_browser.py``): every figure
rendered, no console error, no network request, no JS dialog.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import synthetic
from cdp import ARTIFACTS, Page
from logitlab.cli import main
from logitlab.errors import LogitlabError
from logitlab.report.compare import compare_figures, compare_findings, load_runs, write_compare

ALLOWED_SCHEMES = ("file://", "data:", "about:")
WIDTH, HEIGHT = 1280, 900

PAGE_JS = """
(() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  const links = [...document.querySelectorAll('ol.findings a')];
  return {divs: divs.length, rendered: divs.filter(d => d.querySelector('.main-svg')).length,
          findings: links.map(a => a.textContent),
          anchorsOk: links.every(a => document.getElementById(a.getAttribute('href').slice(1)) !== null),
          title: document.querySelector('header h1').textContent,
          sections: [...document.querySelectorAll('section > h2')].map(h => h.textContent),
          text: document.body.innerText, height: Math.ceil(document.documentElement.scrollHeight)};
})()
"""


def _write(folder: Path, results: dict[str, Any], cell: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, ensure_ascii=False), encoding="utf-8")
    if cell is not None:
        (folder / "cell.json").write_text(json.dumps(cell), encoding="utf-8")
    return folder


def _formation(name: str, steps: list[int], means: list[float]) -> dict[str, Any]:
    return {"kind": "formation", "model": {"name": name, "n_layers": 2, "n_heads": 2, "dtype": "float32"},
            "task": {"name": "toy-pronouns"},
            "checkpoints": [{"step": s, "logit_diff_mean": m, "logit_diff_stderr": 0.2, "accuracy": 0.5 + m / 40}
                            for s, m in zip(steps, means)]}


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """Two models on one task (the second with circuit sections where synthetic.py makes them), a formation
    run, and one model on two training checkpoints."""
    a = synthetic.make_results(n_layers=3, n_heads=4, seed=0)
    b = synthetic.make_results(n_layers=6, n_heads=2, seed=1, post_norm=False)
    if hasattr(synthetic, "with_circuit"):
        b = synthetic.with_circuit(b)
    a["model"]["name"], b["model"]["name"] = "model <A>", "model B"
    _write(tmp_path / "a", a)
    _write(tmp_path / "b", b)
    _write(tmp_path / "formation", _formation("toy", [0, 10, 100, 1000], [0.0, 0.3, 2.5, 6.0]))
    for step, seed in ((10, 2), (1000, 3)):
        c = synthetic.make_results(n_layers=2, n_heads=2, seed=seed)
        _write(tmp_path / f"ck{step}", c, {"model": "toy-grid", "task": c["task"]["name"], "step": step})
    return tmp_path


def _folders(root: Path) -> list[Path]:
    return [root / n for n in ("a", "b", "formation", "ck10", "ck1000")]


def test_runs_are_grouped_by_task_and_checkpoints_drawn_on_a_step_axis(runs_dir: Path) -> None:
    runs = load_runs(_folders(runs_dir))
    assert [r.label for r in runs][:2] == ["model <A>", "model B"]
    figs = compare_figures(runs)
    assert {"t0_logit_diff", "t0_layers", "t0_heads_dla", "t0_heads_ablation", "formation"} <= set(figs)
    # Only the last checkpoint of a series stands beside the other models; the whole series is a training curve.
    labels = [t.x[0] for t in figs["t0_logit_diff"].data]
    assert "toy-grid @ step 1000" in labels and "toy-grid @ step 10" not in labels
    curves = {t.name: list(t.x) for t in figs["formation"].data}
    assert curves["toy-grid · " + runs[0].task.replace("<", "&lt;").replace(">", "&gt;")] == [11, 1001]
    assert [t for t in curves if "formation" in t], "the formation run is a curve too"
    # Layers line up by relative depth: the 6-layer model's last layer sits at 5/6.
    depth_x = [max(t.x) for t in figs["t0_layers"].data if t.name.startswith("model B")]
    assert depth_x and abs(max(depth_x) - 5 / 6) < 1e-9
    if hasattr(synthetic, "with_circuit"):
        assert {"t0_attribution_patching", "t0_path_patching", "t0_circuit"} <= set(figs)


def test_findings_claim_only_what_the_cis_support(runs_dir: Path) -> None:
    a = json.loads((runs_dir / "a" / "results.json").read_text())
    b = copy.deepcopy(a)
    b["model"]["name"] = "model B"
    # A: one head with almost all of the direct effect, separated; B: the same head, not separated.
    for r, share in ((a, 0.9), (b, 0.3)):
        z = r["head_attribution"]
        for l, row in enumerate(z):
            for h in range(len(row)):
                row[h] = 0.01
        z[2][1] = share / (1 - share) * 0.01 * (sum(len(row) for row in z) - 1)
        r["head_attribution_detail"]["ci"][2][1] = [z[2][1] * 0.95, z[2][1] * 1.05]
        r["head_attribution_detail"]["top"].update(layer=2, head=1, value=z[2][1], tied=[])
    a["head_attribution_detail"]["top"]["difference_ci"] = [0.5, 0.7]
    b["head_attribution_detail"]["top"]["difference_ci"] = [-0.1, 0.7]
    a["logit_diff"].update(mean=5.0, ci=[4.5, 5.5])
    b["logit_diff"].update(mean=1.0, ci=[-0.2, 2.0])
    _write(runs_dir / "x", a)
    _write(runs_dir / "y", b)
    texts = [f.text for f in compare_findings(load_runs([runs_dir / "x", runs_dir / "y"]))]
    ld = next(t for t in texts if "mean logit difference (95% CI)" in t)
    assert "model <A>'s is the largest: its CI lies above every other model's" in ld
    assert "model B +1.00 [−0.20, +2.00] (shows no clear preference)" in ld
    heads = next(t for t in texts if "L2H1" in t and "direct" in t)
    assert "not every model has a single leading head" in heads and "not separated" in heads
    assert "more than half" not in heads
    # Both separated, both carrying 90%: now the shared sentence, with "more than half".
    b["head_attribution"], b["head_attribution_detail"] = a["head_attribution"], a["head_attribution_detail"]
    _write(runs_dir / "y", b)
    texts = [f.text for f in compare_findings(load_runs([runs_dir / "x", runs_dir / "y"]))]
    heads = next(t for t in texts if "route the direct effect" in t)
    assert "both models route the direct effect through one late head" in heads
    assert "L2H1 in model <A> and L2H1 in model B, carrying 90% / 90%" in heads
    assert "each carries more than half of it" in heads


def test_grid_folders_expand_to_their_finished_cells_and_errors_are_clear(runs_dir: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    grid.mkdir()
    for name in ("a", "b"):
        (grid / name).symlink_to(runs_dir / name)
    (grid / "grid.json").write_text(json.dumps({"cells": [{"folder": "a", "status": "done"},
                                                          {"folder": "b", "status": "skipped"},
                                                          {"folder": "c", "status": "failed"}]}))
    assert [r.label for r in load_runs([grid])] == ["model <A>", "model B"]
    with pytest.raises(LogitlabError, match="no results.json in"):
        load_runs([tmp_path / "nothing"])
    assert main(["compare", str(grid), "--out", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").stat().st_size > 100_000
    assert main(["compare", str(tmp_path / "nothing")]) == 2


def test_compare_in_headless_chromium(runs_dir: Path, tmp_path: Path,
                                      chromium_page: Callable[[Path, int, int, str], Page]) -> None:
    """compare.html renders every figure, stays offline, raises no errors and shows the findings as text."""
    start = time.monotonic()
    out = write_compare(_folders(runs_dir), tmp_path / "compare.html", title="compare <script>alert(1)</script>")
    n_figures = len(compare_figures(load_runs(_folders(runs_dir))))
    tab = chromium_page(out, WIDTH, HEIGHT, "chromium-compare.log")
    browser = tab.browser
    page = tab.evaluate(PAGE_JS)
    time.sleep(0.3)  # late console messages / requests
    browser.screenshot(tab.sid, ARTIFACTS / "compare_full.png",
                       {"x": 0, "y": 0, "width": WIDTH, "height": min(page["height"], 16000)})
    errors = browser.page_errors()
    requests = [e["params"]["request"]["url"] for e in browser.events_named("Network.requestWillBeSent")]
    dialogs = browser.events_named("Page.javascriptDialogOpening")
    assert page["divs"] == n_figures and page["rendered"] == n_figures, page
    assert not errors, f"console errors: {errors}"
    assert not dialogs, f"a JS dialog opened (injection?): {dialogs}"
    assert not [u for u in requests if not u.startswith(ALLOWED_SCHEMES)] and tab.url in requests
    assert page["title"] == "compare <script>alert(1)</script>", "the title is shown as text"
    assert page["sections"][:2] == ["Findings across models", "Runs"] and "Formation" in page["sections"]
    assert "model <A>" in page["text"] and "model B" in page["text"]
    assert len(page["findings"]) >= 4 and page["anchorsOk"]
    assert any("model <A>" in f and "model B" in f for f in page["findings"])
    assert (ARTIFACTS / "compare_full.png").stat().st_size > 10_000
    assert time.monotonic() - start < 60


def _pooled(r: dict[str, Any], final_from: int) -> dict[str, Any]:
    """Give ``r`` a pooled set of generated pairs (30 pairs, CIs) whose final position is restored from layer
    ``final_from`` on, while ``values`` keeps the one explicit pair."""
    rp = r["resid_patching"]
    L, P = len(rp["values"]), len(rp["tokens"])
    z = [[0.9 if l >= final_from and p == P - 1 else 0.0 for p in range(P)] for l in range(L)]
    ci = [[[0.8, 1.0] if l >= final_from and p == P - 1 else [-0.05, 0.05] for p in range(P)] for l in range(L)]
    pooled = {"template": None, "tokens": ["<bos>", "{name}"] + [f"t{i}" for i in range(P - 2)], "values": z,
              "stderr": [[0.02] * P for _ in range(L)], "ci": ci, "n_pairs": 30, "n_excluded": 2,
              "clean_logit_diff": 5.0, "corrupted_logit_diff": -4.0}
    rp["pooled"] = pooled
    rp["per_template"] = [{**pooled, "template": "{} is tall", "n_pairs": 15, "n_excluded": 1}]
    return r


def test_patching_finding_reads_the_pooled_pairs(tmp_path: Path) -> None:
    """A run with generated pairs is quoted on them (30 pairs, templates pooled), not on its one explicit pair,
    and its heatmap opens on them."""
    a = _pooled(synthetic.make_results(n_layers=3, seed=0), final_from=1)
    b = synthetic.make_results(n_layers=3, seed=1)  # the explicit pair only
    a["model"]["name"], b["model"]["name"] = "pooled model", "one-pair model"
    _write(tmp_path / "a", a)
    _write(tmp_path / "b", b)
    runs = load_runs([tmp_path / "a", tmp_path / "b"])
    text = next(f.text for f in compare_findings(runs) if "residual stream" in f.text)
    assert "from layer 1 of 3 (depth 0.33) on in pooled model (30 pairs, templates pooled)" in text
    assert "in one-pair model (1 pair)" in text
    fig = compare_figures(runs)["t0_patch_0"]
    assert [list(row) for row in fig.data[0].z] == a["resid_patching"]["pooled"]["values"]
    assert fig.layout.updatemenus[0].buttons[0].label == "templates pooled"


def test_malformed_run_is_refused_naming_the_key(runs_dir: Path) -> None:
    """A run whose results do not match the schema is an error naming its file and the key."""
    bad = json.loads((runs_dir / "a" / "results.json").read_text(encoding="utf-8"))
    bad["logit_diff"]["ci"] = "wide"
    _write(runs_dir / "bad", bad)
    with pytest.raises(LogitlabError, match=r"bad/results.json.*logit_diff\.ci"):
        load_runs([runs_dir / "bad"])
