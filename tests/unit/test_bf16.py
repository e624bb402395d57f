"""bfloat16: answers read out in float32, one attention path, invariants at bfloat16 tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from logitlab.analyses import clean_run
from logitlab.answers import columns, mean_incorrect
from logitlab.interventions import head_entry
from logitlab.model.load import load_model
from logitlab.sweep import SweepSettings, run_sweep
from logitlab.task import load_task, tokenize_task

_bf16: dict[str, object] = {}


@pytest.fixture()
def pair(tiny_model, tiny_task_file: Path):  # noqa: ANN001, ANN201
    """(float32 model, bfloat16 model of the same weights, tokenised tiny task)."""
    kind = tiny_model.spec.model_type + tiny_model.source
    if kind not in _bf16:
        _bf16[kind] = load_model(tiny_model.source, dtype="bfloat16", cache=False)
    m16 = _bf16[kind]
    return tiny_model, m16, tokenize_task(load_task(tiny_task_file), m16.tokenizer)  # type: ignore[attr-defined]


def test_answers_are_read_out_in_float32(pair) -> None:  # noqa: ANN001
    _, m16, t = pair
    r = m16.runner
    assert r.dtype == torch.bfloat16
    run = clean_run(m16, t)
    final = run.cache.resid_final[torch.arange(t.n_prompts), t.final_pos]  # bfloat16 residuals
    # Independent: the same final norm output, everything after it in float32.
    normed = r.final_norm(final)[0].float()
    W_U, b_U = r.w.W_U.float(), r.w.b_U.float()
    logits = normed @ W_U + b_U  # (B, vocab), float32
    cap = r.spec.final_softcap
    if cap is not None:  # Gemma-2: the model's own logits are soft-capped
        logits = cap * torch.tanh(logits / cap)
    rows = torch.arange(t.n_prompts)
    want = logits[rows, t.correct_ids] - mean_incorrect(logits.gather(1, columns(t.incorrect_ids)), t.incorrect_ids)
    want_loss = torch.logsumexp(logits, -1) - logits[rows, t.correct_ids]
    assert run.logit_diff.dtype == torch.float32
    err = (run.logit_diff - want).abs().max().item()
    assert err < 1e-4, f"logit difference not read out in float32 (max diff {err}; bf16 rounding is ~0.03)"
    assert (run.loss - want_loss).abs().max().item() < 1e-4, "loss not read out in float32"


def test_ablating_nothing_reproduces_the_baseline_in_bf16(pair) -> None:  # noqa: ANN001
    _, m16, t = pair
    run = clean_run(m16, t)
    r, c = m16.runner, run.cache
    H, B = r.spec.n_heads, t.n_prompts
    worst = 0.0
    for layer in range(r.spec.n_layers):
        own = c.z[layer].permute(2, 0, 1, 3)  # (H, B, T, dh): every head keeps its own output
        entry = head_entry("own", r, c, layer, torch.arange(H), own, t.final_pos, t.correct_ids, t.incorrect_ids)
        d, lo = run_sweep(r, [entry], True, SweepSettings(chunk_size=3))["own"]
        worst = max(worst, (d.view(H, B) - run.logit_diff).abs().max().item(),
                    (lo.view(H, B) - run.loss).abs().max().item())
    assert worst < 1e-3, f"empty ablation vs baseline in bfloat16: max diff {worst} (two attention paths?)"


def test_bf16_stays_close_to_float32(pair) -> None:  # noqa: ANN001
    m32, m16, t = pair
    a, b = clean_run(m32, t), clean_run(m16, t)
    err = (a.logit_diff - b.logit_diff).abs().max().item()
    assert err < 0.2 * max(1.0, a.logit_diff.abs().max().item()), f"bf16 vs fp32 logit diff: {err}"


def test_bf16_battery_passes_its_reconstruction_check(pair) -> None:  # noqa: ANN001
    """The DLA check uses a bfloat16 tolerance on a bfloat16 run (it reported FAIL on every bf16 run)."""
    from logitlab.battery import RunConfig, run_battery
    from logitlab.report.findings import DLA_TOLERANCE, dla_tolerance, key_findings
    from logitlab.results import validate_results
    from logitlab.task import load_task
    _, m16, t = pair
    res = run_battery(m16, t.task, RunConfig(dtype="bfloat16", patching_pairs=0))
    validate_results(res)
    assert dla_tolerance(res) > DLA_TOLERANCE
    assert res["dla"]["relative_error"] <= dla_tolerance(res), res["dla"]["relative_error"]
    text = next(f.text for f in key_findings(res) if "reconstructs" in f.text)
    assert "passes" in text and "bfloat16" in text, text
