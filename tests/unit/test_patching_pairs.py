"""Patching over many pairs: pairs generated from the templates, per-pair normalisation with a gap threshold,
pooling across templates, and the results types, on tiny random models of every kind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import TypeAdapter

from logitlab.analyses.patching import (
    MIN_GAP, PairSet, activation_patching, patching_items, pool_positions,
)
from logitlab.analyses.pairset import summarise
from logitlab.answers import PAD
from logitlab.reference import hooked_metrics, loop_patching
from logitlab.results import HeadPatching, ResidPatching
from logitlab.stats import paired
from logitlab.sweep import Entry, SweepSettings, run_sweep
from logitlab.task import (
    MAX_PAIRS_PER_TEMPLATE, SUBJECT_ROLE, generated_pairs, load_task, task_from_dict, tokenize_task,
)
from tests.tiny import TASK_YAML


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} != {tuple(b.shape)}"
    if a.numel() == 0:
        return
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= tol, f"{what}: max abs diff {diff} > {tol}"


def _no_pairs_yaml() -> str:
    return TASK_YAML.split("patching:")[0]


@pytest.fixture()
def tt(tiny_model, tiny_task_file):  # noqa: ANN001, ANN201
    return tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)


# --- pair generation --------------------------------------------------------------------------------------


def _pairs(groups) -> list[tuple[int, int]]:  # noqa: ANN001
    return [p for g in groups for p in zip(g.clean_index, g.corrupted_index)]


def test_generated_pairs_are_every_other_class_pair_of_one_length(tt) -> None:  # noqa: ANN001
    task = tt.task
    groups = generated_pairs(tt, max_per_template=10**6)
    lengths = (tt.final_pos + 1).tolist()
    expected = {(i, j) for i in range(tt.n_prompts) for j in range(tt.n_prompts)
                if i != j and task.prompt_template[i] == task.prompt_template[j]
                and task.prompt_class[i] != task.prompt_class[j] and lengths[i] == lengths[j]}
    got = _pairs(groups)
    assert len(got) == len(set(got)) and set(got) == expected, f"pairs {sorted(got)} != {sorted(expected)}"
    assert got, "the tiny task must yield generated pairs"
    # "The car" is one token longer than the names: it is never paired although its class differs.
    car = [i for i, s in enumerate(task.prompt_subject) if s == "The car"]
    assert all(i not in car and j not in car for i, j in got)
    for g in groups:
        assert g.clean_tokens.shape == g.corrupted_tokens.shape == (g.n_pairs, len(g.roles))
        for k, (i, j) in enumerate(zip(g.clean_index, g.corrupted_index)):
            assert task.prompt_class[i] != task.prompt_class[j], "same class paired"
            assert task.prompt_template[i] == task.prompt_template[j] == g.template
            assert torch.equal(g.clean_tokens[k], tt.tokens[i, :len(g.roles)])
            assert torch.equal(g.corrupted_tokens[k], tt.tokens[j, :len(g.roles)])
            assert int(g.correct_ids[k]) == int(tt.correct_ids[i]), "scored with the clean prompt's answer"
        # Roles: the subject's tokens (where the group's prompts differ) and the template's tokens.
        differ = (g.clean_tokens != g.corrupted_tokens).any(0)
        assert all(g.roles[p] == SUBJECT_ROLE for p in differ.nonzero().flatten().tolist())
        assert g.roles[0] != SUBJECT_ROLE and g.roles[-1] != SUBJECT_ROLE


def test_generated_pairs_capped_deterministically(tiny_model) -> None:  # noqa: ANN001
    # The tiny tokenizer splits names unevenly: its explicit pairs differ in length, so they are dropped here.
    tt = tokenize_task(dataclasses.replace(load_task("pronouns-large"), patch_pairs=()), tiny_model.tokenizer)
    full = generated_pairs(tt, max_per_template=10**6)
    for cap in (3, MAX_PAIRS_PER_TEMPLATE):
        a, b = generated_pairs(tt, max_per_template=cap), generated_pairs(tt, max_per_template=cap)
        assert _pairs(a) == _pairs(b), "the sample must be deterministic"
        assert set(_pairs(a)) <= set(_pairs(full))
        for t in range(len(tt.task.templates)):
            n = sum(g.n_pairs for g in a if g.template == t)
            n_full = sum(g.n_pairs for g in full if g.template == t)
            assert n == min(cap, n_full), f"template {t}: {n} pairs with cap {cap} ({n_full} candidates)"
    assert generated_pairs(tt, max_per_template=0) == ()


def test_no_generated_pairs_without_templates(tiny_model) -> None:  # noqa: ANN001
    task = task_from_dict({"prompts": [{"prompt": "Mary is", "correct": " she", "incorrect": [" he"]},
                                       {"prompt": "John is", "correct": " he", "incorrect": [" she"]}]})
    tt = tokenize_task(task, tiny_model.tokenizer)
    assert generated_pairs(tt) == () and patching_items(tiny_model, tt) == 0
    res = activation_patching(tiny_model, tt)
    assert res.main is None and res.to_dict() == {}, "a task without any pair has no patching sections"


def test_every_kind_has_usable_pairs(tiny_model, tt) -> None:  # noqa: ANN001
    """The tiny models' answers depend on the subject (tests/tiny.py): every kind has reference pairs and pairs of
    every template with a gap of at least 1 logit, so the checks below run with data on every layout."""
    res = activation_patching(tiny_model, tt)
    kind = tiny_model.spec.model_type
    assert res.reference is not None and res.reference.n_used >= 1, \
        f"{kind}: reference gaps {(res.reference.clean - res.reference.corrupted).tolist()}"
    for t in range(len(tt.task.templates)):
        used = sum(g.n_used for g in res.groups if g.template == t)
        assert used >= 2, f"{kind}: template {t} has {used} pairs with a gap of 1 logit"
    assert res.pooled is not None and res.pooled.n_pairs >= 4


# --- per-pair values ----------------------------------------------------------------------------------------


def test_per_pair_values_equal_one_forward_per_patch(tiny_model, tt) -> None:  # noqa: ANN001
    res = activation_patching(tiny_model, tt, SweepSettings(chunk_size=11))
    assert len(res.groups) == len(generated_pairs(tt)) >= 2
    g, s = generated_pairs(tt)[0], res.groups[0]
    assert s.n == g.n_pairs >= 2
    args = (tiny_model, g.clean_tokens, g.corrupted_tokens, g.correct_ids, g.incorrect_ids)
    for what, mine in [("resid_pre", s.resid), ("attn_out", s.attn), ("mlp_out", s.mlp), ("z", s.heads)]:
        ref = loop_patching(*args, what, per_pair=True)  # (L, width, pair)
        _close(mine, ref, 1e-4, f"{what} per-pair patching of template 0: engine vs hooked loop")
    n, T = g.clean_tokens.shape
    d_clean, _ = hooked_metrics(tiny_model, g.clean_tokens, torch.full((n,), T - 1), g.correct_ids, g.incorrect_ids)
    d_corr, _ = hooked_metrics(tiny_model, g.corrupted_tokens, torch.full((n,), T - 1), g.correct_ids, g.incorrect_ids)
    _close(s.clean, d_clean, 1e-4, "per-pair clean logit difference")
    _close(s.corrupted, d_corr, 1e-4, "per-pair corrupted logit difference")


def test_per_pair_endpoints(tiny_model, tt) -> None:  # noqa: ANN001
    """Patching the whole residual stream restores each pair's clean score (1), patching nothing its corrupted (0)."""
    res = activation_patching(tiny_model, tt)
    r = tiny_model.runner
    for g, s in zip(generated_pairs(tt), res.groups):
        clean, corr = r.run_with_cache(g.clean_tokens), r.run_with_cache(g.corrupted_tokens)
        n, T = g.clean_tokens.shape
        fp = torch.full((n,), T - 1)
        gap = s.clean - s.corrupted
        big = gap.abs() > 0.1  # the ratio of two float32 numbers is checked where the gap is not tiny
        assert big.any(), f"template {g.template}: every gap is tiny ({gap.tolist()}): the check would be vacuous"
        for layer in range(tiny_model.spec.n_layers):
            for source, expected, raw in [(clean, 1.0, s.clean), (corr, 0.0, s.corrupted)]:
                entry = Entry(key="all", layer=layer, stage="pre", final_pos=fp, correct=g.correct_ids,
                              incorrect=g.incorrect_ids, make=lambda idx, c=source, l=layer: c.resid_pre[l, idx])
                d = run_sweep(r, [entry], False, SweepSettings())["all"].logit_diff
                _close(d, raw, 1e-4, f"template {g.template}, whole resid at layer {layer}: per-pair raw")
                norm = ((d - s.corrupted) / gap)[big]
                _close(norm, torch.full_like(norm, expected), 1e-3, f"per-pair normalised endpoint {expected}")
        # BOS is the same in both prompts: patching it restores nothing, exactly, for every pair.
        _close(s.resid[:, 0], s.corrupted.expand(s.resid.shape[0], -1), 1e-5, "patching BOS per pair")


# --- gap threshold --------------------------------------------------------------------------------------


def _pair_set(clean: list[float], corrupted: list[float], resid: torch.Tensor) -> PairSet:
    L, T, n = resid.shape
    return PairSet(label="t", template=0, tokens=("a",) * T, roles=("a",) * T, clean=torch.tensor(clean),
                   corrupted=torch.tensor(corrupted), resid=resid, attn=resid, mlp=resid,
                   heads=torch.zeros(L, 2, n))


def test_gap_threshold_excludes_and_counts() -> None:
    assert MIN_GAP == 1.0
    # Pair 1's gap is 0.05: normalising it would multiply its noise by 20.
    resid = torch.tensor([[[1.0, 0.04, 3.0]]])  # (L=1, T=1, pair=3)
    s = _pair_set([2.0, 0.05, 4.0], [0.0, 0.0, 2.0], resid)
    assert s.used.tolist() == [True, False, True] and s.n_used == 2
    summ = summarise("t", s.tokens, [s], None)
    assert summ.n_pairs == 2 and summ.n_excluded == 1
    expected = (0.5 + 0.5) / 2  # (1 − 0)/2 and (3 − 2)/2
    assert abs(float(summ.resid.mean[0, 0]) - expected) < 1e-6, f"{float(summ.resid.mean[0, 0])} != {expected}"
    assert summ.clean_logit_diff == 3.0 and summ.corrupted_logit_diff == 1.0, "means over the used pairs only"
    d = summ.to_dict("resid")
    assert d["n_excluded"] == 1 and d["ci"][0][0][0] <= expected <= d["ci"][0][0][1]
    # A negative gap of at least 1 is used; every pair below the gap: no numbers, all counted.
    assert _pair_set([-2.0], [0.0], torch.zeros(1, 1, 1)).n_used == 1
    none = summarise("t", ("a",), [_pair_set([0.1, 0.2], [0.0, 0.0], torch.zeros(1, 1, 2))], None)
    assert none.n_pairs == 0 and none.n_excluded == 2 and none.resid is None
    assert none.to_dict("resid")["values"] == [] and abs(none.clean_logit_diff - 0.15) < 1e-6


def test_excluded_pairs_counted_and_left_out_on_every_kind(tiny_model, tt) -> None:  # noqa: ANN001
    res = activation_patching(tiny_model, tt)
    n, T = tt.clean_tokens.shape
    fp = torch.full((n,), T - 1)
    d_clean, _ = hooked_metrics(tiny_model, tt.clean_tokens, fp, tt.pair_correct_ids, tt.pair_incorrect_ids)
    d_corr, _ = hooked_metrics(tiny_model, tt.corrupted_tokens, fp, tt.pair_correct_ids, tt.pair_incorrect_ids)
    used = (d_clean - d_corr).abs() >= MIN_GAP
    rp = res.to_dict()["resid_patching"]
    assert used.any(), f"no reference pair has a gap of 1 logit: {(d_clean - d_corr).tolist()}"
    assert rp["pairs"] == "reference"
    assert rp["n_pairs"] == int(used.sum()) and rp["n_excluded"] == int((~used).sum())
    raw = loop_patching(tiny_model, tt.clean_tokens, tt.corrupted_tokens, tt.pair_correct_ids,
                        tt.pair_incorrect_ids, "resid_pre", per_pair=True)[..., used]
    expected = ((raw - d_corr[used]) / (d_clean[used] - d_corr[used])).mean(-1)
    _close(torch.tensor(rp["values"]), expected, 1e-3, "reference values: mean over the used pairs (hooked loop)")
    # The pooled set counts every generated pair exactly once, used or excluded.
    pooled = res.pooled
    assert pooled is not None and pooled.n_pairs + pooled.n_excluded == sum(g.n for g in res.groups)
    assert pooled.n_pairs == sum(g.n_used for g in res.groups)


# --- many pairs, pooling, results ------------------------------------------------------------------------


def test_pool_positions() -> None:
    same = [("<bos>", "{name}", " is", "t"), ("<bos>", "{name}", " is", "t")]
    assert pool_positions(same) == [(r, [p, p]) for p, r in enumerate(same[0])]
    a = ("<bos>", "{name}", " is", " tall", ",", " isn", "’", "t")
    b = ("<bos>", "{name}", " was", " here", ",", " wasn", "’", "t")
    c = ("<bos>", "{name}", "{name}", " is", " good", "?")
    assert pool_positions([a, b]) == [("<bos>", [0, 0]), ("{name}", [1, 1]), (" is", [2, 2])][:2] + [
        ("’", [6, 6]), ("t", [7, 7])]
    assert pool_positions([a, c]) == [("<bos>", [0, 0]), ("{name}", [1, 1]), ("[final]", [7, 5])]


def test_templates_without_explicit_pairs_are_patched(tiny_model) -> None:  # noqa: ANN001
    """Old code refused a task without a `patching:` list; now its templates give many pairs."""
    tt = tokenize_task(task_from_dict(yaml.safe_load(_no_pairs_yaml())), tiny_model.tokenizer)
    assert tt.clean_tokens is None
    res = activation_patching(tiny_model, tt)
    assert res.reference is None and res.pooled is not None
    assert res.pooled.n_pairs + res.pooled.n_excluded == len(_pairs(generated_pairs(tt))) >= 4
    d = res.to_dict()
    assert d["resid_patching"]["pairs"] == "pooled" and d["resid_patching"]["pooled"] is None
    TypeAdapter(ResidPatching).validate_python(d["resid_patching"], strict=True)


def test_pooled_summary_is_paired_over_every_used_pair(tiny_model, tt) -> None:  # noqa: ANN001
    res = activation_patching(tiny_model, tt)
    live = [g for g in res.groups if g.n_used]
    assert len(live) >= 2, f"{len(live)} groups of generated pairs have a pair with a gap of 1 logit"
    pos = pool_positions([g.roles for g in live])
    x = torch.cat([g.normalised("resid")[:, [p[k] for _, p in pos]] for k, g in enumerate(live)], -1)
    expected = paired(x)
    assert res.pooled is not None and res.pooled.n_pairs == x.shape[-1]
    _close(res.pooled.resid.mean, expected.mean, 1e-6, "pooled mean")
    _close(res.pooled.resid.ci, expected.ci, 1e-6, "pooled CI")
    heads = torch.cat([g.normalised("heads") for g in live], -1).mean(-1)
    _close(res.pooled.heads.mean, heads, 1e-5, "pooled heads over every used pair")
    d = res.to_dict()
    for key in ("resid_patching", "attn_patching", "mlp_patching"):
        sec = d[key]
        assert len(sec["per_template"]) == len(live)
        for t, g in zip(sec["per_template"], live):
            assert t["template"] == g.label and t["tokens"] == list(g.roles) and t["n_pairs"] == g.n_used
    TypeAdapter(HeadPatching).validate_python(d["head_patching"], strict=True)
    TypeAdapter(ResidPatching).validate_python(d["resid_patching"], strict=True)


def test_patching_items_counts_every_sweep_item(tiny_model, tt) -> None:  # noqa: ANN001
    steps: list[int] = []
    activation_patching(tiny_model, tt, SweepSettings(chunk_size=9, progress=steps.append))
    assert sum(steps) == patching_items(tiny_model, tt)
    spec = tiny_model.spec
    n = tt.clean_tokens.shape[0] + sum(g.n_pairs for g in generated_pairs(tt))
    assert patching_items(tiny_model, tt) > spec.n_layers * n * spec.n_heads


def test_incorrect_answers_padded_in_generated_pairs(tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    text = _no_pairs_yaml().replace('he: {answer: " he", incorrect: [" she"]}',
                                    'he: {answer: " he", incorrect: [" she", " it"]}')
    tt = tokenize_task(task_from_dict(yaml.safe_load(text)), tiny_model.tokenizer)
    g = generated_pairs(tt)[0]
    assert g.incorrect_ids.shape[1] == 2 and bool((g.incorrect_ids == PAD).any())
    res = activation_patching(tiny_model, tt)
    s = res.groups[0]
    n, T = g.clean_tokens.shape
    d, _ = hooked_metrics(tiny_model, g.clean_tokens, torch.full((n,), T - 1), g.correct_ids, g.incorrect_ids)
    _close(s.clean, d, 1e-4, "masked mean over padded incorrect answers")


# --- report: figures, findings, section ------------------------------------------------------------------


def _with_pooled(final_ci_low: float, src_layers: tuple[int, ...] = (0, 1),  # noqa: ANN202
                 final_layers: tuple[int, ...] = (2,)):
    """Synthetic results whose pooled set (30 pairs, 2 excluded) restores the subject early and the final late."""
    from tests.report.synthetic import make_results
    r = make_results()
    rp = r["resid_patching"]
    L, P = len(rp["values"]), len(rp["tokens"])
    z = [[0.0] * P for _ in range(L)]
    ci = [[[-0.05, 0.05] for _ in range(P)] for _ in range(L)]
    for layer in src_layers:
        z[layer][1], ci[layer][1] = 0.9, [0.8, 1.0]
    for layer in final_layers:
        z[layer][-1], ci[layer][-1] = 0.95, [final_ci_low, 1.0]
    tokens = ["<bos>", "{name}"] + [f"t{i}" for i in range(P - 2)]
    pooled = {"template": None, "tokens": tokens, "values": z, "stderr": [[0.02] * P for _ in range(L)], "ci": ci,
              "n_pairs": 30, "n_excluded": 2, "clean_logit_diff": 5.0, "corrupted_logit_diff": -4.0}
    rp["pooled"] = pooled
    rp["per_template"] = [{**pooled, "template": "{} is tall", "n_pairs": 15, "n_excluded": 1}]
    return r


def _patching_finding(r) -> str | None:  # noqa: ANN001
    from logitlab.report.findings import key_findings
    texts = [f.text for f in key_findings(r) if f.figure_id == "resid_patching"]
    return texts[0] if texts else None


def test_finding_claims_a_move_only_when_the_cis_support_it() -> None:
    from logitlab.results import validate_results
    r = _with_pooled(final_ci_low=0.9)
    validate_results(r)
    text = _patching_finding(r)
    assert text is not None and "(30 pairs, 2 excluded for a gap < 1 logit; 95% CI, templates pooled)" in text and "of the clean − corrupted gap" in text
    assert "0.90 [0.80, 1.00]" in text
    assert "moves from “{name}” to the final position between layer 1 and layer 2" in text
    # The final position's CI reaches below 0.5: it is not claimed, so neither is the move.
    text = _patching_finding(_with_pooled(final_ci_low=0.3))
    assert text is not None and "moves" not in text and "no layer's final position" in text
    # Overlapping layer ranges: both places are named, no hand-over claimed.
    text = _patching_finding(_with_pooled(final_ci_low=0.9, src_layers=(0, 1, 2), final_layers=(1, 2)))
    assert text is not None and "moves" not in text and "overlap" in text


def test_figures_and_section_show_pairs_and_cis() -> None:
    from logitlab.report import build_figures
    from logitlab.report.sections.patching import section_patching
    r = _with_pooled(final_ci_low=0.9)
    figs = build_figures(r)
    fig = figs["resid_patching"]
    hm = fig.data[0]
    assert "1 pair" in fig.layout.title.text and hm.customdata is not None and "95% CI" in hm.hovertemplate
    ci = r["resid_patching"]["ci"]
    assert list(hm.customdata[1][2][1:3]) == pytest.approx(ci[1][2]), "hover shows each cell's CI"
    assert hm.customdata[1][2][3] == "exact", "hover says how the cell was computed"
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 3, "the set values holds, the pooled templates, one template"
    assert "30 pairs, 2 excluded" in buttons[1].args[1]["title.text"]
    assert buttons[1].args[0]["z"][0] == r["resid_patching"]["pooled"]["values"]
    html = section_patching(r, figs, [])
    assert "1 pair used" in html and "30 used, 2 left out" in html
    # No pair left: an empty heatmap that says so.
    r["resid_patching"].update(values=[], stderr=[], ci=[], n_pairs=0, n_excluded=3, pooled=None, per_template=[])
    fig = build_figures(r)["resid_patching"]
    assert "0 pairs, 3 excluded" in fig.layout.title.text
    assert any("no pair" in a.text for a in fig.layout.annotations)
