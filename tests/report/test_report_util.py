"""The report's shared reader of a screened section's ``method`` matrix, and the sections that use it."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from logitlab.report._util import estimated_mask
from logitlab.report.compare_runs import top_ablation_heads
from logitlab.report.sections.ablation import _exact_cells, _n_exact
from logitlab.report.sections.patching import _estimated_cells, _estimated_note
from synthetic import make_results


def test_mask_is_true_where_a_cell_is_not_exact() -> None:
    part = {"method": [["exact", "estimated", "exact"], ["estimated", "estimated", "exact"]]}
    assert estimated_mask(part) == [[False, True, False], [True, True, False]]
    assert estimated_mask({"method": [["exact"] * 2] * 3}) == [[False, False]] * 3


@pytest.mark.parametrize("part", [{}, {"method": None}, {"method": []}, {"method": "exact"},
                                  {"method": ["exact", "estimated"]}, None, ["exact"]])
def test_no_method_matrix_reads_as_every_cell_exact(part: object) -> None:
    assert estimated_mask(part) is None


def _screened(seed: int) -> tuple[dict, list[list[bool]]]:
    """Synthetic results whose zero-ablation and residual patching carry the same random ``method`` matrix."""
    r = make_results(seed=seed)
    zero = r["head_ablation"]["zero"]
    L, H = len(zero["logit_diff"]), len(zero["logit_diff"][0])
    est = (np.random.default_rng(seed).random((L, H)) < 0.4).tolist()
    zero["method"] = [["estimated" if e else "exact" for e in row] for row in est]
    return r, est


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sections_and_compare_leave_out_the_same_cells(seed: int) -> None:
    r, est = _screened(seed)
    zero = r["head_ablation"]["zero"]
    n_est = sum(map(sum, est))
    assert 0 < n_est < len(est) * len(est[0]), "the seed must give some estimated and some exact heads"
    exact = {(l, h) for l, row in enumerate(est) for h, e in enumerate(row) if not e}

    assert _n_exact(zero) == (len(exact), len(exact) + n_est)
    assert {(l, h) for _, l, h in _exact_cells(zero, "logit_diff")} == exact
    top = top_ablation_heads(r, len(est) * len(est[0]))
    assert {(t.layer, t.head) for t in top} == exact, "compare ranks an estimated head"

    ps = copy.deepcopy(r["resid_patching"])
    width = len(ps["values"][0])
    ps["method"] = [[("estimated" if (l + p) % 3 == 0 else "exact") for p in range(width)]
                    for l in range(len(ps["values"]))]
    cells = {(l, p) for l, row in enumerate(ps["method"]) for p, m in enumerate(row) if m == "estimated"}
    z = [[float(v) for v in row] for row in ps["values"]]
    assert _estimated_cells(ps, z) == cells
    n = len(ps["values"]) * width
    assert _estimated_note(ps) == f"; {n - len(cells)} of {n} cells exact, the others estimated"


def test_without_method_nothing_is_left_out() -> None:
    r = make_results(seed=0)
    zero, ps = r["head_ablation"]["zero"], r["resid_patching"]
    assert "method" not in zero and "method" not in ps
    assert _n_exact(zero) is None
    assert len(_exact_cells(zero, "logit_diff")) == len(zero["logit_diff"]) * len(zero["logit_diff"][0])
    assert _estimated_cells(ps, ps["values"]) == set() and _estimated_note(ps) == ""
    ps = {**ps, "method": [["exact"] * len(row) for row in ps["values"]]}
    assert _estimated_cells(ps, ps["values"]) == set() and _estimated_note(ps) == ""
