"""A model with a final-logit soft-cap (Gemma-2): the DLA check and the findings that quote attributions say that
the attributions decompose the logit difference before the cap, with the capped mean next to it."""

from __future__ import annotations

import re
from typing import Any

from synthetic import make_results

from logitlab.report import build_report
from logitlab.report._util import fmt

ATTRIBUTION_FIGURES = ("layer_attribution", "head_attribution", "logit_lens")


def _capped() -> dict[str, Any]:
    r: dict[str, Any] = dict(make_results())
    r["dla"]["final_logit_softcap"] = 30.0
    r["dla"]["model_capped_mean"] = 0.8 * r["dla"]["model_mean"]
    r["logit_diff"]["mean"] = r["dla"]["model_capped_mean"]
    return r


def _dla_section(html: str) -> str:
    return re.search(r'<section id="dla-check">(.*?)</section>', html, re.S).group(1)  # type: ignore[union-attr]


def test_soft_capped_model_says_attributions_are_pre_cap() -> None:
    r = _capped()
    report = build_report(r)
    dla = r["dla"]
    sentence = (f"the attributions decompose the logit difference before the cap (mean {fmt(dla['model_mean'])}); "
                f"the model's own, capped, mean logit difference is {fmt(dla['model_capped_mean'])}.")
    section = _dla_section(report.html)
    assert "soft-caps its final logits (c = 30)" in section and sentence in section
    assert re.search(r"model's mean logit diff before the soft-cap \(decomposed\)</t[dh]><td>"
                     + re.escape(fmt(dla["model_mean"])), section), section
    assert re.search(r"model's mean logit diff after the soft-cap \(c = 30\)</t[dh]><td>"
                     + re.escape(fmt(dla["model_capped_mean"])), section), section
    by_figure = {f.figure_id: f.text for f in report.findings}
    for fid in ATTRIBUTION_FIGURES:
        assert sentence in by_figure[fid], fid
    dla_finding = next(f.text for f in report.findings if "reconstructs each prompt" in f.text)
    assert f"vs the model's {fmt(dla['model_mean'])} before its soft-cap." in dla_finding and sentence in dla_finding
    # findings that quote no attribution do not
    assert sentence not in by_figure["logit_diff"]


def test_uncapped_model_says_nothing_of_a_cap() -> None:
    report = build_report(make_results())
    assert "soft-cap" not in report.html and not any("soft-cap" in f.text for f in report.findings)
