"""The circuit sections of the report: attribution patching, path patching and the EAP-IG circuit.

Figures build from synthetic data (and are left out with their sections when a key is absent), findings follow
the numbers and withhold claims the CIs do not support, hostile labels stay text, and the report renders in
headless Chromium with the circuit diagram drawn.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitlab.errors import LogitlabError
from logitlab.report import ReportError, build_figures, build_report, key_findings, write_report
from logitlab.report.registry import figure_specs, section
from logitlab.report.sections.atp import ATP_AGREE_R, ATP_POOR_R, atp_verdict
from logitlab.report.sections.circuit import (
    circuit_diagram_figure,
    circuit_edges,
    circuit_faithfulness_figure,
    top_path,
)
from logitlab.report.sections.path_patching import path_patching_figure, sender_paths, separation
from logitlab.results import Results, validate_results
from synthetic import CIRCUIT_KEYS, HOSTILE_LABEL, make_results, with_circuit

FIGURE_KEYS = {"atp_vs_exact": "attribution_patching", "path_patching": "path_patching",
               "circuit_diagram": "circuit", "circuit_faithfulness": "circuit"}
CIRCUIT_SECTIONS = ("attribution-patching", "path-patching", "circuit")
HEADINGS = {key: section(name).title for key, name in zip(CIRCUIT_KEYS, CIRCUIT_SECTIONS)}
CIRCUIT_FIGURES = [f.id for name in CIRCUIT_SECTIONS for f in section(name).figures]


@pytest.fixture
def circ() -> dict[str, Any]:
    """Default synthetic results (3 layers, 4 heads) with the three circuit sections."""
    return with_circuit(make_results())


def _text(results: dict[str, Any], fig_id: str) -> str | None:
    """The finding linked to ``fig_id``, or None."""
    texts = [f.text for f in key_findings(results) if f.figure_id == fig_id]
    assert len(texts) <= 1
    return texts[0] if texts else None


def _headings(html: str) -> list[str]:
    """The section headings of a report, in order."""
    return re.findall(r"<section id=\"[^\"]+\"><h2>([^<]*)</h2>", html)


# ---- figures -------------------------------------------------------------------------------------------------


def test_figures_built_in_registry_order(circ: dict[str, Any]) -> None:
    """All four circuit figures are built, in registry order, with titles, heights and JSON."""
    figs = build_figures(circ)
    assert set(CIRCUIT_FIGURES) <= set(figs)
    assert list(figs) == [f.id for f in figure_specs() if f.id in figs]
    for fid in CIRCUIT_FIGURES:
        fig = figs[fid]
        assert isinstance(fig, go.Figure) and fig.layout.height and fig.layout.title.text, fid
        fig.to_json()


def test_atp_scatter(circ: dict[str, Any]) -> None:
    """One trace per kind plus the diagonal; x = exact, y = AtP; statistics in the legend."""
    fig = build_figures(circ)["atp_vs_exact"]
    ap = circ["attribution_patching"]
    names = [t.name for t in fig.data]
    assert [n.split(" ")[0] for n in names[:4]] == ["heads", "resid", "attn", "mlp"]
    assert names[4] == "AtP = exact" and fig.data[4].x == fig.data[4].y
    heads = fig.data[0]
    assert heads.x[5] == pytest.approx(ap["heads"]["exact"][1][1])  # layer-major: L1H1 of 4 heads
    assert heads.y[5] == pytest.approx(ap["heads"]["atp"][1][1])
    assert heads.customdata[5] == "L1H1"
    assert f"r = {ap['heads']['pearson']:.2f}" in names[0] and "top-10 overlap" in names[0]
    assert "exact %{x" in heads.hovertemplate and "AtP %{y" in heads.hovertemplate


def test_atp_without_exact_is_a_heatmap(circ: dict[str, Any]) -> None:
    """Without exact patching the figure shows the AtP head estimates, and no finding is made."""
    for part in circ["attribution_patching"].values():
        if isinstance(part, dict):
            for k in ("exact", "pearson", "spearman", "top_k", "top_k_overlap", "worst"):
                part.pop(k, None)
    fig = build_figures(circ)["atp_vs_exact"]
    assert fig.data[0].type == "heatmap" and fig.data[0].zmid == 0
    assert "no exact patching" in fig.layout.title.text
    assert _text(circ, "atp_vs_exact") is None


def test_path_patching_facets(circ: dict[str, Any]) -> None:
    """One heatmap per sender on a shared colour axis centred at 0; null cells stay blank; CI on hover."""
    pp = circ["path_patching"]
    fig = build_figures(circ)["path_patching"]
    assert len(fig.data) == len(pp["senders"]) == 5
    assert fig.layout.coloraxis.cmid == 0
    hm = fig.data[0]
    assert list(hm.x)[-2:] == ["MLP", "direct"] and list(hm.y)[-1] == "logits"
    layer, head = pp["sender_heads"][0]
    row = list(hm.y).index(f"L{layer}")
    assert hm.z[row][list(hm.x).index("q H0")] is None  # a receiver in the sender's own layer: no path
    last = list(hm.y).index(f"L{len(pp['v'][0]) - 1}")
    col = list(hm.x).index("v H0")
    assert hm.z[last][col] == pytest.approx(pp["v"][0][-1][0])
    assert "95% CI [" in hm.customdata[last][col][1]
    assert hm.z[-1][-1] == pytest.approx(pp["direct"][0])


def test_grouped_kv_receivers() -> None:
    """Grouped KV heads: key/value columns are groups, the diagram has group nodes, findings name the heads."""
    r = with_circuit(make_results(n_layers=4, n_heads=4), n_kv_heads=2)
    fig = path_patching_figure(r)
    assert "k G1" in fig.data[0].x and "k H2" not in fig.data[0].x
    diagram = circuit_diagram_figure(r)
    labels = {c[0] for t in diagram.data if t.mode == "markers+text" for c in t.customdata}
    assert "L3G0" in labels
    assert "L3G0 (value input of query heads L3H0–H1)" in _text(r, "circuit_diagram")  # type: ignore[operator]


def _shown(fig: go.Figure) -> list[Any]:
    """The traces of the view the diagram opens on."""
    return [t for t in fig.data if t.visible is not False]


def test_diagram_edges_and_nodes(circ: dict[str, Any]) -> None:
    """The chosen circuit's edges are drawn (width and opacity by |score|, blue/red by sign), hoverable at their
    midpoints, the strongest last; a menu offers the faithfulness curve's sizes."""
    fig = build_figures(circ)["circuit_diagram"]
    edges, chosen = circuit_edges(circ["circuit"])
    assert chosen and len(edges) == circ["circuit"]["chosen"]["n_edges"] == 20
    lines = [t for t in _shown(fig) if t.mode == "lines"]
    n_segments = sum(sum(1 for v in t.x if v is None) for t in lines)
    assert n_segments == len(edges)
    widest = max(lines, key=lambda t: t.line.width)
    assert "33,102,172" in widest.line.color  # the top edges are positive
    assert widest is lines[-1], "the strongest edges are drawn on top"
    assert [t.line.width for t in lines] == sorted(t.line.width for t in lines)
    opacity = [float(t.line.color.rsplit(",", 1)[1].rstrip(")")) for t in lines]
    assert opacity[-1] > opacity[0], "weak edges are fainter"
    mids = next(t for t in _shown(fig) if t.mode == "markers" and t.customdata is not None
                and "→" in str(t.customdata[0][0]))
    assert len(mids.x) == len(edges)
    assert mids.customdata[0][0].startswith(edges[0]["sender"])
    assert "the 20 edges chosen" in fig.layout.title.text
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks[0] == "input" and ticks[-1] == "logits"
    menu = fig.layout.updatemenus[0]
    grid = [k for k in circ["circuit"]["faithfulness"]["n_edges"] if k <= 500]
    assert [b.label for b in menu.buttons] == [f"top {k} edges" + (" (chosen)" if k == 20 else "") for k in grid]
    assert menu.buttons[menu.active].label == "top 20 edges (chosen)"
    ranked = sorted(circ["circuit"]["edges"], key=lambda e: -abs(e["score"]))
    for k, b in zip(grid, menu.buttons):  # each button shows exactly its view: the top k edges (the hostile
        shown = [t for t, v in zip(fig.data, b.args[0]["visible"]) if v]  # label cannot be placed)
        placed = k - sum(1 for e in ranked[:k] if e["sender"] == HOSTILE_LABEL)
        assert sum(sum(1 for v in t.x if v is None) for t in shown if t.mode == "lines") == placed
        assert str(k) in b.args[1]["title.text"]


def test_diagram_of_a_large_circuit_opens_small() -> None:
    """A 500-edge circuit opens on its top 50 edges; the menu reaches the whole circuit."""
    r = with_circuit(make_results(n_layers=8), hostile=False)
    c = r["circuit"]
    assert 500 in c["faithfulness"]["n_edges"] and len(c["edges"]) > 500
    c["chosen"]["n_edges"] = 500
    fig = circuit_diagram_figure(r)
    lines = [t for t in _shown(fig) if t.mode == "lines"]
    assert sum(sum(1 for v in t.x if v is None) for t in lines) == 50
    assert "the top 50 of the 500 edges chosen" in fig.layout.title.text
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels[-1] == "top 500 edges (chosen)" and "top 50 edges" in labels


def test_diagram_without_chosen_circuit_draws_top_edges() -> None:
    """No circuit reaches the threshold: the diagram opens on the top 50 edges and says so."""
    r = with_circuit(make_results(), chosen=False)
    fig = circuit_diagram_figure(r)
    assert "Top 50 edges" in fig.layout.title.text and "no circuit chosen" in fig.layout.title.text
    assert sum(sum(1 for v in t.x if v is None) for t in _shown(fig) if t.mode == "lines") == 50


def test_faithfulness_curve(circ: dict[str, Any]) -> None:
    """Log x, the CI bands, the random baseline, the threshold line and the chosen circuit's marker."""
    fig = build_figures(circ)["circuit_faithfulness"]
    fa, ch = circ["circuit"]["faithfulness"], circ["circuit"]["chosen"]
    assert fig.layout.xaxis.type == "log"
    names = [t.name for t in fig.data]
    assert {"random: 95% CI", "random circuits (mean)", "circuit: 95% CI", "top edges by |score|"} <= set(names)
    curve = fig.data[names.index("top edges by |score|")]
    assert list(curve.y) == pytest.approx(fa["recovered"])
    star = fig.data[names.index(f"chosen: {ch['n_edges']} edges")]
    assert star.x[0] == ch["n_edges"] and star.y[0] == pytest.approx(ch["recovered"])
    assert any(s.y0 == pytest.approx(0.8) for s in fig.layout.shapes)


@pytest.mark.parametrize("missing", [(), *((k,) for k in CIRCUIT_KEYS), CIRCUIT_KEYS])
def test_absent_sections_left_out(missing: tuple[str, ...]) -> None:
    """Each absent key drops its figures, section and findings, and nothing else."""
    r = with_circuit(make_results(), keys=tuple(k for k in CIRCUIT_KEYS if k not in missing))
    report = build_report(r)
    headings = _headings(report.html)
    for key in CIRCUIT_KEYS:
        present = key not in missing
        assert (HEADINGS[key] in headings) == present, key
        for fid, fkey in FIGURE_KEYS.items():
            if fkey == key:
                assert (fid in report.figures) == present, fid
                assert any(f.figure_id == fid for f in report.findings) == present, fid
    assert headings[0] == "Key findings" and "Activation patching" in headings
    # the circuit sections follow activation patching, in their own order
    idx = [headings.index(HEADINGS[k]) for k in CIRCUIT_KEYS if k not in missing]
    assert idx == sorted(idx) and all(i > headings.index("Activation patching") for i in idx)


def test_base_results_unchanged() -> None:
    """Results without circuit keys: no circuit section, figure or finding; the TOC lists none."""
    report = build_report(make_results())
    assert not set(CIRCUIT_FIGURES) & set(report.figures)
    assert not any(h in report.html for h in HEADINGS.values())
    assert not any(f.figure_id in CIRCUIT_FIGURES for f in report.findings)


def test_malformed_input_is_an_error(circ: dict[str, Any]) -> None:
    """A malformed circuit section is refused at the report's entry, naming the key, instead of a silent gap."""
    circ["circuit"]["faithfulness"] = {"n_edges": 3, "recovered": None}
    with pytest.raises(LogitlabError, match=r"circuit\.faithfulness"):
        build_report(circ)
    with pytest.raises(ReportError, match=r"figure 'circuit_\w+'"):  # unvalidated: the figure names itself
        build_figures(circ)


def test_readable_at_18_layers() -> None:
    """L = 18, H = 4, S = 5: the path-patching facets and the diagram stay a readable size."""
    r = with_circuit(make_results(n_layers=18, n_heads=4))
    figs = build_figures(r)
    pp = figs["path_patching"]
    assert len(pp.data) == 5 and pp.layout.height <= 1400
    assert all(len(h.x) == 4 * 3 + 2 for h in pp.data)  # q, k, v per head, MLP, direct
    assert figs["circuit_diagram"].layout.height <= 600


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_layers=st.integers(1, 5), n_heads=st.sampled_from([1, 2, 4]), groups=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000), chosen=st.booleans())
def test_any_shape(n_layers: int, n_heads: int, groups: int, seed: int, chosen: bool) -> None:
    """For any shape the circuit figures build and their findings contain no missing numbers."""
    if n_heads % groups:
        groups = 1
    r = with_circuit(make_results(n_layers, n_heads, seed=seed), seed=seed, n_kv_heads=n_heads // groups,
                     chosen=chosen)
    for builder in (circuit_diagram_figure, circuit_faithfulness_figure, path_patching_figure):
        builder(r).to_json()
    texts = [f.text for f in key_findings(r) if f.figure_id in CIRCUIT_FIGURES]
    assert texts
    assert not any("n/a" in t or "nan" in t.lower().split() for t in texts)


# ---- findings ------------------------------------------------------------------------------------------------


def test_faithfulness_finding(circ: dict[str, Any]) -> None:
    """The chosen circuit's recovery with its CI and the random baseline's; "above random" only without overlap."""
    ch = circ["circuit"]["chosen"]
    ch.update(n_edges=40, recovered=0.85, recovered_ci=[0.80, 0.90], random_mean=0.02, random_ci=[-0.03, 0.06])
    text = _text(circ, "circuit_faithfulness")
    assert text is not None
    assert "The 40-edge circuit" in text and "recovers 85% [80, 90] of the clean − corrupted gap" in text
    assert "random circuits of that size: 2% [−3, 6]" in text and "above the random circuits'" in text
    assert "reaches below" not in text
    ch.update(recovered=0.82, recovered_ci=[0.70, 0.94], random_mean=0.5, random_ci=[0.4, 0.75])
    text = _text(circ, "circuit_faithfulness")
    assert "above the random" not in text and "its CI reaches below the 80% threshold" in text  # type: ignore[operator]


def test_no_circuit_reaches_threshold() -> None:
    """Without a chosen circuit the sentence says none reaches the threshold and claims no circuit."""
    r = with_circuit(make_results(), chosen=False)
    text = _text(r, "circuit_faithfulness")
    assert text is not None and text.startswith("No circuit on the grid, not even all")
    assert "-edge circuit" not in text and "reaches the 80% threshold" in text
    fa = r["circuit"]["faithfulness"]
    fa["recovered"][-1] = 0.99  # every edge together does reach it
    assert _text(r, "circuit_faithfulness").startswith("No circuit smaller than all")  # type: ignore[union-attr]
    assert "No circuit was chosen" in _text(r, "circuit_diagram")  # type: ignore[operator]


def test_metric_check_flagged(circ: dict[str, Any]) -> None:
    """A full graph far from 1 (or an empty one far from 0) is flagged."""
    assert "Check the metric" not in _text(circ, "circuit_faithfulness")  # type: ignore[operator]
    circ["circuit"]["full"] = 0.7
    assert "Check the metric: the full graph scores 0.70" in _text(circ, "circuit_faithfulness")  # type: ignore[operator]


def test_top_path_chain(circ: dict[str, Any]) -> None:
    """The planted chain is named with every edge's score; no chain through an edge that is missing or ~0."""
    text = _text(circ, "circuit_diagram")
    assert text is not None
    assert "top edge by |EAP-IG score| is L2H0 → logits (+0.31 [0.29, 0.33])" in text
    assert "the path input → L0H0 (query input) → L2H0 (value input) → logits" in text
    assert "overlaps the next edge's" not in text
    edges = circ["circuit"]["edges"]
    middle = next(e for e in edges if (e["sender"], e["receiver"], e["input"]) == ("L0H0", "L2H0", "v"))
    middle["score_ci"] = [-0.01, 0.51]  # not distinguishable from 0: the chain must not use it
    text = _text(circ, "circuit_diagram")
    assert "L0H0 (query input) → L2H0 (value input)" not in text  # type: ignore[operator]
    edges.remove(middle)  # not in the circuit at all
    chain = top_path(circ["circuit"], 1)
    assert ("L0H0", "L2H0") not in [(e["sender"], e["receiver"]) for e in chain]
    assert "L0H0 (query input) → L2H0" not in _text(circ, "circuit_diagram")  # type: ignore[operator]


def test_top_edge_ci_including_zero_claims_no_path(circ: dict[str, Any]) -> None:
    """When the top edge's CI includes 0, no path is claimed; overlapping CIs with the next edge are flagged."""
    edges = circ["circuit"]["edges"]
    edges[0]["score_ci"] = [edges[1]["score"] - 0.01, edges[0]["score"] + 0.01]
    assert "overlaps the next edge's" in _text(circ, "circuit_diagram")  # type: ignore[operator]
    edges[0]["score_ci"] = [-0.05, 0.6]
    text = _text(circ, "circuit_diagram")
    assert text is not None and "includes 0: no path is claimed" in text and "path input" not in text


def test_path_patching_largest_only_when_separated(circ: dict[str, Any]) -> None:
    """"Largest path" only when its CI lies above every other path's; otherwise the tied paths are named."""
    pp = circ["path_patching"]
    text = _text(circ, "path_patching")
    assert text is not None
    s0 = pp["senders"][0]
    assert f"{s0}'s largest path runs through L2H0's value input: 0.45 [0.42, 0.48]" in text
    assert f"{pp['senders'][1]} has no single largest path" in text and "are not separated at 95%" in text
    # A second path of sender 0 whose CI overlaps the top one's: no single largest path any more.
    pp["direct"][0], pp["direct_ci"][0] = 0.40, [0.36, 0.44]
    text = _text(circ, "path_patching")
    assert f"{s0}'s largest path" not in text and f"{s0} has no single largest path" in text  # type: ignore[operator]
    assert "direct to the logits (0.40 [0.36, 0.44])" in text  # type: ignore[operator]
    top, tied, separated = separation(sender_paths(pp, 0))  # type: ignore[misc]
    assert not separated and [p.kind for p in tied] == ["direct"]


def test_path_patching_nothing_distinguishable_from_zero(circ: dict[str, Any]) -> None:
    """A sender whose largest path's CI includes 0 gets no path claim."""
    pp = circ["path_patching"]
    pp["v_ci"][0][-1][0] = [-0.1, 1.0]
    text = _text(circ, "path_patching")
    assert f"no path of {pp['senders'][0]} is distinguishable from 0" in text  # type: ignore[operator]


def _set_atp(results: dict[str, Any], kind: str, pearson: float, overlap: float) -> None:
    part = results["attribution_patching"][kind]
    part.update(pearson=pearson, spearman=pearson, top_k=10, top_k_overlap=overlap)


def test_atp_agreement_verdicts(circ: dict[str, Any]) -> None:
    """Agrees / roughly tracks / misses by the documented thresholds; never "agrees" when poorly correlated."""
    for kind in ("resid", "attn", "mlp"):
        circ["attribution_patching"][kind]["exact"] = []  # heads only
        circ["attribution_patching"][kind]["pearson"] = None
    _set_atp(circ, "heads", 0.93, 0.8)
    text = _text(circ, "atp_vs_exact")
    assert text is not None and text.startswith("AtP agrees with exact patching on heads (r = 0.93")
    assert "top-10 overlap 8/10" in text and "trust" not in text
    _set_atp(circ, "heads", 0.4, 0.3)
    text = _text(circ, "atp_vs_exact")
    assert "agrees" not in text and "misses exact patching on heads" in text  # type: ignore[operator]
    assert "do not trust AtP for heads" in text and "its largest miss is L" in text  # type: ignore[operator]
    _set_atp(circ, "heads", 0.95, 0.3)  # well correlated but the top components differ
    assert "misses" in _text(circ, "atp_vs_exact")  # type: ignore[operator]
    _set_atp(circ, "heads", 0.8, 0.8)
    text = _text(circ, "atp_vs_exact")
    assert "only roughly tracks" in text and "agrees" not in text  # type: ignore[operator]
    assert atp_verdict({"pearson": ATP_AGREE_R, "top_k": 10, "top_k_overlap": 0.7}) == "agrees"
    assert atp_verdict({"pearson": ATP_POOR_R - 1e-9, "top_k": 10, "top_k_overlap": 1.0}) == "misses"
    assert atp_verdict({"pearson": None, "top_k": 10, "top_k_overlap": 1.0}) is None


def test_atp_mixed_kinds(circ: dict[str, Any]) -> None:
    """The synthetic AtP is close on heads and positions and poor on MLP outputs: both are said."""
    text = _text(circ, "atp_vs_exact")
    assert text is not None and text.startswith("AtP agrees with exact patching on heads")
    assert "misses exact patching on MLP outputs" in text and "do not trust AtP for MLP outputs" in text


def test_findings_link_to_built_figures(circ: dict[str, Any]) -> None:
    """Every finding links to a figure of the report; the circuit adds its four."""
    report = build_report(circ)
    ids = [f.figure_id for f in report.findings]
    assert set(CIRCUIT_FIGURES) <= set(ids)
    assert all(i in report.figures for i in ids)
    for f in report.findings:
        assert f'href="#fig-{f.figure_id}"' in report.html


def test_reads_the_atp_analysis_layout() -> None:
    """The report reads what :meth:`logitlab.analyses.atp.AtPResult.to_dict` writes, with and without exact."""
    import torch

    from logitlab.analyses.atp import AtPResult, AtPSummary, Comparison, Miss

    gen = torch.Generator().manual_seed(0)
    tokens = tuple(make_results()["resid_patching"]["tokens"])

    def summary(what: str, pearson: float | None, compared: bool = True) -> AtPSummary:
        width = 4 if what == "heads" else len(tokens)
        atp = torch.randn(3, width, generator=gen)
        comparison = Comparison(pearson, pearson, 10, 0.8, (Miss("L1H2" if what == "heads" else
                                                                 "L1 pos 2 '</script>'", 0.5, 0.1),))
        return AtPSummary(what, "all" if what == "heads" else "reference", () if what == "heads" else tokens, 4,
                          atp, atp + 0.01 if compared else None, comparison if compared else None, compared)

    r = make_results()
    r["attribution_patching"] = AtPResult(None, (), summary("heads", 0.95), summary("resid", 0.97),  # type: ignore[typeddict-unknown-key]
                                          summary("attn", 0.5), summary("mlp", 0.96)).to_dict()
    report = build_report(r)
    assert [t.type for t in report.figures["atp_vs_exact"].data] == ["scatter"] * 5
    text = _text(r, "atp_vs_exact")
    assert text is not None and "agrees with exact patching on heads" in text
    assert "misses exact patching on attention outputs" in text and "L1 pos 2 '</script>'" in text
    assert "L1 pos 2 &#x27;&lt;/script&gt;&#x27;" in report.html
    r["attribution_patching"] = AtPResult(None, (), *(summary(w, None, compared=False)  # type: ignore[typeddict-unknown-key]
                                                      for w in ("heads", "resid", "attn", "mlp"))).to_dict()
    assert build_figures(r)["atp_vs_exact"].data[0].type == "heatmap"
    assert _text(r, "atp_vs_exact") is None


# ---- escaping ------------------------------------------------------------------------------------------------


def test_hostile_labels_escaped(circ: dict[str, Any]) -> None:
    """A hostile sender/node label and hostile tokens are text in the HTML, the tables and the figures."""
    assert circ["path_patching"]["senders"][2] == HOSTILE_LABEL
    assert any(e["sender"] == HOSTILE_LABEL for e in circ["circuit"]["edges"])
    circ["circuit"]["chosen"]["n_edges"] = len(circ["circuit"]["edges"])  # the hostile edge is in the circuit
    report = build_report(circ)
    html = report.html
    assert "<img" not in html and "<script>alert(1)</script>" not in html
    assert "L0H1&lt;img src=x onerror=alert(1)&gt;" in html  # the sender table
    for fid in CIRCUIT_FIGURES:
        blob = report.figures[fid].to_json()
        assert "<img" not in blob and "<script" not in blob and "</script" not in blob, fid
    titles = [a.text for a in report.figures["path_patching"].layout.annotations]
    assert any("L0H1&lt;img src=x onerror=alert(1)&gt;" in t for t in titles)
    diagram = report.figures["circuit_diagram"]
    assert any("unrecognised node names" in a.text for a in diagram.layout.annotations)


def test_hostile_tokens_in_atp_labels(circ: dict[str, Any]) -> None:
    """Position labels built from hostile tokens are escaped in the scatter's hover and the miss table."""
    resid = circ["attribution_patching"]["resid"]
    resid["worst"][0]["label"] = "L1 pos 2 '</script><script>alert(1)</script>'"
    report = build_report(circ)
    assert "</script><script>alert(1)" not in report.html
    assert "L1 pos 2 &#x27;&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;" in report.html
    scatter = report.figures["atp_vs_exact"].data[1]
    assert any("&lt;/script&gt;" in c for c in scatter.customdata)


# ---- schema ----------------------------------------------------------------------------------------------------


def test_synthetic_matches_results_types_when_defined() -> None:
    """Once logitlab.results defines the circuit sections, the synthetic data must validate against them."""
    defined = [k for k in CIRCUIT_KEYS if k in Results.__annotations__]
    if not defined:
        pytest.skip("logitlab.results does not define the circuit sections yet")
    validate_results(with_circuit(make_results(), keys=tuple(defined)))


def test_with_circuit_copies(results: dict[str, Any]) -> None:
    """with_circuit leaves its input alone and adds exactly the requested keys."""
    before = copy.deepcopy(results)
    out = with_circuit(results, keys=("circuit",))
    assert results == before
    assert set(out) - set(results) == {"circuit"}
    json.dumps(out, allow_nan=False)


# ---- browser ---------------------------------------------------------------------------------------------------

DIAGRAM_JS = """
(() => {
  const d = document.getElementById('plot-circuit_diagram');
  return {traces: d ? d.querySelectorAll('.scatterlayer .trace').length : 0,
          paths: d ? d.querySelectorAll('.scatterlayer .trace path.js-line').length : 0,
          labels: d ? [...d.querySelectorAll('.scatterlayer .textpoint text')].map(t => t.textContent) : [],
          sections: [...document.querySelectorAll('section > h2')].map(h => h.textContent),
          toc: [...document.querySelectorAll('nav.toc a')].map(a => a.textContent),
          rect: d ? (r => ({y: r.y + window.scrollY, height: r.height}))(d.getBoundingClientRect()) : null};
})()
"""


def test_circuit_report_in_headless_chromium(tmp_path: Path) -> None:
    """The report with circuit sections renders every figure without JS errors and draws the diagram."""
    from cdp import Chromium
    from cdp import require_chromium
    from test_browser import ARTIFACTS, CHROMIUM, COUNT_PLOTS_JS, HEIGHT, WIDTH, _wait

    require_chromium()
    start = time.monotonic()
    results = with_circuit(make_results(n_layers=6, n_heads=4), n_kv_heads=2)
    n_figures = len(build_figures(results))
    report = write_report(tmp_path / "out", results=results, static=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with Chromium(CHROMIUM, tmp_path / "profile", ARTIFACTS / "chromium_circuit.log",
                  (f"--window-size={WIDTH},{HEIGHT}",)) as browser:
        sid = browser.open_page(report.resolve().as_uri(), WIDTH, HEIGHT)
        plots = _wait(lambda: (lambda r: r if r["rendered"] == r["divs"] else None)(
            browser.evaluate(sid, COUNT_PLOTS_JS)), 20, "all plotly figures to render")
        dom = browser.evaluate(sid, DIAGRAM_JS)
        time.sleep(0.3)
        if dom["rect"]:
            browser.screenshot(sid, ARTIFACTS / "circuit_diagram.png",
                               {"x": 0, "y": max(0, dom["rect"]["y"] - 40), "width": WIDTH,
                                "height": dom["rect"]["height"] + 60})
        errors = browser.page_errors()
        dialogs = browser.events_named("Page.javascriptDialogOpening")
    assert not errors, f"console errors: {errors}"
    assert not dialogs, f"a JS dialog opened (injection?): {dialogs}"
    assert plots["divs"] == n_figures
    for heading in HEADINGS.values():
        assert heading in dom["sections"] and heading in dom["toc"]
    assert dom["traces"] >= 4 and dom["paths"] >= 2, dom
    assert {"input", "logits"} <= set(dom["labels"])
    assert (ARTIFACTS / "circuit_diagram.png").stat().st_size > 5_000
    assert time.monotonic() - start < 55.0
