"""Uncertainty on attributions, robustness across templates, and findings that never overclaim.

On tiny random models of every kind: the CIs contain their means and shrink with n; the per-template numbers
equal plain means computed here from the clean run; the top heads per template equal an argmax computed here;
the DLA check is per prompt. On synthetic results: each overclaiming sentence of the old findings is gone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from logitlab.analyses import (
    clean_run, dla, head_ablation, head_attribution, layer_attribution, logit_diff, logit_lens, robustness,
    unembed_bias,
)
from logitlab.analyses.attribution import DLAResult
from logitlab.analyses.heads import HeadAttributionResult
from logitlab.analyses.logit_diff import LogitDiffResult
from logitlab.battery import RunConfig, run_battery
from logitlab.errors import LogitlabError
from logitlab.model.load import Model
from logitlab.report import key_findings
from logitlab.results import validate_results
from logitlab.task import load_task, task_from_dict, tokenize_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from synthetic import make_results  # noqa: E402


def _width(ci: list[float]) -> float:
    return ci[1] - ci[0]


def _run(model: Model, task_file: Path):  # noqa: ANN202
    return clean_run(model, tokenize_task(load_task(str(task_file)), model.tokenizer))


# ---------------------------------------------------------------------------------------------------------
# CIs


def test_cis_contain_their_means(tiny_model: Model, tiny_task_file: Path) -> None:
    run = _run(tiny_model, tiny_task_file)
    ld = logit_diff(run).to_dict()
    assert ld["ci"][0] <= ld["mean"] <= ld["ci"][1], f"logit_diff: {ld['mean']} not in {ld['ci']}"
    for name, res in (("layer_attribution", layer_attribution(run)), ("logit_lens", logit_lens(run))):
        d = res.to_dict()
        bad = [(lab, v, c) for lab, v, c in zip(d["labels"], d["values"], d["ci"]) if not c[0] - 1e-6 <= v <= c[1] + 1e-6]
        assert not bad, f"{name}: means outside their CIs: {bad[:3]}"
    hd = head_attribution(run).to_dict()
    L, H = len(hd["values"]), len(hd["values"][0])
    assert [len(hd["ci"]), len(hd["ci"][0]), len(hd["ci"][0][0])] == [L, H, 2]
    bad = [(l, h) for l in range(L) for h in range(H)
           if not hd["ci"][l][h][0] - 1e-6 <= hd["values"][l][h] <= hd["ci"][l][h][1] + 1e-6]
    assert not bad, f"head means outside their CIs: {bad}"
    top = hd["top"]
    flat = [(abs(v), l, h) for l, row in enumerate(hd["values"]) for h, v in enumerate(row)]
    assert (top["layer"], top["head"]) == max(flat)[1:], "top head is not the largest |mean|"
    assert top["difference"] >= -1e-6 and top["difference_ci"][0] <= top["difference_ci"][1]


def test_cis_shrink_with_n() -> None:
    """The same per-prompt values repeated 16 times: the bootstrap CI narrows about 4×."""
    x = torch.randn(40, generator=torch.Generator().manual_seed(1)) + 1.0
    one, many = LogitDiffResult(x, x.abs()).to_dict(), LogitDiffResult(x.repeat(16), x.abs().repeat(16)).to_dict()
    ratio = _width(one["ci"]) / _width(many["ci"])
    assert 3.0 < ratio < 5.5, f"CI width ratio {ratio:.2f} for 16× the prompts (expected ≈ 4)"
    heads = HeadAttributionResult(x.view(1, 1, -1).repeat(2, 3, 1), torch.zeros(2, 40), None).to_dict()
    heads16 = HeadAttributionResult(x.repeat(16).view(1, 1, -1).repeat(2, 3, 1), torch.zeros(2, 640), None).to_dict()
    r = _width(heads["ci"][1][2]) / _width(heads16["ci"][1][2])
    assert 3.0 < r < 5.5, f"head CI width ratio {r:.2f}"


def test_head_separation() -> None:
    """A clearly larger head (here a negative one) is separated; two heads of equal size are tied."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 2, 200, generator=g) * 0.1
    means = torch.tensor([[0.5, -2.0], [0.3, 0.1]])
    res = HeadAttributionResult(means[..., None] + noise, torch.zeros(2, 200), None).top_separation()
    assert (res["layer"], res["head"]) == (0, 1) and res["value"] < 0
    assert res["runner_up"] == [0, 0] and res["difference_ci"][0] > 0 and res["tied"] == []
    assert res["difference"] == pytest.approx(2.0 - 0.5, abs=0.05)
    means = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    res = HeadAttributionResult(means[..., None] + noise, torch.zeros(2, 200), None).top_separation()
    assert res["difference_ci"][0] <= 0 <= res["difference_ci"][1], res
    assert res["tied"] and res["runner_up"] in res["tied"]


def test_bootstrap_is_cheap_on_the_large_task() -> None:
    """pronouns-large's head attribution: 18 × 4 heads × 520 prompts (measured: tens of milliseconds)."""
    import time
    values = torch.randn(18, 4, 520)
    t0 = time.perf_counter()
    HeadAttributionResult(values, torch.zeros(18, 520), None).to_dict()
    dt = time.perf_counter() - t0
    assert dt < 5.0, f"head attribution summary took {dt:.2f} s"


# ---------------------------------------------------------------------------------------------------------
# DLA reconstruction per prompt


def test_dla_per_prompt_check_with_mean_near_zero() -> None:
    """she and he prompts cancel (mean 1e-7): the old relative error of the means blew up; the new one does not."""
    model = torch.tensor([4.0, -4.0 + 1e-7, 3.0, -3.0], dtype=torch.float64)
    bias = torch.full((4,), 0.25, dtype=torch.float64)
    res = DLAResult(model - bias + 1e-6, bias, model)
    old = abs(float(res.reconstructed.mean() + res.bias_term.mean() - model.mean())) / abs(float(model.mean()))
    assert old > 1.0, "the setup must blow up the old formula"
    assert res.relative_error == pytest.approx(1e-6 / 3.0, rel=1e-3), res.relative_error_per_prompt
    assert res.max_abs_error == pytest.approx(1e-6, rel=1e-3)
    d = res.to_dict()
    assert len(d["relative_error_per_prompt"]) == 4 and d["relative_error"] == max(d["relative_error_per_prompt"])
    # A prompt near 0 is measured against 1 logit, not against itself.
    near = torch.tensor([1e-9, 2.0], dtype=torch.float64)
    assert DLAResult(near - bias[:2] + 1e-7, bias[:2], near).relative_error == pytest.approx(1e-7, rel=1e-3)


def test_dla_errors_that_cancel_on_the_mean_fail() -> None:
    model = torch.tensor([2.0, 3.0], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    res = DLAResult(model + torch.tensor([0.5, -0.5], dtype=torch.float64), zero, model)
    assert res.relative_error == pytest.approx(0.25), "per-prompt errors of ±0.5 must not cancel"
    r = make_results()
    r["dla"].update(res.to_dict())
    text = next(f.text for f in key_findings(r) if "reconstructs" in f.text)
    assert "fails" in text and "2.5e-01" in text, text


def test_dla_per_prompt_on_every_kind(tiny_model: Model, tiny_task_file: Path) -> None:
    res = dla(_run(tiny_model, tiny_task_file))
    assert res.relative_error < 1e-4, f"max per-prompt relative error {res.relative_error:.2e}"
    assert res.max_abs_error <= res.relative_error * max(1.0, float(res.model.abs().max())) + 1e-12


# ---------------------------------------------------------------------------------------------------------
# Robustness across templates


def _template_groups(task) -> dict[int, list[int]]:  # noqa: ANN001
    """Prompt indices per template, found by matching the prompt strings (not Task.prompt_template)."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(task.prompts):
        matches = [t for t, tpl in enumerate(task.templates)
                   if any(p == tpl.replace("{}", s) for s in task.prompt_subject)]
        assert len(matches) == 1, f"prompt {p!r} matches templates {matches}"
        groups.setdefault(matches[0], []).append(i)
    return groups


def test_robustness_per_template(tiny_model: Model, tiny_task_file: Path) -> None:
    run = _run(tiny_model, tiny_task_file)
    heads = head_attribution(run)
    ablations = {k: head_ablation(run, k) for k in ("zero", "mean")}
    rob = robustness(run, heads, ablations).to_dict()
    task = run.task.task
    groups = _template_groups(task)
    assert [r["index"] for r in rob["templates"]] == sorted(groups) == [0, 1]
    H = heads.values.shape[1]
    for row in rob["templates"]:
        idx = groups[row["index"]]
        ld = run.logit_diff.cpu()[idx]
        assert row["n"] == len(idx) == 4 and row["template"] == task.templates[row["index"]]
        assert row["mean"] == pytest.approx(float(ld.mean()), abs=1e-5)
        assert row["ci"][0] <= row["mean"] <= row["ci"][1]
        m = heads.values[..., idx].mean(-1)  # (L, H)
        flat = int(m.abs().flatten().argmax())
        assert row["top_dla"]["head"] == [flat // H, flat % H], f"template {row['index']}: DLA argmax"
        assert row["top_dla"]["value"] == pytest.approx(float(m.flatten()[flat]), abs=1e-5)
        for kind, ab in ablations.items():
            drop = (ab.logit_diff[..., idx] - ab.baseline_logit_diff[idx]).mean(-1)  # (L, H)
            j = int(drop.flatten().argmin())
            assert row["top_ablation"][kind]["head"] == [j // H, j % H], f"template {row['index']}: {kind} argmin"
    tops = [tuple(r["top_dla"]["head"]) for r in rob["templates"]]
    kh = rob["key_heads"]["dla"]
    assert kh["agree"] == (len(set(tops)) == 1) and kh["count"] == max(tops.count(t) for t in tops)
    for s in rob["subjects"]:
        idx = [i for i, p in enumerate(task.prompts) if task.prompt_subject[i] == s["subject"]]
        assert s["n"] == 2 and s["mean"] == pytest.approx(float(run.logit_diff.cpu()[idx].mean()), abs=1e-5)


def test_robustness_needs_two_templates(tiny_model: Model) -> None:
    one = task_from_dict({"name": "one", "templates": ["{} is a great friend, isn’t"],
                          "classes": {"she": {"answer": " she", "incorrect": [" he"]},
                                      "he": {"answer": " he", "incorrect": [" she"]}},
                          "subjects": [{"name": "Mary", "class": "she"}, {"name": "John", "class": "he"}]})
    run = clean_run(tiny_model, tokenize_task(one, tiny_model.tokenizer))
    with pytest.raises(LogitlabError, match="two or more templates"):
        robustness(run, head_attribution(run))
    results = run_battery(tiny_model, one, RunConfig(n_predictions=0))
    validate_results(results)
    assert "robustness" not in results


# ---------------------------------------------------------------------------------------------------------
# Unembedding bias for every answer pair


def test_unembed_bias_every_pair(tiny_model: Model) -> None:
    task = task_from_dict({"name": "pairs", "prompts": [
        {"prompt": "Mary is a great friend, isn’t", "correct": " she", "incorrect": [" he"]},
        {"prompt": "John is a great friend, isn’t", "correct": " he", "incorrect": [" she", " it"]},
        {"prompt": "Amy is a great friend, isn’t", "correct": " she", "incorrect": [" he"]}]})
    tt = tokenize_task(task, tiny_model.tokenizer)
    res = unembed_bias(tiny_model, tt).to_dict()
    b_U = tiny_model.runner.w.b_U.float().cpu()
    she, he = int(tt.correct_ids[0]), int(tt.correct_ids[1])
    it = int(tt.incorrect_ids[1, 1])
    assert int(tt.incorrect_ids[0, 1]) == -1, "the first prompt's incorrect ids are padded"
    assert [(p["correct"], p["incorrect"], p["n_prompts"]) for p in res["pairs"]] == [
        (" she", " he", 2), (" he", " / ".join(tiny_model.to_str_tokens([she, it])), 1)]
    expected = [float(b_U[she] - b_U[he]), float(b_U[he] - (b_U[she] + b_U[it]) / 2)]
    got = [p["difference"] for p in res["pairs"]]
    assert got == pytest.approx(expected, abs=1e-6), f"pairs {got} vs b_U {expected}"
    assert res["difference"] == pytest.approx(expected[0], abs=1e-6), "the top-level keys are the first pair"


# ---------------------------------------------------------------------------------------------------------
# Findings that never overclaim (each fails on the old findings)


def _text(results: dict, figure: str) -> str:
    return next(f.text for f in key_findings(results) if f.figure_id == figure and "reconstructs" not in f.text)


def test_mostly_only_above_half_of_the_total() -> None:
    r = make_results()
    la = r["layer_attribution"]
    n = len(la["values"])
    la["values"] = [1.0] * n  # evenly spread: three components hold 3/n < 50%
    text = _text(r, "layer_attribution")
    assert "mostly" not in text and "carried" not in text.replace("no three components carry", ""), text
    assert f"{round(300 / n)}%" in text, text


def test_mostly_counts_only_the_named_carriers() -> None:
    """+3 and −3 hold 60% together, but the carrier alone 30%: no 'carried mostly by'."""
    r = make_results()
    la = r["layer_attribution"]
    n = len(la["values"])
    la["values"] = [3.0, -3.0] + [4.0 / (n - 2)] * (n - 2)
    text = _text(r, "layer_attribution")
    assert "mostly" not in text, text
    la["values"] = [6.0, -1.0] + [1.0 / (n - 2)] * (n - 2)  # 6 / 8 = 75%
    text = _text(r, "layer_attribution")
    assert "carried mostly by embed (+6.00), 75%" in text, text


def test_largest_head_only_when_separated() -> None:
    r = make_results()
    top = r["head_attribution_detail"]["top"]
    assert top["tied"] == [] and top["difference_ci"][0] > 0, "synthetic top head must be separated"
    assert "has the largest direct effect" in _text(r, "head_attribution")
    top.update(difference_ci=[-0.2, 0.9], tied=[top["runner_up"]])
    text = _text(r, "head_attribution")
    assert "has the largest" not in text and "heads with the largest" not in text, text
    assert "not separated" in text and "no single head is the largest" in text, text


def test_accuracy_is_what_it_measures() -> None:
    r = make_results()
    text = _text(r, "logit_diff")
    assert "of prompts correct" not in text, text
    assert "the correct answer beats the incorrect one on 83% of prompts" in text, text
    r["task"]["answers"][1] = [" he", " she /  it"]
    assert "beats the mean incorrect one on 83% of prompts" in _text(r, "logit_diff")


def test_unembed_bias_finding_covers_every_pair() -> None:
    r = make_results()
    text = _text(r, "unembed_bias")
    assert "favours “ she” over “ he”" in text and "2 answer pairs" in text and "“ he” vs “</div>”" in text, text


def test_robustness_finding() -> None:
    r = make_results()
    kh = r["robustness"]["key_heads"]["dla"]
    kh.update(head=[2, 3], count=2, n_templates=2, agree=True, heads=[{"head": [2, 3], "templates": [0, 1]}])
    text = _text(r, "robustness")
    assert text.startswith("L2H3 is the top DLA head in 2 of 2 templates"), text
    kh.update(head=[2, 3], count=1, agree=False, heads=[{"head": [2, 3], "templates": [0]},
                                                         {"head": [0, 1], "templates": [1]}])
    text = _text(r, "robustness")
    assert text.startswith("The top DLA head differs across templates: L2H3 in 1 and L0H1 in 1 of 2 templates"), text


def test_battery_results_hold_the_new_keys(tiny_model: Model, tiny_task_file: Path) -> None:
    results = run_battery(tiny_model, load_task(str(tiny_task_file)), RunConfig(n_predictions=0))
    validate_results(results)
    rob = results["robustness"]
    assert len(rob["templates"]) == 2 and len(rob["subjects"]) == 4
    zero = results["head_ablation"]["zero"]["delta_logit_diff_per_prompt"]
    for row in rob["templates"]:
        idx = [i for i in range(8) if (i // 4) == row["index"]]  # template-major, 4 subjects
        L, H = len(zero), len(zero[0])
        means = [[sum(zero[l][h][i] for i in idx) / len(idx) for h in range(H)] for l in range(L)]
        best = min((means[l][h], l, h) for l in range(L) for h in range(H))
        assert row["top_ablation"]["zero"]["head"] == [best[1], best[2]]
    assert any(f.figure_id == "robustness" for f in key_findings(results))
