"""Screened head ablation on tiny random models of every kind: exact heads equal the full sweep, screened-out
heads carry the first-order estimate, the estimate is the linear limit of exact ablation, findings read exact
heads only; and, on the built-in model, the screen finds the heads that matter."""

from __future__ import annotations

import copy

import pytest
import torch

from logitlab.analyses import clean_run
from logitlab.analyses.ablation import AblationResult, head_ablation
from logitlab.analyses.ablation_screen import _metric_grads, ablation_estimates, screened_ablation
from logitlab.interventions import ablation_replacement, with_head_change
from logitlab.model.runner import Runner
from logitlab.screen import ESTIMATED, EXACT, ScreenSettings, select
from logitlab.task import load_task, tokenize_task

SMALL = ScreenSettings(screen_top=2, screen_sample=1)
_full: dict[tuple[int, str], AblationResult] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    """Tiny models run thousands of microsecond-sized ops: one thread avoids stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def run(tiny_model, tiny_task_file):  # noqa: ANN001, ANN201
    return clean_run(tiny_model, tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer))


def _full_ablation(run, kind: str) -> AblationResult:  # noqa: ANN001
    """Every head ablated exactly, once per model and kind."""
    key = (id(run.model), kind)
    if key not in _full:  # (the session's models live as long as this cache)
        _full[key] = head_ablation(run, kind)
    return _full[key]


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# --- the screened result -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_exact_cells_are_the_full_sweep_and_the_others_the_estimate(run, kind) -> None:  # noqa: ANN001
    spec = run.model.spec
    L, H = spec.n_layers, spec.n_heads
    full = _full_ablation(run, kind)
    res = screened_ablation(run, kind, SMALL)
    est = ablation_estimates(run, kind)
    assert res.screen is not None and res.loss_screen is not None
    exact = res.exact
    # The exact set: top 2 by |mean Δ logit diff estimate| ∪ top 2 by |mean Δ loss estimate| ∪ 1 random other.
    for metric in (est.logit_diff, est.loss):
        top2 = metric.mean(-1).flatten().abs().argsort(descending=True)[:2]
        assert bool(res.screen.flagged[top2].all()), f"a top-2 head by |estimate| is not flagged ({metric.shape})"
    assert int(res.screen.sampled.sum()) == 1 and not bool((res.screen.sampled & res.screen.flagged).any())
    assert 3 <= int(exact.sum()) <= 5 < L * H
    for name, got, ref in (("logit diff", res.logit_diff, full.logit_diff), ("loss", res.loss, full.loss)):
        d = _maxdiff(got[exact], ref[exact])
        assert d <= 1e-5, f"{spec.model_type} {kind} {name}: exact heads vs full sweep, max abs diff {d:.3g}"
    for name, got, base, e in (("logit diff", res.logit_diff, res.baseline_logit_diff, est.logit_diff),
                               ("loss", res.loss, res.baseline_loss, est.loss)):
        d = _maxdiff(got[~exact], base + e[~exact])
        assert d <= 1e-6, f"{spec.model_type} {kind} {name}: screened-out heads vs baseline + estimate, {d:.3g}"
    out = res.to_dict()
    labels = [[EXACT if bool(exact[l, h]) else ESTIMATED for h in range(H)] for l in range(L)]
    assert out["method"] == labels
    assert list(res.to_frame()["method"]) == [m for row in labels for m in row]
    scr = out["screen"]
    assert scr["n_exact"] == int(exact.sum()) and scr["n_cells"] == L * H
    assert scr["bound"] is not None and scr["bound"] >= scr["left_out_max_estimate"]
    assert scr["loss_bound"] is not None and scr["loss_sample_max_error"] is not None
    # The recorded sample error is the exact value of the sampled head against its estimate.
    s = int(res.screen.sampled.nonzero()[0, 0])
    delta = (full.logit_diff - full.baseline_logit_diff).mean(-1).flatten()
    assert abs(scr["sample_max_error"] - abs(float(delta[s]) - float(est.logit_diff.mean(-1).flatten()[s]))) < 1e-5
    top = out["top_drop"]
    assert bool(exact[top["layer"], top["head"]]), "top_drop is a screened-out head"
    assert all(bool(exact[l, h]) for l, h in top["tied"] + [top["runner_up"]])


def test_subset_of_heads_equals_the_full_sweep(run) -> None:  # noqa: ANN001
    spec = run.model.spec
    full = _full_ablation(run, "mean")
    mask = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.bool)
    mask[0, spec.n_heads - 1] = mask[spec.n_layers - 1, 0] = mask[1, 1] = True
    some = head_ablation(run, "mean", heads=mask)
    assert _maxdiff(some.logit_diff[mask], full.logit_diff[mask]) <= 1e-5
    assert _maxdiff(some.loss[mask], full.loss[mask]) <= 1e-5
    assert bool(some.logit_diff[~mask].isnan().all() and some.loss[~mask].isnan().all())
    every = head_ablation(run, "mean", heads=torch.ones_like(mask))
    assert _maxdiff(every.logit_diff, full.logit_diff) <= 1e-5


def test_metrics_of_the_gradient_pass_are_the_clean_run(run) -> None:  # noqa: ANN001
    """The forward pass the gradients come from scores what the clean run scores (the loss is recomputed)."""
    t = run.task
    diff, loss, g_diff, g_loss = _metric_grads(run.model.runner, t.tokens, t.final_pos, t.correct_ids,
                                               t.incorrect_ids)
    assert _maxdiff(diff.cpu(), run.logit_diff) <= 1e-4 and _maxdiff(loss.cpu(), run.loss) <= 1e-4
    assert g_diff.shape == run.cache.z.shape == g_loss.shape
    assert float(g_loss.abs().max()) > 0 and float(g_diff.abs().max()) > 0


def test_gradient_pass_in_chunks_of_prompts_equals_one_pass(run, monkeypatch) -> None:  # noqa: ANN001
    """Prompts do not interact: the estimates' gradients computed a few prompts at a time (as large tasks are)
    equal one pass over every prompt."""
    import logitlab.analyses.ablation_screen as screen_mod
    t = run.task
    _, _, g_diff, g_loss = _metric_grads(run.model.runner, t.tokens, t.final_pos, t.correct_ids, t.incorrect_ids)
    monkeypatch.setattr(screen_mod, "_GRAD_ROWS", 2)
    assert t.tokens.shape[0] > 2, "the tiny task must span several chunks"
    chunked = screen_mod.metric_grads(run)
    assert _maxdiff(chunked.logit_diff, g_diff) <= 1e-5 and _maxdiff(chunked.loss, g_loss) <= 1e-5


def test_exact_setting_and_a_screen_covering_every_head_ablate_every_head(run) -> None:  # noqa: ANN001
    spec = run.model.spec
    full = _full_ablation(run, "zero")
    for settings in (ScreenSettings(exact=True), ScreenSettings(screen_top=spec.n_layers * spec.n_heads)):
        res = screened_ablation(run, "zero", settings)
        assert res.screen is None and bool(res.exact.all())
        assert _maxdiff(res.logit_diff, full.logit_diff) <= 1e-5 and _maxdiff(res.loss, full.loss) <= 1e-5
        out = res.to_dict()
        assert "method" not in out and "screen" not in out
        assert out["top_drop"] == full.to_dict()["top_drop"]


@pytest.mark.parametrize("tiny_model", ["llama_gqa"], indirect=True)
def test_a_screen_with_no_exact_head_is_refused_and_a_sample_alone_works(run) -> None:  # noqa: ANN001
    from logitlab.errors import LogitlabError
    with pytest.raises(LogitlabError, match="no head exactly"):
        screened_ablation(run, "zero", ScreenSettings(screen_top=0, screen_sample=0))
    res = screened_ablation(run, "zero", ScreenSettings(screen_top=0, screen_sample=2))
    assert res.screen is not None and int(res.exact.sum()) == 2 == int(res.screen.sampled.sum())
    top = res.top_drop()
    assert bool(res.exact[top["layer"], top["head"]])


def test_both_kinds_at_once_count_the_items_swept(run) -> None:  # noqa: ANN001
    """screened_ablations (gradients shared by the kinds) equals one kind at a time; each progress bar's total
    is the items it sweeps."""
    from logitlab.analyses.ablation_screen import screened_ablations
    from logitlab.sweep import SweepSettings
    totals: dict[str, int] = {}
    steps: dict[str, list[int]] = {"zero": [], "mean": []}

    def sweep(kind: str, n: int) -> SweepSettings:
        totals[kind] = n
        return SweepSettings(progress=steps[kind].append)

    both = screened_ablations(run, ("zero", "mean"), SMALL, sweep)
    for kind, res in both.items():
        alone = screened_ablation(run, kind, SMALL)
        assert torch.equal(res.logit_diff, alone.logit_diff) and torch.equal(res.loss, alone.loss)
        assert torch.equal(res.exact, alone.exact)
        assert totals[kind] == int(res.exact.sum()) * run.task.n_prompts == sum(steps[kind])


# --- the estimate is first order -----------------------------------------------------------------------------


def _float64(model):  # noqa: ANN001, ANN202
    """A shallow copy of ``model`` whose runner computes in float64."""
    m = copy.copy(model)
    m.runner = Runner(model.spec, model.runner.w.to(model.runner.device, torch.float64))
    return m


def _scaled_ablation(run, kind: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Logit difference and loss (layer, head, batch) when each head's z becomes z + α (r − z), exactly (the
    runner's own entry points; the loss from the full logits)."""
    r, t, c = run.model.runner, run.task, run.cache
    L, H, B = r.spec.n_layers, r.spec.n_heads, t.n_prompts
    rep = ablation_replacement(kind, c, t.final_pos)  # (L, H, T, dh) or (L, H, B, T, dh)
    prompts, heads = torch.arange(B).repeat(H), torch.arange(H).repeat_interleave(B)  # head-major items
    ld, lo = torch.empty(L, H, B, dtype=torch.float64), torch.empty(L, H, B, dtype=torch.float64)
    for l in range(L):
        new = rep[l][heads] if rep.dim() == 4 else rep[l][heads, prompts]  # (H·B, T, dh)
        dz = alpha * (new - c.z[l][prompts, :, heads])
        x = with_head_change(r, c, l, prompts, heads, dz)
        final = r.run_from(l, r.attn_entry_stage, x, final_pos=t.final_pos[prompts])
        d, _ = r.answer_metrics(final, t.correct_ids[prompts], t.incorrect_ids[prompts], False)
        logp = torch.log_softmax(r.unembed(final).double(), -1)
        ld[l] = d.view(H, B)
        lo[l] = -logp[torch.arange(H * B), t.correct_ids[prompts]].view(H, B)
    return ld, lo


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_estimate_is_the_linear_limit_of_exact_ablation(tiny_model, tiny_task_file, kind) -> None:  # noqa: ANN001
    """(m(z + α (r − z)) − m(z)) / α → (r − z) · ∂m/∂z as α → 0, both metrics, in float64.

    One-sided difference: error α·m''/2 plus rounding eps64·|m|/α (about 1e-9), as attribution patching's test.
    """
    m64 = _float64(tiny_model)
    run = clean_run(m64, tokenize_task(load_task(tiny_task_file), m64.tokenizer))
    est = ablation_estimates(run, kind)
    assert est.logit_diff.dtype == torch.float64
    alpha = 1e-7
    ld0, lo0 = _scaled_ablation(run, kind, 0.0)
    assert _maxdiff(ld0, run.logit_diff.double().expand_as(ld0)) < 1e-5, "α = 0 is not the clean run"
    ld1, lo1 = _scaled_ablation(run, kind, alpha)
    for name, e, fd in (("logit diff", est.logit_diff, (ld1 - ld0) / alpha), ("loss", est.loss, (lo1 - lo0) / alpha)):
        d, scale = _maxdiff(e, fd), max(1.0, float(fd.abs().max()))
        assert d <= 1e-5 * scale, (f"{tiny_model.spec.model_type} {kind} {name}: estimate vs linear limit, max abs "
                                   f"diff {d:.3g} (scale {scale:.3g})")
        assert float(e.abs().max()) > 1e-3, f"vacuous: every {name} estimate is 0"


# --- findings read exact heads only --------------------------------------------------------------------------


def test_top_drop_is_chosen_among_exact_heads() -> None:
    g = torch.Generator().manual_seed(0)
    L, H, B = 3, 4, 6
    base = torch.randn(B, generator=g)
    ld = base + 0.1 * torch.randn(L, H, B, generator=g)
    ld[2, 3] -= 5.0  # the largest drop, left out by the screen below
    ld[1, 0] -= 2.0  # the largest exact drop
    mean = (ld - base).mean(-1).flatten()
    estimate = mean.clone()
    estimate[2 * H + 3] = 0.0  # badly estimated: screened out
    screen = select(estimate, top=3, sample=2)
    assert not bool(screen.exact[2 * H + 3]) and bool(screen.flagged[1 * H + 0])
    exact_vals = torch.where(screen.exact, mean, torch.full_like(mean, float("nan")))
    screen = screen.measured(estimate, exact_vals)
    res = AblationResult("zero", ld, ld.clone(), base, base.clone(), screen=screen, loss_screen=screen)
    top = res.top_drop()
    assert (top["layer"], top["head"]) == (1, 0)
    assert all(bool(screen.exact[l * H + h]) for l, h in top["tied"] + [top["runner_up"]])
    assert top["above_bound"] == (abs(top["delta"]) > screen.bound)
    # A bound above the top head's drop: not "the largest".
    wide = type(screen)(screen.estimator, screen.flagged, screen.sampled, 10.0, 0.0, 0.0, 0.0)
    assert AblationResult("zero", ld, ld, base, base, screen=wide).top_drop()["above_bound"] is False
    # Without a screen: every head, the screened-out one wins.
    full = AblationResult("zero", ld, ld, base, base).top_drop()
    assert (full["layer"], full["head"]) == (2, 3) and full["above_bound"] is True


def test_robustness_tops_are_exact_heads(run) -> None:  # noqa: ANN001
    """A screened-out head with the largest drop on every template is never a template's top head."""
    import dataclasses

    from logitlab.analyses import head_attribution
    from logitlab.analyses.robustness import robustness
    res = screened_ablation(run, "zero", SMALL)
    l, h = [int(i) for i in (~res.exact).nonzero()[0]]
    ld = res.logit_diff.clone()
    ld[l, h] -= 100.0  # an estimate far below every exact head
    res = dataclasses.replace(res, logit_diff=ld)
    rob = robustness(run, head_attribution(run), {"zero": res}).to_dict()
    tops = [t["top_ablation"]["zero"]["head"] for t in rob["templates"]]
    assert len(tops) >= 2 and all(bool(res.exact[a, b]) for a, b in tops), tops


# --- results and report --------------------------------------------------------------------------------------


def _section(run) -> dict:  # noqa: ANN001
    """The head_ablation results section of a screened run, validated against the results schema."""
    from logitlab.results.ablation import HeadAblation
    from logitlab.results.schema import validate_results
    out = {"zero": screened_ablation(run, "zero", SMALL).to_dict(), "mean": screened_ablation(run, "mean", SMALL).to_dict(),
           "baseline_logit_diff": float(run.logit_diff.mean()), "baseline_loss": float(run.loss.mean())}
    validate_results(out, HeadAblation)
    return out


@pytest.mark.parametrize("tiny_model", ["gpt2", "gemma3"], indirect=True)  # the report reads results only
def test_report_marks_estimated_cells_and_quotes_exact_numbers(tiny_model, tiny_task_file) -> None:  # noqa: ANN001
    from logitlab.report.sections.ablation import SCREENED_OUT, _ablation, _ablation_figure, section_head_ablation
    run = clean_run(tiny_model, tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer))
    ab = _section(run)
    results = {"head_ablation": ab}
    for kind in ("zero", "mean"):
        est = [[m == ESTIMATED for m in row] for row in ab[kind]["method"]]
        n_est = sum(map(sum, est))
        fig = _ablation_figure(results, kind, "logit_diff")
        heat, marks = fig.data[0], fig.data[1]
        hover = [[c[3] for c in row] for row in heat.customdata]
        assert [[SCREENED_OUT in t for t in row] for row in hover] == est
        assert len(marks.x) == n_est and marks.hoverinfo == "skip"
    from logitlab.battery import _ablation_rows
    rows = _ablation_rows(ab)  # tables/head_ablation.csv
    assert [r["method"] for r in rows] == [m for k in ("zero", "mean") for row in ab[k]["method"] for m in row]
    html = section_head_ablation(results, {}, [])
    scr = ab["zero"]["screen"]
    assert f"{scr['n_exact']} of {scr['n_cells']} heads computed exactly" in html and SCREENED_OUT in html
    finding = _ablation(results)
    assert finding is not None
    # The finding names the larger of the two kinds' exact top drops, and qualifies "largest" by the bounds.
    kind = min(("zero", "mean"), key=lambda k: ab[k]["top_drop"]["delta"])
    top = ab[kind]["top_drop"]
    assert finding.figure_id == f"head_ablation_{kind}_logit_diff"
    assert ab[kind]["method"][top["layer"]][top["head"]] == "exact"
    assert f"{kind.capitalize()}-ablating L{top['layer']}H{top['head']}" in finding.text, finding.text
    largest = all(-top["delta"] > ab[k]["screen"]["bound"] for k in ("zero", "mean"))
    qualified = f"heads (of {scr['n_cells']}) computed exactly" in finding.text
    assert qualified == (not largest or "No head ablation" in finding.text), finding.text
    assert ("screen's bound is" in finding.text) == largest, finding.text
    # A bound above every exact drop: the finding speaks of the exact heads only.
    wide = copy.deepcopy(ab)
    for k in ("zero", "mean"):
        wide[k]["screen"]["bound"] = wide[k]["screen"]["loss_bound"] = 100.0
    text = _ablation({"head_ablation": wide}).text
    assert f"heads (of {scr['n_cells']}) computed exactly" in text and "screen's bound is" not in text, text
    assert "largest loss increase (" not in text, text


# --- the built-in model --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_builtin_screen_keeps_the_heads_that_matter(builtin_model) -> None:  # noqa: ANN001
    """The default screen ablates exactly the top 3 heads of the full exact ablation (by drop and by |Δ|), and
    records the estimate's measured error."""
    import math
    import time
    run = clean_run(builtin_model, tokenize_task(load_task("pronouns"), builtin_model.tokenizer))
    for kind in ("zero", "mean"):
        t0 = time.perf_counter()
        full = head_ablation(run, kind)
        t1 = time.perf_counter()
        res = screened_ablation(run, kind, ScreenSettings())
        t2 = time.perf_counter()
        assert res.screen is not None and res.loss_screen is not None
        exact = res.screen.exact
        delta = (full.logit_diff - full.baseline_logit_diff).mean(-1).flatten()  # (L·H,)
        for what, order in (("drop", delta.argsort()), ("|Δ|", delta.abs().argsort(descending=True))):
            missed = [divmod(int(i), builtin_model.spec.n_heads) for i in order[:3] if not bool(exact[i])]
            assert not missed, f"{kind}: top-3 heads by {what} screened out: {missed}"
        ex = res.exact
        d = _maxdiff(res.logit_diff[ex], full.logit_diff[ex])
        assert d <= 1e-4, f"{kind}: exact heads vs full sweep, max abs diff {d:.3g}"
        scr = res.to_dict()["screen"]
        for key in ("sample_max_error", "loss_sample_max_error", "bound", "loss_bound"):
            assert scr[key] is not None and math.isfinite(scr[key]), key
        assert scr["n_sampled"] == 8 and scr["n_exact"] < scr["n_cells"]
        print(f"{kind}: full {t1 - t0:.1f}s, screened {t2 - t1:.1f}s; {scr['n_exact']}/{scr['n_cells']} exact, "
              f"sample error {scr['sample_max_error']:.3g}, bound {scr['bound']:.3g}, max error {scr['max_error']:.3g}, "
              f"loss sample error {scr['loss_sample_max_error']:.3g}, loss bound {scr['loss_bound']:.3g}; "
              f"top drop {res.to_dict()['top_drop']['delta']:.3g} (full {float(delta.min()):.3g})")
