"""Figures built from synthetic results."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pytest

from logitlab.report import build_figures
from logitlab.report import ReportError
from logitlab.report.registry import figure_specs
from synthetic import make_results

EXPECTED = {
    "logit_diff", "logit_lens", "layer_attribution", "head_attribution", "head_attribution_naive",
    "head_ablation_zero_logit_diff", "head_ablation_zero_loss", "head_ablation_mean_logit_diff",
    "head_ablation_mean_loss", "resid_patching", "attn_patching", "mlp_patching",
    "head_patching", "unembed_bias", "robustness",
}
HEATMAPS = EXPECTED - {"logit_diff", "logit_lens", "layer_attribution", "unembed_bias", "robustness"}


def test_every_figure_built(results: dict[str, Any]) -> None:
    """All figure ids are built, in registry order, and serialise to JSON."""
    figs = build_figures(results)
    assert set(figs) == EXPECTED
    assert list(figs) == [f.id for f in figure_specs() if f.id in figs]
    for fig in figs.values():
        assert isinstance(fig, go.Figure)
        assert fig.layout.height and fig.layout.title.text
        fig.to_json()


def test_heatmaps_diverging_centred(results: dict[str, Any]) -> None:
    """Every heatmap uses a diverging scale centred at 0."""
    figs = build_figures(results)
    for fid in HEATMAPS:
        hm = figs[fid].data[0]
        assert hm.type == "heatmap", fid
        assert hm.zmid == 0, fid
        names = [c[1] for c in hm.colorscale]
        assert names == [c[1] for c in go.Heatmap(colorscale="RdBu").colorscale], fid


def test_ablation_centred_at_baseline(results: dict[str, Any]) -> None:
    """Ablation heatmaps plot value − baseline and say so in the colour-bar title."""
    figs = build_figures(results)
    ab = results["head_ablation"]
    for kind in ("zero", "mean"):
        for metric, base_key in (("logit_diff", "baseline_logit_diff"), ("loss", "baseline_loss")):
            hm = figs[f"head_ablation_{kind}_{metric}"].data[0]
            raw = ab[kind][metric]
            assert hm.z[1][2] == pytest.approx(raw[1][2] - ab[base_key])
            title = hm.colorbar.title.text
            assert "baseline" in title and "Δ" in title


def test_position_ticks_unique_and_escaped(results: dict[str, Any]) -> None:
    """Patching x labels are unique "i: token" strings, escaped for plotly's pseudo-HTML."""
    figs = build_figures(results)
    tokens = results["resid_patching"]["tokens"]
    assert len(set(tokens)) < len(tokens)
    for fid in ("resid_patching", "attn_patching", "mlp_patching"):
        x = list(figs[fid].data[0].x)
        assert len(x) == len(set(x)) == len(tokens)
        assert all(lbl.startswith(f"{i}: ") for i, lbl in enumerate(x))
        pos = tokens.index("</script>")
        assert x[pos] == f"{pos}: &lt;/script&gt;"
        assert not any("<" in lbl for lbl in x)


def test_stderr_shown(results: dict[str, Any]) -> None:
    """Figures averaging over prompts show the standard error."""
    figs = build_figures(results)
    la = figs["layer_attribution"].data[0]
    assert list(la.error_y.array) == pytest.approx(results["layer_attribution"]["stderr"])
    lens = figs["logit_lens"]
    assert lens.data[0].fill == "toself"
    n = len(results["logit_lens"]["values"])
    assert lens.data[0].y[0] == pytest.approx(
        results["logit_lens"]["values"][0] + results["logit_lens"]["stderr"][0])
    assert len(lens.data[0].y) == 2 * n
    ld = figs["logit_diff"]
    rect = [s for s in ld.layout.shapes if s.type == "rect"][0]
    mean, se = results["logit_diff"]["mean"], results["logit_diff"]["stderr"]
    assert (rect.y0, rect.y1) == pytest.approx((mean - se, mean + se))
    assert any("stderr" in a.text for a in ld.layout.annotations)


def test_absent_and_null_keys_skipped() -> None:
    """A figure whose input is absent or null is skipped."""
    r = make_results(post_norm=False)
    del r["head_ablation"]
    r["head_patching"] = None
    r["attn_patching"] = None
    figs = build_figures(r)
    assert "head_attribution_naive" not in figs
    assert not any(k.startswith("head_ablation") for k in figs)
    assert "head_patching" not in figs and "attn_patching" not in figs
    assert "resid_patching" in figs
    assert build_figures({}) == {}


def test_malformed_input_is_an_error_naming_the_key(results: dict[str, Any]) -> None:
    """Malformed input for a figure is an error naming the figure and its key, not a silently missing figure."""
    results["resid_patching"] = {"tokens": ["a"], "values": 3}
    with pytest.raises(ReportError, match="'resid_patching'.*malformed 'resid_patching'"):
        build_figures(results)


def test_unembed_bias_absent_no_figure() -> None:
    """Without an unembedding bias there is nothing to plot: no figure (with one: b_U of both answers)."""
    assert "unembed_bias" not in build_figures(make_results(unembed_bias=False))
    fig = build_figures(make_results())["unembed_bias"]
    assert len(fig.data[0].y) == 2 and "difference" in fig.layout.title.text
