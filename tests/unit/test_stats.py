"""Paired effects: standard error, bootstrap CIs and the separation test behind "hurts most"."""

from __future__ import annotations

import numpy as np
import torch

from logitlab.analyses.ablation import AblationResult
from logitlab.report.findings import key_findings
from logitlab.stats import _percentiles, bootstrap_indices, paired, separated
from tests.report.synthetic import make_results


def test_paired_matches_an_independent_computation() -> None:
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(3, 4, 25, generator=g, dtype=torch.float64) + 0.5
    s = paired(delta)
    x = delta.numpy()
    assert np.allclose(s.mean.numpy(), x.mean(-1), atol=1e-6)
    assert np.allclose(s.stderr.numpy(), x.std(-1, ddof=1) / np.sqrt(25), atol=1e-6)
    idx = bootstrap_indices(25).numpy()  # the same resamples, by numpy
    boot = x[..., idx].mean(-1)  # (3, 4, resamples)
    ref = np.stack([np.quantile(boot, 0.025, axis=-1), np.quantile(boot, 0.975, axis=-1)], -1)
    assert np.abs(s.ci.numpy() - ref).max() < 1e-5, "bootstrap CI differs from numpy's percentile bootstrap"
    assert (s.ci[..., 0] <= s.mean).all() and (s.mean <= s.ci[..., 1]).all()
    again = paired(delta)
    assert torch.equal(again.ci, s.ci), "the bootstrap is seeded: same input, same CI"
    const = paired(torch.full((2, 10), -1.5))
    assert torch.allclose(const.ci, torch.tensor(-1.5)) and torch.all(const.stderr == 0)


def test_percentiles_equal_quantile_bit_for_bit() -> None:
    """The partial-sort percentiles are torch.quantile's, to the bit: ties, integer ranks, both tails, NaN rows."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, 2000, generator=g, dtype=torch.float64)
    x[0, :, :40] = x[0, :, 40:80]  # ties across the lower order statistics
    x[1] = torch.randint(0, 3, (5, 2000), generator=g).double()  # mostly ties
    for qs in [(0.025, 0.975), (0.0, 0.5, 1.0), (0.1,), (0.9,)]:
        ref = x.quantile(torch.tensor(qs, dtype=x.dtype), dim=-1).movedim(0, -1)
        assert torch.equal(_percentiles(x, qs), ref), qs
    x[2, 3, 7] = float("nan")
    ref = x.quantile(torch.tensor([0.025, 0.975], dtype=x.dtype), dim=-1).movedim(0, -1)
    assert torch.equal(_percentiles(x).isnan(), ref.isnan()) and ref.isnan().any()
    assert torch.equal(_percentiles(x)[~ref.isnan()], ref[~ref.isnan()])
    short = torch.randn(3, 7, generator=g, dtype=torch.float64)  # ranks between the same two neighbours
    assert torch.equal(_percentiles(short), short.quantile(torch.tensor([0.025, 0.975], dtype=short.dtype),
                                                           dim=-1).movedim(0, -1))


def test_paired_effects_are_narrower_than_unpaired_bars() -> None:
    """Prompts differ a lot (baselines spread 3 logits), a head's effect is −1 ± 0.1 on each."""
    g = torch.Generator().manual_seed(2)
    n = 40
    base = 3.0 * torch.randn(n, generator=g)
    ablated = base - 1.0 + 0.1 * torch.randn(n, generator=g)
    res = AblationResult("zero", ablated.view(1, 1, n), ablated.view(1, 1, n).abs(), base, base.abs())
    d = res.to_dict()
    lo, hi = d["delta_logit_diff_ci"][0][0]
    assert hi < -0.9 and lo > -1.1, f"paired CI [{lo}, {hi}] should be tight around −1"
    assert d["delta_logit_diff_stderr"][0][0] < 0.1 * d["logit_diff_stderr"][0][0], "paired vs unpaired stderr"
    assert abs(d["delta_logit_diff"][0][0] - float((ablated - base).mean())) < 1e-5
    assert len(d["delta_logit_diff_per_prompt"][0][0]) == n


def test_top_head_named_alone_only_when_separated() -> None:
    g = torch.Generator().manual_seed(3)
    n = 30
    base = torch.randn(n, generator=g)
    noise = lambda: 0.3 * torch.randn(n, generator=g)  # noqa: E731
    # Heads (0,0) and (0,1) have the same effect (−2); (1,0) a clearly smaller one; (1,1) none.
    ablated = torch.stack([torch.stack([base - 2 + noise(), base - 2 + noise()]),
                           torch.stack([base - 0.5 + noise(), base + noise()])])  # (2, 2, n)
    top = AblationResult("zero", ablated, ablated, base, base).top_drop()
    assert (top["layer"], top["head"]) in {(0, 0), (0, 1)}
    other = [0, 1 - top["head"]]
    assert top["tied"] == [other], f"only the equally strong head is tied: {top['tied']}"
    assert top["difference_ci"][0] <= 0 <= top["difference_ci"][1]
    # Make head (0,0) clearly strongest: nothing is tied, and the difference to the runner-up excludes 0.
    ablated[0, 0] -= 1.0
    top = AblationResult("zero", ablated, ablated, base, base).top_drop()
    assert (top["layer"], top["head"]) == (0, 0) and top["tied"] == [] and top["difference_ci"][0] > 0
    diff, lo, hi = separated(ablated[0, 1] - base, ablated[0, 0] - base)
    assert abs(diff - top["difference"]) < 1e-5 and lo > 0


def test_finding_does_not_say_most_for_tied_heads() -> None:
    res = make_results()
    top = res["head_ablation"]["zero"]["top_drop"]
    text = next(f.text for f in key_findings(res) if "ablating" in f.text)
    assert "95%" in text, f"the ablation finding states its CI: {text}"
    top["tied"] = [[0, 0]]
    text = next(f.text for f in key_findings(res) if "ablating" in f.text)
    assert "hurts most" not in text and "not separated at 95% from L0H0" in text, text


def test_huge_logit_differences_do_not_overflow() -> None:
    """exp(logit diff) used to overflow in float32 above ~88 and abort the run as 'NaN activations'."""
    import math

    from logitlab.analyses.logit_diff import LogitDiffResult
    from logitlab.battery import check_finite
    d = LogitDiffResult(per_prompt=torch.tensor([100.0, 800.0]), loss=torch.tensor([0.0, 0.0])).to_dict()
    check_finite(d)
    assert math.isclose(d["prob_ratio"][0], math.exp(100.0), rel_tol=1e-6)
    assert d["prob_ratio"][1] == torch.finfo(torch.float64).max and math.isfinite(d["prob_ratio_of_mean"])
