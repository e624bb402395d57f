"""Attribution patching on tiny random models of every kind: the linear limit of exact patching, batching,
exact zeros and sums, the comparison statistics, and agreement with TransformerLens 4.3's own AtP."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from types import SimpleNamespace

import pytest
import torch

from logitlab import answers
from logitlab.analyses.atp import (
    N_WORST, TOP_K, AtPSummary, _compare, _pearson, _ranks, _spearman, attribution_patching,
)
from logitlab.analyses.pairset import first_order as _estimate
from logitlab.analyses.patching import activation_patching
from logitlab.errors import LogitlabError
from logitlab.interventions import with_head_change
from logitlab.model.backend import HOOKED_LOOPS
from logitlab.model.runner import Runner
from logitlab.task import generated_pairs, load_task, tokenize_task

_exact: dict[int, object] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    """Run this module's tiny models on one thread. Their passes are thousands of microsecond-sized ops, each
    a barrier for torch's worker threads: on a busy 2-core machine a descheduled worker stalls every op
    (measured: the linear-limit test 0.5 s on one thread, up to 30 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tt(tiny_model, tiny_task_file):  # noqa: ANN001, ANN201
    return tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)


def _exact_patching(model, tt):  # noqa: ANN001, ANN202
    """Exact patching of the tiny task, computed once per kind."""
    if id(model) not in _exact:  # (the session's models live as long as this cache)
        _exact[id(model)] = activation_patching(model, tt)
    return _exact[id(model)]


def _float64(model):  # noqa: ANN001, ANN202
    """A shallow copy of ``model`` whose runner computes in float64 (norms and softmaxes too: see ``wide``)."""
    m = copy.copy(model)
    m.runner = Runner(model.spec, model.runner.w.to(model.runner.device, torch.float64))
    return m


def _sets(tt):  # noqa: ANN001, ANN202
    """(clean, corrupted, correct, incorrect) of the reference pairs and of each generated group."""
    out = [(tt.clean_tokens, tt.corrupted_tokens, tt.pair_correct_ids, tt.pair_incorrect_ids)]
    return out + [(g.clean_tokens, g.corrupted_tokens, g.correct_ids, g.incorrect_ids) for g in generated_pairs(tt)]


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Max abs difference and the scale it is judged against (max |b|, at least 1)."""
    return float((a - b).abs().max()), max(1.0, float(b.abs().max()))


# --- the estimate is the linear limit of exact patching ------------------------------------------------------


def _scaled_patches(r: Runner, clean_t, corr_t, correct, incorrect, alpha: float) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Exactly patching a_corr + α (a_clean − a_corr), one component at a time: the metric for every component,
    keyed like the estimates: (layer, pos, pair) / (layer, head, pair). Runs the runner's own entry points."""
    n, T = clean_t.shape
    L, H = r.spec.n_layers, r.spec.n_heads
    clean, corr = r.run_with_cache(clean_t), r.run_with_cache(corr_t)
    rows = torch.arange(n).repeat(T)  # items position-major: item k = (position k // n, pair k % n)
    at = torch.arange(T).repeat_interleave(n)
    fp = torch.full((n * T,), T - 1)

    def metric(layer: int, stage: str, x: torch.Tensor, k: int) -> torch.Tensor:
        c, i = correct.repeat(k), incorrect.repeat(k, 1)
        return r.answer_metrics(r.run_from(layer, stage, x, final_pos=fp[: x.shape[0]]), c, i, False)[0]

    def at_one_position(base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        x = base[rows].clone()  # (n·T, T, D)
        x[torch.arange(n * T), at] += alpha * delta[rows, at]
        return x

    out = {w: torch.empty(L, T if w != "heads" else H, n, dtype=torch.float64)
           for w in ("resid", "attn", "mlp", "heads")}
    for l in range(L):
        x = at_one_position(corr.resid_pre[l], clean.resid_pre[l] - corr.resid_pre[l])
        out["resid"][l] = metric(l, "pre", x, T).view(T, n)
        a = at_one_position(corr.attn_out[l], clean.attn_out[l] - corr.attn_out[l])
        x = r.after_attention(l, corr.resid_pre[l][rows], a, corr.mlp_out[l][rows])
        out["attn"][l] = metric(l, r.attn_entry_stage, x, T).view(T, n)
        mo = at_one_position(corr.mlp_out[l], clean.mlp_out[l] - corr.mlp_out[l])
        out["mlp"][l] = metric(l, "post", corr.resid_mid[l][rows] + mo, T).view(T, n)
        # Heads: z of one head at every position, the edit exact head patching makes (post-norm recomputed).
        prompts, heads = torch.arange(n).repeat(H), torch.arange(H).repeat_interleave(n)
        dz = alpha * (clean.z[l][prompts, :, heads] - corr.z[l][prompts, :, heads])  # (H·n, T, dh)
        x = with_head_change(r, corr, l, prompts, heads, dz)
        out["heads"][l] = metric(l, r.attn_entry_stage, x, H).view(H, n)
    return out


def test_estimate_is_the_linear_limit_of_exact_patching(tiny_model, tt) -> None:  # noqa: ANN001
    """(m(a_corr + α Δa) − m(a_corr)) / α → (Δa) · ∂m/∂a as α → 0, for every component, in float64.

    One-sided difference: its error is α·m''/2 plus rounding eps64·|m|/α (about 1e-9). Measured: at most 1e-6 of
    the scale at α = 1e-7 on every kind, falling 100-fold from α = 1e-5 (first-order convergence); the tolerance
    1e-5 leaves a tenfold margin and is far below the size of the estimates.
    """
    m64 = _float64(tiny_model)
    r = m64.runner
    alpha = 1e-7
    for clean_t, corr_t, correct, incorrect in _sets(tt)[:2]:  # the reference pairs and one generated group
        _, corr_ld, est = _estimate(r, clean_t, corr_t, correct, incorrect)
        assert est["heads"].dtype == torch.float64
        base = _scaled_patches(r, clean_t, corr_t, correct, incorrect, 0.0)
        moved = _scaled_patches(r, clean_t, corr_t, correct, incorrect, alpha)
        for what in ("resid", "attn", "mlp", "heads"):
            assert (base[what] - corr_ld.double()).abs().max() < 1e-6, f"{what}: α = 0 is not the corrupted run"
            fd = (moved[what] - base[what]) / alpha
            diff, scale = _max_rel(est[what], fd)
            assert diff <= 1e-5 * scale, (f"{tiny_model.spec.model_type} {what}: AtP vs linear limit, "
                                          f"max abs diff {diff:.3g} (scale {scale:.3g})")
        assert est["heads"].abs().max() > 1e-3, "vacuous: every head estimate is 0"


# --- batching -----------------------------------------------------------------------------------------------


def test_batched_over_pairs_equals_one_pair_at_a_time(tiny_model, tt) -> None:  # noqa: ANN001
    r = tiny_model.runner
    for clean_t, corr_t, correct, incorrect in _sets(tt)[:2]:
        assert clean_t.shape[0] >= 2
        clean, corr, est = _estimate(r, clean_t, corr_t, correct, incorrect)
        for i in range(clean_t.shape[0]):
            c1, x1, e1 = _estimate(r, clean_t[i:i + 1], corr_t[i:i + 1], correct[i:i + 1], incorrect[i:i + 1])
            assert abs(float(c1[0] - clean[i])) < 1e-4 and abs(float(x1[0] - corr[i])) < 1e-4
            for what, x in e1.items():
                diff, scale = _max_rel(x[..., 0], est[what][..., i])
                assert diff <= 1e-5 * scale, f"{what} pair {i}: batched vs alone, max abs diff {diff:.3g}"


# --- exact invariants ---------------------------------------------------------------------------------------


def test_exact_zeros_where_patching_changes_nothing(tiny_model, tt) -> None:  # noqa: ANN001
    """Positions before the first differing token, and the last layer's attention and MLP outputs before the
    final position, cannot reach the metric: AtP is exactly 0 there and exact patching gives the corrupted run."""
    exact = _exact_patching(tiny_model, tt)
    res = attribution_patching(tiny_model, tt, exact=exact)
    L = tiny_model.spec.n_layers
    for s, e, (clean_t, corr_t, _, _) in zip(res.sets, (exact.reference, *exact.groups), _sets(tt)):
        first = int((clean_t != corr_t).any(0).float().argmax())  # the first position where a pair differs
        assert first >= 1, "BOS is shared by every pair"
        for what in ("resid", "attn", "mlp"):
            assert torch.equal(getattr(s, what)[:, :first], torch.zeros_like(getattr(s, what)[:, :first])), \
                f"{s.label} {what}: AtP nonzero before position {first}"
            got = getattr(e, what)[:, :first] - e.corrupted
            assert got.abs().max() < 1e-5, f"{s.label} {what}: exact patching before position {first}"
        for what in ("attn", "mlp"):
            assert torch.equal(getattr(s, what)[L - 1, :-1], torch.zeros_like(getattr(s, what)[L - 1, :-1])), \
                f"{s.label} {what}: the last layer's non-final positions have nonzero AtP"
            d = (getattr(e, what)[L - 1, :-1] - e.corrupted).abs().max()
            assert d < 1e-4, f"{s.label} {what}: exact patching at the last layer's non-final positions moved by {d}"
        assert s.heads.abs().max() > 1e-3 and s.resid[0, first].abs().max() > 1e-3, "AtP is vacuously 0"


def test_head_estimates_sum_to_the_attention_output_estimate(tiny_model, tt) -> None:  # noqa: ANN001
    """Pre-norm: attn_out = Σ_h z_h W_O[h] + b_O is linear in z, so Σ_h AtP(z_h) = Σ_pos AtP(attn_out).

    Post-norm (Gemma 3): the post-attention norm sits between the head sum and attn_out; the identity fails,
    which is why z estimates there carry the norm's nonlinearity (and TransformerLens refuses edge AtP)."""
    res = attribution_patching(tiny_model, tt, generated=False)
    s = res.reference
    heads, attn = s.heads.sum(1), s.attn.sum(1)  # (layer, pair)
    diff, scale = _max_rel(heads, attn)
    if tiny_model.spec.post_norms:
        assert diff > 1e-2 * scale, f"post-norm model: the heads unexpectedly sum to attn_out ({diff:.3g})"
    else:
        assert diff <= 1e-5 * scale, f"Σ heads vs Σ positions of attn_out: max abs diff {diff:.3g} (scale {scale:.3g})"


def test_atp_correlates_with_exact_patching(tiny_model, tt) -> None:  # noqa: ANN001
    """Not an invariant, a check that the estimates mean something on these random models: raw per-pair effects
    (patched − corrupted) of every component of every set correlate positively with exact patching (measured r
    0.38–0.83 over the 8 kinds; heads alone 0.18–0.99)."""
    exact = _exact_patching(tiny_model, tt)
    res = attribution_patching(tiny_model, tt, exact=exact)
    a, e = [], []
    for s, x in zip(res.sets, (exact.reference, *exact.groups)):
        for what in ("resid", "attn", "mlp", "heads"):
            a.append(getattr(s, what).flatten())
            e.append((getattr(x, what) - x.corrupted).flatten())
    r = _pearson(torch.cat(a), torch.cat(e))
    assert r is not None and r > 0.2, f"{tiny_model.spec.model_type}: AtP vs exact Pearson r = {r}"


# --- comparison, summaries, dict ------------------------------------------------------------------------------


def test_correlations_equal_their_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64)
    mx, my = sum(x.tolist()) / 30, sum(y.tolist()) / 30
    num = sum((a - mx) * (b - my) for a, b in zip(x.tolist(), y.tolist()))
    manual = num / math.sqrt(sum((a - mx) ** 2 for a in x.tolist()) * sum((b - my) ** 2 for b in y.tolist()))
    assert abs(_pearson(x, y) - manual) < 1e-12
    assert _pearson(x, x) == pytest.approx(1.0, abs=1e-12) and _pearson(x, -3 * x + 1) == pytest.approx(-1.0, abs=1e-12)
    assert _spearman(x, x.exp()) == pytest.approx(1.0, abs=1e-12), "Spearman is invariant under monotone maps"
    assert _pearson(x, torch.full_like(x, 2.0)) is None and _spearman(torch.ones(5), x[:5]) is None
    assert _pearson(x[:1], y[:1]) is None
    # Average ranks of ties; Spearman = 1 − 6 Σ d² / (n (n² − 1)) without ties.
    assert _ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    rx, ry = _ranks(x).tolist(), _ranks(y).tolist()
    rho = 1 - 6 * sum((a - b) ** 2 for a, b in zip(rx, ry)) / (30 * (30 ** 2 - 1))
    assert abs(_spearman(x, y) - rho) < 1e-12


def test_comparison_top_k_and_worst() -> None:
    exact = torch.arange(12, dtype=torch.float32).view(3, 4) - 5.0  # |value| largest: 6, 5, 4, ...
    same = _compare(exact, exact, [f"c{i}" for i in range(12)])
    assert same.top_k == TOP_K and same.top_k_overlap == 1.0 and same.pearson == pytest.approx(1.0)
    assert all(m.atp == m.exact for m in same.worst) and len(same.worst) == N_WORST
    atp = exact.clone()
    atp.view(-1)[11] = 0.0  # the largest |exact| (6) drops out of AtP's top 10; 0 drops in
    atp.view(-1)[0] = -1.0  # and -5 moves down the ranking (|−1| joins the tail)
    c = _compare(atp, exact, [f"c{i}" for i in range(12)])
    top = lambda v: set(torch.sort(v.flatten().abs(), descending=True, stable=True).indices[:10].tolist())  # noqa: E731
    assert c.top_k_overlap == len(top(atp) & top(exact)) / 10
    assert [m.label for m in c.worst[:2]] == ["c11", "c0"] and c.worst[0].atp == 0.0 and c.worst[0].exact == 6.0
    small = _compare(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 1.0]]), ["a", "b"])
    assert small.top_k == 2 and small.top_k_overlap == 1.0 and small.pearson == pytest.approx(-1.0)


def test_summaries_equal_exact_patchings_own(tiny_model, tt) -> None:  # noqa: ANN001
    """The exact side of each comparison is activation_patching's own normalised mean on the same pairs."""
    exact = _exact_patching(tiny_model, tt)
    res = attribution_patching(tiny_model, tt, exact=exact)
    assert (res.n_pairs, res.n_excluded) == (sum(s.n_used for s in res.sets), sum(s.n - s.n_used for s in res.sets))
    assert [s.used.tolist() for s in res.sets] == [e.used.tolist() for e in (exact.reference, *exact.groups)]
    main = exact.main
    assert main.n_pairs >= 1 and res.n_pairs >= 4, "the tiny models' pairs pass the gap (tests/tiny.py)"
    for what in ("resid", "attn", "mlp"):
        summ: AtPSummary = getattr(res, what)
        assert summ.pairs == ("reference" if main is exact.reference_summary else "pooled")
        assert summ.tokens == main.tokens and summ.n_pairs == main.n_pairs
        diff, _ = _max_rel(summ.exact, getattr(main, what).mean)
        assert diff < 1e-5, f"{what}: exact side differs from activation_patching's summary by {diff}"
        assert summ.atp.shape == summ.exact.shape == (tiny_model.spec.n_layers, len(main.tokens))
    # heads: every used pair of every set
    want = torch.cat([e.normalised("heads") for e in (exact.reference, *exact.groups)], -1).mean(-1)
    diff, _ = _max_rel(res.heads.exact, want)
    assert diff < 1e-5, f"heads: exact side differs by {diff}"
    atp = torch.cat([s.normalised("heads") for s in res.sets], -1).mean(-1)
    assert torch.allclose(res.heads.atp, atp) and res.heads.atp.abs().max() > 1e-3


def test_to_dict_layout(tiny_model, tt) -> None:  # noqa: ANN001
    exact = _exact_patching(tiny_model, tt)
    L, H = tiny_model.spec.n_layers, tiny_model.spec.n_heads
    for with_exact in (True, False):
        d = attribution_patching(tiny_model, tt, exact=exact if with_exact else None).to_dict()
        json.dumps(d, allow_nan=False)  # plain JSON, no NaN
        assert set(d) == {"method", "n_pairs", "n_excluded", "min_gap", "heads", "resid", "attn", "mlp"}
        assert d["method"] == "atp" and d["n_pairs"] + d["n_excluded"] == sum(s[0].shape[0] for s in _sets(tt))
        stats = {"exact", "pearson", "spearman", "top_k", "top_k_overlap", "worst"}
        for what in ("heads", "resid", "attn", "mlp"):
            sec = d[what]
            base = {"pairs", "n_pairs", "atp"} | (set() if what == "heads" else {"tokens"})
            assert set(sec) == base | (stats if with_exact else set()), f"{what}: keys {sorted(sec)}"
            assert sec["n_pairs"] >= 1, f"{what}: no pair passes the gap (tests/tiny.py makes them pass)"
            width = H if what == "heads" else len(sec["tokens"])
            assert len(sec["atp"]) == L and all(len(row) == width for row in sec["atp"])
            if with_exact:
                assert len(sec["exact"]) == L and sec["top_k"] == min(TOP_K, L * width)
                assert 0.0 <= sec["top_k_overlap"] <= 1.0 and len(sec["worst"]) == min(N_WORST, L * width)
                pattern = r"L\d+H\d+" if what == "heads" else r"L\d+ pos \d+ .+"
                assert all(re.fullmatch(pattern, w["label"]) for w in sec["worst"]), sec["worst"]
                gaps = [abs(w["atp"] - w["exact"]) for w in sec["worst"]]
                assert gaps == sorted(gaps, reverse=True)


def test_no_used_pair_and_min_gap(tiny_model, tt) -> None:  # noqa: ANN001
    exact = activation_patching(tiny_model, tt, min_gap=1e9, generated=False)
    res = attribution_patching(tiny_model, tt, exact=exact, min_gap=1e9, generated=False)
    assert res.n_pairs == 0 and res.n_excluded == sum(s.n for s in res.sets)
    d = res.to_dict()
    assert all(d[w]["atp"] == [] and d[w]["n_pairs"] == 0 and d[w]["pearson"] is None
               for w in ("heads", "resid", "attn", "mlp"))
    every = attribution_patching(tiny_model, tt, min_gap=0.0, generated=False)
    s = every.reference
    assert every.n_excluded == 0 and torch.allclose(s.normalised("heads"), s.heads / (s.clean - s.corrupted))


def test_mismatched_exact_is_refused(tiny_model, tt) -> None:  # noqa: ANN001
    exact = _exact_patching(tiny_model, tt)
    with pytest.raises(LogitlabError, match="set"):
        attribution_patching(tiny_model, tt, exact=exact, generated=False)
    with pytest.raises(LogitlabError, match="is not attribution patching's"):
        attribution_patching(tiny_model, tt, exact=exact, max_pairs=1)
    other = dataclasses.replace(exact, reference=dataclasses.replace(exact.reference, clean=exact.reference.clean + 5))
    with pytest.raises(LogitlabError, match="clean logit differences"):
        attribution_patching(tiny_model, tt, exact=other)


def test_backend_without_gradients_is_refused() -> None:
    spec = SimpleNamespace(model_type="opt")
    model = SimpleNamespace(name="stub", runner=SimpleNamespace(capabilities=frozenset({HOOKED_LOOPS}), spec=spec))
    with pytest.raises(LogitlabError, match="attribution patching needs a backend that can gradients"):
        attribution_patching(model, None)  # type: ignore[arg-type]


# --- TransformerLens 4.3's attribution patching -----------------------------------------------------------------


def _tl_scores(model, clean_t, corr_t, correct, incorrect):  # noqa: ANN001, ANN202
    """TransformerLens ``attribution_patch`` node scores, one pair at a time, as (heads (L, H), mlp (L, T),
    embed (T,)) per pair. Its conventions (read from transformer_lens/tools/analysis/attribution_patching.py):
    denoising, gradient on the corrupted run, score (a_clean − a_corrupt) · ∂metric/∂a per node
    (``attn_head_out`` = hook_z of one head at one position, ``mlp_out`` = hook_mlp_out at one position,
    ``embed`` = hook_embed), scores averaged over the batch, so each pair runs alone with its own metric: the
    clean answers' logit difference at the last position, as logitlab's."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch
    bridge = model.bridge
    L, H, T = model.spec.n_layers, model.spec.n_heads, clean_t.shape[1]
    out = []
    for i in range(clean_t.shape[0]):
        inc = incorrect[i:i + 1]

        def metric(logits: torch.Tensor, c: int = int(correct[i]), inc: torch.Tensor = inc) -> torch.Tensor:
            last = logits[0, -1]
            return last[c] - answers.mean_incorrect(last[answers.columns(inc)], inc)[0]
        with torch.enable_grad():  # (the test session runs with gradients off)
            res = attribution_patch(bridge, clean_t[i:i + 1], corr_t[i:i + 1], metric)
        heads, mlp, embed = torch.zeros(L, H), torch.zeros(L, T), torch.zeros(T)
        for node, v in res.node_scores.items():
            if node.kind == "attn_head_out":
                heads[node.layer, node.head] += v  # summed over positions, as exact head patching
            elif node.kind == "mlp_out":
                mlp[node.layer, node.position] = v
            elif node.kind == "embed":
                embed[node.position] = v
        out.append((heads, mlp, embed))
    return out


@pytest.mark.parametrize("tiny_model", ["gpt2", "llama_mha", "gemma3"], indirect=True)
def test_agrees_with_transformer_lens(tiny_model, tt) -> None:  # noqa: ANN001
    """Per-head (z summed over positions), per-position MLP and embedding scores equal TransformerLens's.

    The conventions agree once TL's batch average is undone by running one pair at a time; the embedding
    node (hook_embed) is logitlab's resid_pre of layer 0 (the position embedding, where there is one, is the
    same in both prompts, and its gradient is the residual stream's). On Gemma 3 (post-norms) the node scores
    agree too — TL's hook_mlp_out is after the post-feedforward norm, like logitlab's mlp_out, and both
    differentiate z through the post-attention norm — but TL refuses edge granularity there: a head's
    hook_result is not its residual contribution when a norm follows the head sum (see
    test_head_estimates_sum_to_the_attention_output_estimate)."""
    for clean_t, corr_t, correct, incorrect in _sets(tt)[:2]:
        _, _, est = _estimate(tiny_model.runner, clean_t, corr_t, correct, incorrect)
        for i, (heads, mlp, embed) in enumerate(_tl_scores(tiny_model, clean_t, corr_t, correct, incorrect)):
            for what, tl, mine in (("heads", heads, est["heads"][..., i]), ("mlp", mlp, est["mlp"][..., i]),
                                   ("embed", embed, est["resid"][0, :, i])):
                diff, scale = _max_rel(mine, tl)
                assert diff <= 1e-4 * scale, (f"{tiny_model.spec.model_type} {what} pair {i}: vs TransformerLens, "
                                              f"max abs diff {diff:.3g}")
            assert heads.abs().max() > 1e-3, "vacuous comparison"
    if tiny_model.spec.post_norms:
        from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch
        c, inc = int(tt.pair_correct_ids[0]), tt.pair_incorrect_ids[:1]
        with torch.enable_grad(), pytest.raises(ValueError, match="normalized or scaled before the residual add"):
            attribution_patch(tiny_model.bridge, tt.clean_tokens[:1], tt.corrupted_tokens[:1],
                              lambda lg: lg[0, -1, c] - answers.mean_incorrect(lg[0, -1][answers.columns(inc)], inc)[0],
                              EdgeAttributionConfig(granularity="edge"))
