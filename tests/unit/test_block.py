"""The one block description: FLOPs counted on it, gradients through it, sweeps keyed by entry."""

from __future__ import annotations

import pytest
import torch

from logitlab.analyses import clean_run
from logitlab.interventions import with_head_change
from logitlab.model.backend import GRAD, SWEEP, Backend, has
from logitlab.model.runner import Runner
from logitlab.sweep import Entry, SweepSettings, run_sweep, sweep_flops
from logitlab.task import load_task, tokenize_task


def _closed_form_flops(r: Runner, layer: int, stage: str, T: int, k: int, with_loss: bool, prefix: int) -> float:
    """FLOPs of one sweep item written out by hand (an independent count of the same computation)."""
    s = r.spec
    L, D, dh = s.n_layers, s.d_model, s.d_head
    n = T - prefix  # positions computed
    d_mlp = r.w.W_in.shape[-1]
    moe = s.moe

    def mlp(l: int) -> int:  # per token
        if moe is not None and moe.sparse[l]:  # router, every expert's gate/up/down, their weighted sum
            return 2 * D * moe.n_experts + 2 * D * moe.d_expert * 3 * moe.n_experts + 2 * moe.n_experts * D
        return 2 * D * d_mlp * (3 if r.w.W_gate is not None else 2)
    qo = 2 * D * s.n_heads * dh * 2  # query and output projections, per token
    kv = 2 * D * 2 * s.n_kv_heads * dh  # key and value projections, per token
    mix = 2 * 2 * s.n_heads * T * dh  # scores and weighted values, per query
    start = layer if stage == "pre" else layer + 1
    total = sum(n * (qo + kv + mix + mlp(l)) for l in range(start, L - 1))
    if start <= L - 1:
        total += n * kv + qo + mix + mlp(L - 1)  # the last block: keys/values of every position, one query
    if stage == "mid":
        total += mlp(layer) * (1 if layer == L - 1 else n)
    return float(total + 2 * D * (1 + k) + (2 * D * s.d_vocab if with_loss else 0))


def test_flops_counted_on_the_code_equal_the_closed_form(tiny_model) -> None:  # noqa: ANN001
    r = tiny_model.runner
    L, T = r.spec.n_layers, 12
    stages = ("pre", "post") if r.spec.parallel else ("pre", "mid", "post")
    for layer in (0, L - 1):
        for stage in stages:
            for prefix in (0, 3):
                for with_loss in (False, True):
                    got = sweep_flops(r, layer, stage, T, 2, with_loss, prefix)
                    want = _closed_form_flops(r, layer, stage, T, 2, with_loss, prefix)
                    assert got == want, f"{r.spec.model_type} ({layer}, {stage}, prefix {prefix}): {got} != {want}"


def _float64(runner: Runner) -> Runner:
    return Runner(runner.spec, runner.w.to(runner.device, torch.float64))


def test_gradients_through_the_block_match_finite_differences(tiny_model, tiny_task_file) -> None:  # noqa: ANN001
    """Directional derivatives of the logit difference w.r.t. every layer's activations, float64."""
    t = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    r = _float64(tiny_model.runner)
    assert has(r, GRAD)
    fp, c, i = t.final_pos, t.correct_ids, t.incorrect_ids
    diff, grads = r.grad_run(t.tokens, fp, c, i)
    cache = r.run_with_cache(t.tokens)
    rows = torch.arange(t.n_prompts)
    base = r.answer_metrics(cache.resid_final[rows, fp], c, i, False)[0]
    assert (diff - base).abs().max() < 1e-10, "grad_run's logit difference differs from the cached run's"
    g = torch.Generator().manual_seed(0)
    eps = 1e-5

    def metric(layer: int, stage: str, x: torch.Tensor) -> torch.Tensor:
        return r.answer_metrics(r.run_from(layer, stage, x, final_pos=fp), c, i, False)[0]

    H = r.spec.n_heads
    for layer in range(r.spec.n_layers):
        edits = {
            "resid_pre": (cache.resid_pre[layer], lambda x, l=layer: metric(l, "pre", x)),
            "attn_out": (cache.attn_out[layer], lambda x, l=layer: metric(
                l, r.attn_entry_stage, r.after_attention(l, cache.resid_pre[l], x, cache.mlp_out[l]))),
            "mlp_out": (cache.mlp_out[layer], lambda x, l=layer: metric(l, "post", cache.resid_mid[l] + x)),
        }
        for name, (act, f) in edits.items():
            d = torch.randn(act.shape, generator=g, dtype=act.dtype)
            fd = (f(act + eps * d) - f(act - eps * d)) / (2 * eps)  # (B,)
            an = (grads[name][layer] * d).flatten(1).sum(-1)
            err = (fd - an).abs().max().item()
            assert err < 1e-5 * max(1.0, an.abs().max().item()), f"{r.spec.model_type} {name} L{layer}: {err}"
        for h in range(H):  # z of one head at a time: with_head_change is the edit sweeps use
            d = torch.randn(cache.z[layer][:, :, h].shape, generator=g, dtype=cache.z.dtype)  # (B, T, dh)

            def fz(sign: float, h: int = h, d: torch.Tensor = d, layer: int = layer) -> torch.Tensor:
                x = with_head_change(r, cache, layer, rows, torch.full((t.n_prompts,), h), sign * eps * d)
                return metric(layer, r.attn_entry_stage, x)
            fd = (fz(1.0) - fz(-1.0)) / (2 * eps)
            an = (grads["z"][layer][:, :, h] * d).flatten(1).sum(-1)
            err = (fd - an).abs().max().item()
            assert err < 1e-5 * max(1.0, an.abs().max().item()), f"{r.spec.model_type} z L{layer}H{h}: {err}"


def test_backends_implement_the_protocol(tiny_model) -> None:  # noqa: ANN001
    r = tiny_model.runner
    assert isinstance(r, Backend) and has(tiny_model, SWEEP) and has(tiny_model, GRAD)


def test_sweep_results_are_keyed_by_entry(tiny_model, tiny_task_file) -> None:  # noqa: ANN001
    run = clean_run(tiny_model, tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer))
    r, t, c = tiny_model.runner, run.task, run.cache
    L = r.spec.n_layers

    def entry(key: object, layer: int) -> Entry:
        return Entry(key=key, layer=layer, stage="pre", make=lambda idx, l=layer: c.resid_pre[l, idx],
                     final_pos=t.final_pos, correct=t.correct_ids, incorrect=t.incorrect_ids)
    keys = [("clean", layer) for layer in reversed(range(L))]
    out = run_sweep(r, [entry(k, k[1]) for k in keys], True, SweepSettings(chunk_size=4))
    assert list(out) == keys, "results come back in the caller's order, under each entry's key"
    for k in keys:  # re-entering the clean run anywhere gives the clean metrics
        assert (out[k].logit_diff - run.logit_diff).abs().max() < 1e-4, f"entry {k}"
        assert (out[k].loss - run.loss).abs().max() < 1e-4, f"entry {k}"
    with pytest.raises(ValueError, match="share the key"):
        run_sweep(r, [entry("a", 0), entry("a", 1)], False, SweepSettings())
