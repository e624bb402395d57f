"""Invariants of the analyses on tiny random models of every architecture kind."""

import pytest
import torch

from logitlab.analyses import (
    clean_run, dla, head_ablation, head_attribution, layer_attribution, logit_lens, predict, task_predictions,
)
from logitlab.analyses.patching import activation_patching
from logitlab.interventions import head_entry, head_mean_values, shared_prefix
from logitlab.reference import hooked_metrics, loop_head_ablation, loop_patching
from logitlab.sweep import Entry, SweepSettings, run_sweep
from logitlab.task import load_task, tokenize_task


@pytest.fixture()
def run(tiny_model, tiny_task_file):  # noqa: ANN001, ANN201
    return clean_run(tiny_model, tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= tol, f"{what}: max abs diff {diff} > {tol}"


def test_prompts_have_different_lengths(run) -> None:  # noqa: ANN001
    assert len(set(run.task.final_pos.tolist())) > 1, "the tiny task must mix prompt lengths"


def test_logit_diff_and_loss_match_full_logits(run) -> None:  # noqa: ANN001
    m, t = run.model, run.task
    d, lo = hooked_metrics(m, t.tokens, t.final_pos, t.correct_ids, t.incorrect_ids)
    _close(run.logit_diff, d, 1e-4, "logit diff vs bridge logits")
    _close(run.loss, lo, 1e-4, "loss vs bridge log-softmax")


def test_task_predictions_equal_predict_per_prompt(run) -> None:  # noqa: ANN001
    # Read off the padded clean run vs one unpadded forward per prompt (prompts of different lengths).
    t = run.task
    for i, p in enumerate(task_predictions(run, t.n_prompts, k=5)):
        q = predict(run.model, t.task.prompts[i], t.task.correct[i], k=5, prepend_bos=t.task.prepend_bos)
        assert p.tokens == q.tokens and [r[0] for r in p.top] == [r[0] for r in q.top]
        _close(torch.tensor([r[1] for r in p.top]), torch.tensor([r[1] for r in q.top]), 1e-4, "top-k logits")
        assert p.answer_rank == q.answer_rank and abs(p.answer_prob - q.answer_prob) < 1e-5


def test_each_prompt_scored_at_its_own_final_position(run) -> None:  # noqa: ANN001
    m, t = run.model, run.task
    for i in range(t.n_prompts):
        n = int(t.final_pos[i]) + 1
        d, _ = hooked_metrics(m, t.tokens[i:i + 1, :n], torch.tensor([n - 1]), t.correct_ids[i:i + 1],
                              t.incorrect_ids[i:i + 1])
        _close(run.logit_diff[i:i + 1], d, 1e-4, f"prompt {i} alone vs in the padded batch")


def test_dla_reconstructs_and_components_sum(run) -> None:  # noqa: ANN001
    res = dla(run)
    total = res.reconstructed + res.bias_term
    ref = run.attributed_logit_diff  # the model's own; before the final-logit soft-cap on a soft-capped model
    _close(total, ref, 1e-4 * max(1.0, ref.abs().max().item()), "DLA + bias vs model")
    assert res.relative_error < 1e-4 or ref.mean().abs() < 1e-3
    layers = layer_attribution(run)
    _close(layers.values.sum(0), res.reconstructed, 1e-4, "sum of layer attributions vs reconstruction")
    lens = logit_lens(run)
    assert lens.labels[-1] == "final_post" and lens.labels[:2] == ("0_pre", "0_mid")
    assert len(lens.labels) == 2 * run.model.spec.n_layers + 1
    _close(lens.values[-1], res.reconstructed, 1e-5, "logit lens final_post vs reconstruction")


def test_heads_sum_to_attn_out(run) -> None:  # noqa: ANN001
    heads = head_attribution(run)
    layers = layer_attribution(run)
    for layer in range(run.model.spec.n_layers):
        attn = layers.values[layers.labels.index(f"{layer}_attn_out")]
        _close(heads.values[layer].sum(0) + heads.bias[layer], attn, 1e-4, f"layer {layer} heads + bias vs attn_out")
    assert (heads.naive is not None) == run.model.spec.post_norms


def test_empty_ablation_is_baseline(run) -> None:  # noqa: ANN001
    # Replacing every head's output by its own clean value is an ablation that changes nothing.
    settings = SweepSettings(chunk_size=3)
    H, B = run.model.spec.n_heads, run.task.n_prompts
    r, t = run.model.runner, run.task
    for layer in range(run.model.spec.n_layers):
        own = run.cache.z[layer].permute(2, 0, 1, 3)  # (H, B, T, dh)
        entry = head_entry("own", r, run.cache, layer, torch.arange(H), own, t.final_pos, t.correct_ids,
                           t.incorrect_ids)
        d, lo = run_sweep(r, [entry], True, settings)["own"]
        _close(d.view(H, B), run.logit_diff.expand(H, -1), 1e-4, f"empty ablation logit diff, layer {layer}")
        _close(lo.view(H, B), run.loss.expand(H, -1), 1e-4, f"empty ablation loss, layer {layer}")


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablation_sweep_equals_one_forward_per_head(run, kind) -> None:  # noqa: ANN001
    t = run.task
    assert shared_prefix(t.tokens, t.final_pos) >= 1, "the tiny task's prompts share their BOS: the shared-prefix path must run"
    res = head_ablation(run, kind, SweepSettings(chunk_size=5))
    means = head_mean_values(run.cache, t.final_pos) if kind == "mean" else None
    ref_d, ref_l = loop_head_ablation(run.model, t.tokens, t.final_pos, t.correct_ids, t.incorrect_ids, means)
    _close(res.logit_diff, ref_d, 1e-4, f"{kind}-ablation logit diff: engine vs hooked loop")
    _close(res.loss, ref_l, 1e-4, f"{kind}-ablation loss: engine vs hooked loop")
    assert (res.logit_diff - run.logit_diff).abs().max() > 1e-3, "ablation had no effect at all"


def test_patching_equals_one_forward_per_patch(tiny_model, tiny_task_file) -> None:
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    ref = activation_patching(tiny_model, tt, SweepSettings(chunk_size=7), generated=False).reference
    args = (tiny_model, tt.clean_tokens, tt.corrupted_tokens, tt.pair_correct_ids, tt.pair_incorrect_ids)
    for what, mine in [("resid_pre", ref.resid), ("attn_out", ref.attn), ("mlp_out", ref.mlp), ("z", ref.heads)]:
        _close(mine, loop_patching(*args, what, per_pair=True), 1e-4, f"{what} patching: engine vs hooked loop")
        _close(mine.mean(-1), loop_patching(*args, what), 1e-4, f"{what} patching, mean over pairs")


def test_patching_endpoints(tiny_model, tiny_task_file) -> None:
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    ref = activation_patching(tiny_model, tt, generated=False).reference
    r = tiny_model.runner
    clean, corr = r.run_with_cache(tt.clean_tokens), r.run_with_cache(tt.corrupted_tokens)
    n, T = tt.clean_tokens.shape
    fp = torch.full((n,), T - 1)
    gap = ref.clean - ref.corrupted
    for layer in range(tiny_model.spec.n_layers):
        for source, expected, raw in [(clean, 1.0, ref.clean), (corr, 0.0, ref.corrupted)]:
            entry = Entry(key="all", layer=layer, stage="pre", make=lambda idx, s=source, l=layer: s.resid_pre[l, idx],
                          final_pos=fp, correct=tt.pair_correct_ids, incorrect=tt.pair_incorrect_ids)
            d, _ = run_sweep(r, [entry], False, SweepSettings())["all"]
            _close(d, raw, 1e-4, f"patching everything/nothing at layer {layer}, per pair (raw)")
            got = ((d - ref.corrupted) / gap)[gap.abs() > 0.1]  # each pair by its own gap
            assert got.numel(), f"every reference pair's gap is tiny ({gap.tolist()}): the check would be vacuous"
            assert (got - expected).abs().max() < 1e-3, \
                f"patching everything/nothing at layer {layer}: {got} != {expected}"
    # Patching the full residual stream at the first position of layer 0 touches only the BOS token.
    assert float((ref.resid[0, 0] - ref.corrupted).abs().max()) < 1e-4


def test_sweep_progress_counts_every_item_once(run, tiny_model, tiny_task_file) -> None:  # noqa: ANN001
    steps: list[int] = []
    head_ablation(run, "zero", SweepSettings(chunk_size=4, progress=steps.append))
    assert all(isinstance(n, int) and n > 0 for n in steps) and len(steps) > 1
    assert sum(steps) == run.model.spec.n_layers * run.model.spec.n_heads * run.task.n_prompts
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    steps.clear()
    activation_patching(tiny_model, tt, SweepSettings(chunk_size=7, progress=steps.append), generated=False)
    n_pairs, T = tt.clean_tokens.shape
    assert sum(steps) == tiny_model.spec.n_layers * n_pairs * (3 * T + tiny_model.spec.n_heads)


def test_chunks_count_the_rows_that_run(tiny_model, tiny_task_file, monkeypatch) -> None:  # noqa: ANN001
    """Items that skip their first positions (patching at a later position, a shared context) run fewer rows, so a
    CPU chunk holds more of them: CPU_CHUNK_ROWS over the rows that run; the memory estimate shrinks with the
    rows too. The automatic chunks (one per prefix) give patching's numbers with small fixed chunks."""
    import logitlab.sweep as sweep
    r = tiny_model.runner
    big = SweepSettings(max_memory=2**34)
    assert sweep.auto_chunk(r, 64, big) == sweep.CPU_CHUNK_ROWS // 64
    assert sweep.auto_chunk(r, 64, big, prefix=60) == sweep.CPU_CHUNK_ROWS // 4
    tight = SweepSettings(max_memory=2**23)
    assert sweep.auto_chunk(r, 64, tight, prefix=60) > sweep.auto_chunk(r, 64, tight)
    seen: dict[int, int] = {}
    real = sweep.auto_chunk

    def small(runner, seq_len, settings, prefix=0):  # noqa: ANN001, ANN202
        seen[prefix] = real(runner, seq_len, settings, prefix)
        return max(1, seen[prefix] // 8)  # several chunks per prefix at these sizes

    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    monkeypatch.setattr(sweep, "auto_chunk", small)
    auto = activation_patching(tiny_model, tt, SweepSettings(), generated=False).reference
    assert len(seen) > 1 and seen[max(seen)] > seen[0], seen
    fixed = activation_patching(tiny_model, tt, SweepSettings(chunk_size=3), generated=False).reference
    for what in ("resid", "attn", "mlp", "heads"):
        _close(getattr(auto, what), getattr(fixed, what), 1e-5, f"{what} patching: automatic vs fixed chunks")
