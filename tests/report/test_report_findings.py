"""Key findings are generated from the numbers, link to existing figures, and follow the data."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitlab.report import Finding, build_figures, key_findings
from synthetic import make_results


def _by_figure(findings: list[Finding], fig_id: str) -> list[str]:
    """Texts of the findings linked to ``fig_id``."""
    return [f.text for f in findings if f.figure_id == fig_id]


def test_findings_basic(results: dict[str, Any]) -> None:
    """4–9 findings, frozen, each linked to a figure that exists."""
    findings = key_findings(results)
    assert 4 <= len(findings) <= 9
    figs = build_figures(results)
    for f in findings:
        assert isinstance(f, Finding) and f.text.strip()
        assert f.figure_id in figs
    with pytest.raises(dataclasses.FrozenInstanceError):
        findings[0].text = "x"  # type: ignore[misc]


def test_logit_diff_numbers_from_results(results: dict[str, Any]) -> None:
    """The headline sentence reports the actual mean, accuracy and ratio."""
    results["logit_diff"].update(mean=3.14159, stderr=0.2718, accuracy=0.5,
                                 prob_ratio_of_mean=23.14, ci=[2.61, 3.67])
    text = _by_figure(key_findings(results), "logit_diff")[0]
    assert "3.14" in text and "0.27" in text and "50%" in text and "23.1" in text and "[2.61, 3.67]" in text
    results["logit_diff"].update(mean=-1.5, ci=[-2.0, -1.0])
    assert "prefers the incorrect answer" in _by_figure(key_findings(results), "logit_diff")[0]


def test_dominant_layer_changes_sentence(results: dict[str, Any]) -> None:
    """Swapping which component dominates changes the layer-attribution sentence."""
    la = results["layer_attribution"]
    n = len(la["values"])
    i0, i1 = la["labels"].index("0_attn_out"), la["labels"].index("2_mlp_out")
    la["values"] = [0.01] * n
    la["values"][i0] = 5.0
    first = _by_figure(key_findings(results), "layer_attribution")[0]
    la["values"][i0], la["values"][i1] = 0.01, 5.0
    second = _by_figure(key_findings(results), "layer_attribution")[0]
    assert first != second
    assert "0_attn_out (+5.00)" in first and "2_mlp_out" not in first
    assert "2_mlp_out (+5.00)" in second and "0_attn_out" not in second


def test_top_heads_sentence(results: dict[str, Any]) -> None:
    """The top head by |attribution| is named with its share."""
    results["head_attribution"] = [[0.0] * 4 for _ in range(3)]
    results["head_attribution"][1][3] = -2.0
    results["head_attribution"][0][0] = 1.0
    text = _by_figure(key_findings(results), "head_attribution")[0]
    assert text.index("L1H3 (−2.00)") < text.index("L0H0 (+1.00)")
    assert "100%" in text


def _patching(results: dict[str, Any], values: list[list[float]]) -> str | None:
    """The resid-patching finding for the given values (None if no such finding)."""
    results["resid_patching"]["values"] = values
    texts = _by_figure(key_findings(results), "resid_patching")
    return texts[0] if texts else None


def test_resid_patching_only_when_supported(results: dict[str, Any]) -> None:
    """'Moves' only when both ends cross the threshold; nothing when no position does."""
    P = len(results["resid_patching"]["tokens"])
    low = [[0.1] * P for _ in range(3)]
    assert _patching(results, low) is None
    moving = [[0.0] * P for _ in range(3)]
    moving[0][1] = moving[1][1] = 0.9
    moving[2][-1] = 0.95
    text = _patching(results, moving)
    assert text is not None and "moves" in text and "“Mary” (position 1)" in text
    assert "layers 0–1" in text and "layer 2" in text
    final_only = [[0.0] * P for _ in range(3)]
    final_only[2][-1] = 0.8
    text = _patching(results, final_only)
    assert text is not None and "only at the final position" in text and "moves" not in text
    early_only = [[0.0] * P for _ in range(3)]
    early_only[0][1] = 0.8
    text = _patching(results, early_only)
    assert text is not None and "moves" not in text and "no layer's final position" in text


def test_ablation_sentence(results: dict[str, Any]) -> None:
    """The worst ablation is named with its drop; no claim when nothing hurts."""
    text = " ".join(f.text for f in key_findings(results))
    assert "Zero-ablating L2H3 hurts most" in text
    base = results["head_ablation"]["baseline_logit_diff"]
    for kind in ("zero", "mean"):
        results["head_ablation"][kind]["logit_diff"] = [[base + 0.1] * 4 for _ in range(3)]
    findings = key_findings(results)
    assert any("No single head ablation" in f.text for f in findings)
    assert not any("hurts most" in f.text for f in findings)


def test_unembed_bias_sentences() -> None:
    """Bias present: its odds; absent: says the model has none."""
    with_bias = _by_figure(key_findings(make_results()), "unembed_bias")[0]
    assert "favours “ she” over “ he”" in with_bias and "1.13" in with_bias
    without = _by_figure(key_findings(make_results(unembed_bias=False)), "unembed_bias")[0]
    assert "no unembedding bias" in without


def test_partial_results() -> None:
    """Missing analyses give fewer findings, never errors."""
    r = make_results()
    only = {k: r[k] for k in ("schema_version", "task", "logit_diff")}
    findings = key_findings(only)
    assert [f.figure_id for f in findings] == ["logit_diff"]
    assert key_findings({}) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_layers=st.integers(1, 6), n_heads=st.integers(1, 6), n_prompts=st.integers(1, 8),
    n_pos=st.integers(3, 12), seed=st.integers(0, 10_000), post_norm=st.booleans(),
    bias=st.booleans(),
)
def test_findings_any_shape(n_layers: int, n_heads: int, n_prompts: int, n_pos: int, seed: int,
                            post_norm: bool, bias: bool) -> None:
    """For any consistent results, findings are within bounds and link to built figures."""
    r = make_results(n_layers, n_heads, n_prompts, n_pos, seed, post_norm=post_norm,
                     unembed_bias=bias)
    findings = key_findings(r)
    figs = build_figures(r)
    assert 4 <= len(findings) <= 9
    # every finding links to a figure; without an unembedding bias its sentence links to the section's paragraph
    assert all(f.figure_id in figs or (f.figure_id == "unembed_bias" and not bias) for f in findings)
    assert not any(re.search(r"\bnan\b|n/a", f.text.lower()) for f in findings)


def test_preference_claimed_only_beyond_two_standard_errors() -> None:
    from logitlab.report import key_findings
    from tests.report.synthetic import make_results
    res = make_results()
    res["logit_diff"].update(mean=0.2, stderr=0.6, ci=[-0.9, 1.3])
    text = key_findings(res)[0].text
    assert "no clear preference" in text and "prefers the correct" not in text
    res["logit_diff"].update(mean=3.0, stderr=0.4, ci=[2.2, 3.8])
    assert "prefers the correct answer" in key_findings(res)[0].text
    res["logit_diff"].update(mean=-3.0, stderr=0.4, ci=[-3.8, -2.2])
    assert "prefers the incorrect answer" in key_findings(res)[0].text
    # Two standard errors from 0 but a CI that touches 0 (a skewed sample): no claim.
    res["logit_diff"].update(mean=1.0, stderr=0.4, ci=[-0.05, 1.9])
    assert "no clear preference" in key_findings(res)[0].text
    del res["logit_diff"]["ci"]  # without a CI: two standard errors
    assert "prefers the correct answer" in key_findings(res)[0].text
