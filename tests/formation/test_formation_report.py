"""The formation report: figures, findings from numbers, one self-contained and escaped HTML file."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from logitlab.formation.report import (
    formation_figures, formation_findings, render_formation_report, write_formation_report,
)

HOSTILE = "<script>alert(1)</script> & \"toy\""


def _synthetic(steps: list[int], lds: list[float], heldout: bool = True) -> dict[str, Any]:
    """A small formation results dict: 2 layers × 2 heads, head 1.0 growing with the logit difference."""
    cks = []
    for s, ld in zip(steps, lds):
        cks.append({"step": s, "logit_diff_mean": ld, "logit_diff_stderr": 0.1, "accuracy": 1.0 if ld > 0.5 else 0.5,
                    "loss_mean": 1.0, "layer_attribution": {"labels": ["embed", "0_attn_out", "1_mlp_out"],
                                                            "values": [0.0, ld / 4, 3 * ld / 4]},
                    "head_attribution": [[0.0, 0.01], [ld / 4, -0.02]],
                    "zero_ablation_effect": [[-ld, 0.0], [-ld / 4, 0.0]],
                    "top_heads_ablation": [{"layer": 1, "head": 0, "attribution": ld / 4, "effect": -ld / 4}],
                    "resid_patching_summary": None})
    return {"kind": "formation", "logitlab_version": "0.1.0", "model": {"name": "toy"},
            "task": {"name": "toy-heldout", "prompts": ["a", "b"], "description": "held out"}, "heldout": heldout,
            "checkpoints": cks, "top_heads": [{"layer": 1, "head": 0, "final_attribution": lds[-1] / 4,
                                               "final_ablation_effect": -lds[-1] / 4}],
            "switch_on": [{"layer": 1, "head": 0, "step": 100}],
            "ablation_heads": [{"layer": 0, "head": 0, "final_ablation_effect": -lds[-1], "final_attribution": 0.0}],
            "ablation_switch_on": [{"layer": 0, "head": 0, "step": 100}],
            "definitions": {"switch_on": "x"}}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.attrs: list[tuple[str, dict[str, str | None]]] = []
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs.append((tag, dict(attrs)))
        self._script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._script = False

    def handle_data(self, data: str) -> None:
        if not self._script:
            self.text.append(data)


def test_findings_come_from_the_numbers() -> None:
    res = _synthetic([0, 1, 10, 100, 1000], [0.01, 0.02, 0.4, 2.5, 6.0])
    text = "\n".join(formation_findings(res))
    assert "starts at +0.01 (step 0" in text and "ends at +6.00 (step 1000" in text
    assert "first exceeds 1 at step 100" in text
    assert "Top head 1.0" in text and "switches on at step 100" in text
    assert "head 0.0" in text and "acts indirectly" in text
    assert "1_mlp_out" in text and "generalises" in text
    never = "\n".join(formation_findings(_synthetic([0, 10], [0.0, 0.3])))
    assert "never exceeds 1" in never and "does not generalise" in never
    assert "do not measure generalisation" in "\n".join(formation_findings(_synthetic([0, 10], [0, 3], heldout=False)))


def test_figures() -> None:
    res = _synthetic([0, 1, 10, 100], [0.0, 0.1, 1.5, 3.0])
    figs = formation_figures(res)
    assert set(figs) == {"logit_diff", "heads", "head_heatmap", "layers"}
    ld = figs["logit_diff"]
    assert ld.layout.xaxis.type == "log" and list(ld.data[0].x) == [1, 2, 11, 101]  # step + 1 on a log axis
    assert ld.layout.xaxis.ticktext[0] == "0" and list(ld.data[1].y) == [0.5, 0.5, 1.0, 1.0]  # accuracy
    heat = figs["head_heatmap"]
    assert list(heat.data[0].y) == ["0.0", "0.1", "1.0", "1.1"] and list(heat.data[0].x) == ["0", "1", "10", "100"]


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    res = _synthetic([0, 1, 10, 100], [0.0, 0.1, 1.5, 3.0])
    res["task"]["name"] = HOSTILE
    res["model"]["name"] = "<b>model</b>"
    res["task"]["description"] = HOSTILE
    for c in res["checkpoints"]:
        c["layer_attribution"]["labels"][2] = "</script><img src=x onerror=alert(2)>"
    path = write_formation_report(tmp_path, copy.deepcopy(res))
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.count(get_plotlyjs()) == 1
    rest = page.replace(get_plotlyjs(), "")
    assert not re.search(r"https?://", rest), re.findall(r"https?://\S{0,40}", rest)
    assert "<link" not in rest.lower() and "default-src 'none'" in page
    parser = _Collector()
    parser.feed(page)
    for tag, attrs in parser.attrs:
        assert "src" not in attrs or tag != "script"
        assert tag not in ("img", "link", "iframe")
    assert "<script>alert(1)</script>" not in page and "<b>model</b>" not in page and "onerror=alert(2)>" not in page
    text = "".join(parser.text)
    assert HOSTILE in text and "<b>model</b>" in text  # shown literally, as text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # atomic: no temporary file left


def test_report_of_real_results(tiny_formation: tuple[Path, dict[str, Any]]) -> None:
    out, res = tiny_formation
    page = render_formation_report(res)
    assert "Circuit formation: toy-heldout" in page and "held out" in page
    assert len(formation_figures(res)["heads"].data) >= 2 * len(res["top_heads"])
