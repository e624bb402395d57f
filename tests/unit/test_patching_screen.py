"""Screened activation patching and precision-targeted pairs (logitlab/analyses/patching_plan.py), on every tiny
kind: the cells computed exactly equal full exact patching, the others the first-order estimate, labels say which;
pairs are added in a fixed order until the pooled residual-stream CIs reach the target."""

from __future__ import annotations

import pytest
import torch

from logitlab.analyses.atp import attribution_patching
from logitlab.analyses.pairset import first_order
from logitlab.analyses.patching import activation_patching
from logitlab.analyses.patching_plan import FIRST_PAIRS, ordered, resid_width, take
from logitlab.screen import ESTIMATED, EXACT, ScreenSettings
from logitlab.task import generated_pairs, load_task, tokenize_task

TOL = 1e-4


@pytest.fixture()
def tt(tiny_model, tiny_task_file):  # noqa: ANN001, ANN201
    return tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def test_screened_cells_are_exact_and_the_others_the_estimate(tiny_model, tt) -> None:  # noqa: ANN001
    full = activation_patching(tiny_model, tt)
    scr = activation_patching(tiny_model, tt, screen=ScreenSettings(screen_top=2, screen_sample=1))
    kind = tiny_model.spec.model_type
    assert scr.estimates is not None and scr.screens is not None and len(scr.groups) == len(full.groups) > 0
    assert _max_diff(scr.reference.heads, full.reference.heads) <= TOL, "the reference pairs stay exact"
    n_estimated = 0
    for g, f, est in zip(scr.groups, full.groups, scr.estimates):
        assert _max_diff(g.resid, f.resid) <= TOL, f"{kind}: the residual stream is always exact"
        for what in ("attn", "mlp", "heads"):
            exact = g.is_exact(what)
            got, want = getattr(g, what), getattr(f, what)
            assert _max_diff(got[exact], want[exact]) <= TOL, f"{kind} {what}: exact cells differ from full patching"
            guess = getattr(est, what).float() + g.corrupted
            assert _max_diff(got[~exact], guess[~exact]) <= TOL, f"{kind} {what}: screened-out cells ≠ estimate"
            n_estimated += int((~exact).sum())
    assert n_estimated > 0, f"{kind}: a screen of 2 + 1 cells per map must leave cells out"
    d = scr.to_dict()
    for key, what in (("attn_patching", "attn"), ("mlp_patching", "mlp"), ("head_patching", "heads")):
        screen = d[key]["screen"]
        assert screen is not None and screen["n_flagged"] >= 2 and screen["n_sampled"] <= 1
        labels = d[key]["pooled"]["method"] if d[key]["pooled"] is not None else d[key]["method"]
        flat = [x for row in labels for x in row]
        assert set(flat) <= {EXACT, ESTIMATED} and flat.count(EXACT) >= 1
        measured = scr.screens[what]
        assert measured.sample_max_error is not None and measured.bound is not None and measured.bound >= 0
    assert all(x == EXACT for row in d["resid_patching"]["method"] for x in row)
    assert d["resid_patching"]["screen"] is None


def test_exact_setting_and_defaults_patch_every_cell(tiny_model, tt) -> None:  # noqa: ANN001
    full = activation_patching(tiny_model, tt)
    ex = activation_patching(tiny_model, tt, screen=ScreenSettings(exact=True))
    assert ex.screens is None and ex.estimates is None and ex.precision is None
    for a, b in zip(ex.groups, full.groups):
        assert a.exact_cells is None
        for what in ("resid", "attn", "mlp", "heads"):
            assert torch.equal(getattr(a, what), getattr(b, what)), "--exact is the full computation, bit for bit"
    assert ex.to_dict() == full.to_dict()


def test_precision_target_adds_pairs_in_a_fixed_order(tiny_model, tt) -> None:  # noqa: ANN001
    raw = generated_pairs(tt)
    sizes = [g.n_pairs for g in raw]
    loose = activation_patching(tiny_model, tt, target=1e6)
    p = loose.precision
    assert p is not None and p.met and p.rounds == 1 and p.n_available == sum(sizes)
    assert p.n_pairs == sum(min(FIRST_PAIRS, n) for n in sizes)
    strict = activation_patching(tiny_model, tt, target=1e-9)
    q = strict.precision
    assert q is not None and q.n_pairs == q.n_available == sum(sizes), "an unreachable target uses every pair"
    assert q.met == (q.achieved is not None and q.achieved <= 1e-9)
    again = activation_patching(tiny_model, tt, target=1e6)
    assert again.pair_groups is not None and loose.pair_groups is not None
    assert [g.clean_index for g in again.pair_groups] == [g.clean_index for g in loose.pair_groups]
    # The pairs used are each group's first ones in its fixed order; their patching is exact patching of them.
    for k, (g, used) in enumerate(zip(raw, loose.pair_groups)):
        first = take(ordered(g, k), list(range(min(FIRST_PAIRS, g.n_pairs))))
        assert used.clean_index == first.clean_index and used.corrupted_index == first.corrupted_index
    assert p.achieved == resid_width(list(loose.groups))


def test_precision_pairs_equal_exact_patching_of_those_pairs(tiny_model, tt) -> None:  # noqa: ANN001
    """Round by round the residual stream is patched on new pairs only; the result equals patching the final pairs
    at once, and the other kinds are computed on the same pairs."""
    from logitlab.analyses.patching_plan import patch_set
    from logitlab.sweep import SweepSettings
    res = activation_patching(tiny_model, tt, target=1e-9)
    assert res.pair_groups is not None
    for g, used in zip(res.groups, res.pair_groups):
        once = patch_set(tiny_model, used.template_text, used.template, g.tokens, used.roles, used.clean_tokens,
                         used.corrupted_tokens, used.correct_ids, used.incorrect_ids, SweepSettings(), g.min_gap)
        for what in ("resid", "attn", "mlp", "heads"):
            assert _max_diff(getattr(g, what), getattr(once, what)) <= TOL, what
        assert _max_diff(g.clean, once.clean) <= TOL


def test_atp_reuses_the_screen_and_compares_exact_cells_only(tiny_model, tt) -> None:  # noqa: ANN001
    scr = activation_patching(tiny_model, tt, target=1e6, screen=ScreenSettings(screen_top=2, screen_sample=1))
    atp = attribution_patching(tiny_model, tt, exact=scr)
    assert atp.groups == scr.estimates, "the screen's estimates are attribution patching's"
    assert atp.heads.exact is not None and atp.heads.atp is not None
    screened = torch.stack([g.is_exact("heads") for g in scr.groups]).all(0)
    assert bool(torch.isnan(atp.heads.exact[~screened]).all()) and bool(torch.isfinite(atp.heads.exact[screened]).all())
    d = atp.to_dict()
    assert any(v is None for row in d["heads"]["exact"] for v in row)
    # Estimates of the same pairs computed afresh agree with the reused ones.
    g = scr.pair_groups[0]
    _, _, e = first_order(tiny_model.runner, g.clean_tokens, g.corrupted_tokens, g.correct_ids, g.incorrect_ids)
    assert _max_diff(e["heads"], scr.estimates[0].heads) <= TOL
    c = atp.heads.comparison
    assert c is not None and c.top_k == min(10, int(screened.sum())), "compared over the exact cells only"


def _same_sets(a, b) -> list[str]:  # noqa: ANN001
    """The fields on which two pair sets differ (bit for bit)."""
    fields = ("clean", "corrupted", "resid", "attn", "mlp", "heads")
    out = [f for f in fields if not torch.equal(getattr(a, f), getattr(b, f))]
    return out + [f for f in ("label", "template", "tokens", "roles", "min_gap") if getattr(a, f) != getattr(b, f)]


def test_screen_estimates_equal_attribution_patching_bit_for_bit(tiny_model, tt) -> None:  # noqa: ANN001
    """The screen and attribution patching build their first-order sets of the same pairs identically."""
    scr = activation_patching(tiny_model, tt, screen=ScreenSettings(screen_top=2, screen_sample=1))
    atp = attribution_patching(tiny_model, tt)  # its own estimates, on the same generated pairs
    assert scr.estimates is not None and len(scr.estimates) == len(atp.groups) > 0
    for k, (a, b) in enumerate(zip(scr.estimates, atp.groups)):
        assert not _same_sets(a, b), f"{tiny_model.spec.model_type} group {k}: differ in {_same_sets(a, b)}"


@pytest.fixture()
def counted(monkeypatch):  # noqa: ANN001, ANN201
    """Every batch of prompts the staged runner's cached forward runs (a list of token tensors)."""
    from logitlab.model.runner import Runner
    seen: list[torch.Tensor] = []
    real = Runner.run_with_cache

    def counting(self, tokens):  # noqa: ANN001, ANN202
        seen.append(tokens.detach().cpu())
        return real(self, tokens)
    monkeypatch.setattr(Runner, "run_with_cache", counting)
    return seen


@pytest.mark.parametrize("target", [1e-9, 0.0])
def test_each_pair_runs_the_cached_forward_once(tiny_model, tt, counted, target) -> None:  # noqa: ANN001
    """Precision rounds, estimates and exact patching share each group's cached runs: every clean and corrupted
    prompt of a pair (reference or generated) goes through run_with_cache once, in one call per round and set."""
    res = activation_patching(tiny_model, tt, target=target, screen=ScreenSettings(screen_top=2, screen_sample=1))
    assert res.pair_groups is not None and res.estimates is not None
    n_ref = res.reference.n if res.reference is not None else 0
    n_generated = sum(g.n_pairs for g in res.pair_groups)
    rows = sum(t.shape[0] for t in counted)
    assert rows == 2 * (n_ref + n_generated), (
        f"{rows} prompts ran through run_with_cache for {n_ref} reference and {n_generated} generated pairs")
    if target == 0:  # one clean and one corrupted call per set: the reference, then each group once
        assert len(counted) == 2 * (1 + len(res.pair_groups))
    else:  # one per round that adds pairs to a group; before, each group ran twice more (estimate, final sweep)
        p = res.precision
        assert p is not None and p.rounds >= 2 and len(counted) <= 2 * (1 + p.rounds * len(res.pair_groups))


def test_cached_route_equals_the_uncached_one(tiny_model, tt) -> None:  # noqa: ANN001
    """The caches reused from the precision rounds give the numbers that patching and estimating each group's
    pairs afresh (their own cached runs, as before the reuse) give: bit for bit where the model's cached forward
    does not depend on how the pairs are batched, else to float rounding."""
    from logitlab.analyses.pairset import join_caches, pair_caches
    from logitlab.analyses.patching_plan import estimate_group, patch_set
    from logitlab.sweep import SweepSettings
    scr = activation_patching(tiny_model, tt, target=1e-9, screen=ScreenSettings(screen_top=2, screen_sample=1))
    assert scr.pair_groups is not None and scr.estimates is not None and scr.precision is not None
    assert scr.precision.rounds >= 2, "the rounds must split the pairs for the reuse to be tested"
    for g, used, est in zip(scr.groups, scr.pair_groups, scr.estimates):
        whole = pair_caches(tiny_model.runner, used.clean_tokens, used.corrupted_tokens)
        one_by_one = join_caches([pair_caches(tiny_model.runner, used.clean_tokens[i:i + 1],
                                              used.corrupted_tokens[i:i + 1]) for i in range(used.n_pairs)])
        invariant = all(torch.equal(a.resid_final, b.resid_final) and torch.equal(a.z, b.z)
                        for a, b in zip(whole, one_by_one))
        fresh_est = estimate_group(tiny_model, used, g.tokens, g.min_gap)
        masks = {what: g.is_exact(what) for what in ("attn", "mlp", "heads")}
        fresh = patch_set(tiny_model, used.template_text, used.template, g.tokens, used.roles, used.clean_tokens,
                          used.corrupted_tokens, used.correct_ids, used.incorrect_ids, SweepSettings(), g.min_gap,
                          ("attn", "mlp", "heads"), masks, fresh_est)
        for name, got, want in [(f"estimate {w}", getattr(est, w), getattr(fresh_est, w))
                                for w in ("clean", "corrupted", "resid", "attn", "mlp", "heads")] + \
                               [(w, getattr(g, w), getattr(fresh, w)) for w in ("clean", "corrupted", "attn", "mlp", "heads")]:
            if invariant:
                assert torch.equal(got, want), f"{tiny_model.spec.model_type} {name}: {_max_diff(got, want):.3g}"
            else:
                assert _max_diff(got, want) <= 1e-5, f"{tiny_model.spec.model_type} {name}: {_max_diff(got, want):.3g}"


@pytest.mark.parametrize("tiny_model", ["gpt2", "gemma3"], indirect=True)
def test_no_finding_rests_on_an_estimated_cell_when_a_group_has_no_usable_pair(tiny_model, tt) -> None:  # noqa: ANN001
    """One template's group has no pair above the gap (min_gap set between the groups' largest gaps): the pooled
    map then pools the other template alone, on positions the templates do not share. The screen patches those
    exactly too, and the finding never reads a cell labelled estimated."""
    from logitlab.analyses.pairset import first_order, pool_positions
    from logitlab.report.sections.patching import PATCH_THRESHOLD, _resid_patching
    raw = generated_pairs(tt)
    gaps = []
    for g in raw:
        clean, corr, _ = first_order(tiny_model.runner, g.clean_tokens, g.corrupted_tokens, g.correct_ids,
                                     g.incorrect_ids)
        gaps.append(float((clean - corr).abs().max()))
    dead = min(range(len(raw)), key=gaps.__getitem__)
    others = [x for k, x in enumerate(gaps) if k != dead]
    assert others and max(others) > gaps[dead] + 0.1, f"no group to leave out: gaps {gaps}"
    min_gap = (gaps[dead] + max(others)) / 2
    shared = pool_positions([g.roles for g in raw])
    res = activation_patching(tiny_model, tt, min_gap=min_gap, target=1e-9,
                              screen=ScreenSettings(screen_top=2, screen_sample=1))
    assert res.groups[dead].n_used == 0 and res.pooled is not None and res.pooled.n_pairs > 0
    assert len(res.pooled.tokens) > len(shared), "the live groups must pool on more positions than all share"
    d = res.to_dict()["resid_patching"]
    pooled = d["pooled"] if d["pooled"] is not None else d
    assert all(m == EXACT for row in pooled["method"] for m in row), "every pooled cell is patched exactly"
    # ... and exactly equal to patching every cell of the same pairs.
    full = activation_patching(tiny_model, tt, min_gap=min_gap, target=1e-9, screen=ScreenSettings(exact=True))
    assert full.pooled is not None and full.pooled.tokens == res.pooled.tokens
    got, want = res.pooled.resid.mean, full.pooled.resid.mean
    assert _max_diff(got, want) <= TOL, f"pooled residual stream differs from exact patching by {_max_diff(got, want)}"
    # The finding reads exact cells only: label the positions not shared by every template estimated (as the
    # plan used to leave them), put the only large values there, and no cell is found to carry the information.
    live = [k for k, g in enumerate(res.groups) if g.n_used]
    assert len(live) == 1, "two templates, one left out: the pooled map is the other one's positions"
    extra = set(range(len(pooled["tokens"]))) - {where[live[0]] for _, where in shared}
    pooled = {**pooled, "method": [[ESTIMATED if p in extra else EXACT for p in range(len(row))]
                                   for row in pooled["values"]],
              "values": [[0.99 if p in extra else 0.0 for p in range(len(row))] for row in pooled["values"]],
              "ci": [[[0.98, 1.0] if p in extra else [0.0, 0.0] for p in range(len(row))] for row in pooled["values"]]}
    section = {**pooled, "pooled": None, "per_template": []}  # the pooled set as the one the finding reads
    assert _resid_patching({"resid_patching": section}) is None, "an estimated cell carried a finding"
    # Exact cells that carry are still found, and the sentence says estimated cells were left out.
    final = len(pooled["tokens"]) - 1
    for row, ci, method in zip(pooled["values"], pooled["ci"], pooled["method"]):
        assert method[final] == EXACT
        row[final], ci[final] = PATCH_THRESHOLD + 0.4, [PATCH_THRESHOLD + 0.2, PATCH_THRESHOLD + 0.6]
    text = _resid_patching({"resid_patching": section})
    assert text is not None and "only at the final position" in text.text, text
    assert f"{len(extra) * len(pooled['values'])} estimated cells left out" in text.text, text.text
