"""Prompts with different numbers of incorrect answers; mean ablation aligned at each prompt's end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from logitlab.analyses import clean_run, dla, head_ablation
from logitlab.answers import PAD
from logitlab.battery import RunConfig, run_battery
from logitlab.interventions import head_mean_values
from logitlab.reference import loop_head_ablation
from logitlab.results import validate_results
from logitlab.task import load_task, tokenize_task

MIXED_YAML = """
name: mixed-incorrect
prepend_bos: true
templates: ["{} is a great friend, isn’t", "{} is really tall, isn’t"]
classes:
  she: {answer: " she", incorrect: [" he"]}
  he: {answer: " he", incorrect: [" she"]}
  it: {answer: " it", incorrect: [" he", " she"]}
subjects: [{name: Mary, class: she}, {name: John, class: he}, {name: "The car", class: it}]
patching:
  - {clean: "Mary is a great friend, isn’t", corrupted: "John is a great friend, isn’t", class: she}
"""


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "mixed.yaml"
    path.write_text(MIXED_YAML, encoding="utf-8")
    return path


def test_prompts_may_have_different_numbers_of_incorrect_answers(tiny_model, mixed_file: Path) -> None:  # noqa: ANN001
    task = load_task(mixed_file)
    tt = tokenize_task(task, tiny_model.tokenizer)
    assert tt.incorrect_ids.shape[1] == 2 and bool((tt.incorrect_ids == PAD).any()), "padded incorrect ids"
    run = clean_run(tiny_model, tt)
    # Independent: full logits from the bridge, correct − mean over the prompt's own incorrect answers.
    tok = tiny_model.tokenizer
    with torch.no_grad():
        logits = tiny_model.bridge(tt.tokens)
    for i in range(tt.n_prompts):
        row = logits[i, int(tt.final_pos[i])].float()
        inc = [tok(a, add_special_tokens=False)["input_ids"][0] for a in task.incorrect[i]]
        want = row[tok(task.correct[i], add_special_tokens=False)["input_ids"][0]] - row[inc].mean()
        assert abs(float(run.logit_diff[i]) - float(want)) < 1e-4, f"prompt {i}: {float(run.logit_diff[i])} != {want}"
    res = dla(run)
    ref = run.attributed_logit_diff  # before the final-logit soft-cap on a soft-capped model
    err = ((res.reconstructed + res.bias_term) - ref).abs().max().item()
    assert err < 1e-4 * max(1.0, ref.abs().max().item()), f"DLA + bias vs logit diff: {err}"
    ab = head_ablation(run, "zero")
    ref_d, ref_l = loop_head_ablation(tiny_model, tt.tokens, tt.final_pos, tt.correct_ids, tt.incorrect_ids)
    assert (ab.logit_diff - ref_d).abs().max() < 1e-4 and (ab.loss - ref_l).abs().max() < 1e-4


def test_battery_runs_a_mixed_incorrect_task(tiny_model, mixed_file: Path) -> None:  # noqa: ANN001
    res = run_battery(tiny_model, load_task(mixed_file), RunConfig())
    validate_results(res)
    answers = dict(zip(res["task"]["prompts"], res["task"]["answers"]))
    assert answers["The car is really tall, isn’t"][1] == " he /  she"


def test_mean_ablation_is_aligned_at_each_prompts_end(tiny_model, tiny_task_file: Path) -> None:  # noqa: ANN001
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    assert len(set(tt.final_pos.tolist())) > 1, "the tiny task mixes prompt lengths"
    run = clean_run(tiny_model, tt)
    z, fp = run.cache.z, tt.final_pos
    means = head_mean_values(run.cache, fp)  # (L, B, T, H, dh)
    rows = torch.arange(tt.n_prompts)
    final_mean = z[:, rows, fp].mean(1)  # (L, H, dh): mean of the prompts' final positions
    for b in range(tt.n_prompts):
        err = (means[:, b, fp[b]] - final_mean).abs().max().item()
        assert err < 1e-5, f"prompt {b}: replacement at its final position is not the mean of final positions ({err})"
    # One position before the end: the mean over prompts of their own second-to-last position.
    before = z[:, rows, fp - 1].mean(1)
    assert (means[:, 0, fp[0] - 1] - before).abs().max() < 1e-5
    # Mean ablation equals one hooked forward per head with these per-prompt means.
    ab = head_ablation(run, "mean")
    ref_d, _ = loop_head_ablation(tiny_model, tt.tokens, fp, tt.correct_ids, tt.incorrect_ids, means)
    assert (ab.logit_diff - ref_d).abs().max() < 1e-4


def test_same_length_prompts_keep_the_plain_mean(tiny_model, tiny_task_file: Path) -> None:  # noqa: ANN001
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    run = clean_run(tiny_model, tt)
    same = (tt.final_pos == tt.final_pos[0]).nonzero().squeeze(-1)
    assert len(same) >= 2
    sub = type(run.cache)(**{k: (v[:, same] if k in ("z",) else v) for k, v in vars(run.cache).items()})
    means = head_mean_values(sub, tt.final_pos[same])
    assert means.dim() == 4, "same-length prompts share one replacement (the shared-prefix path stays on)"
    n = int(tt.final_pos[same[0]]) + 1
    assert (means[:, :n] - run.cache.z[:, same, :n].mean(1)).abs().max() < 1e-6
