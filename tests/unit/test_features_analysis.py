"""The features analysis over a task's prompts: its check of the graphs against the real model gives, per prompt, the
numbers ``check_top_features`` gives on that prompt alone, summarised with a bootstrap CI over prompts; the report
shows them and its finding follows the CI."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from logitlab import answers
from logitlab.features.analysis import CHECK_MEASURES, task_features
from logitlab.features.graph import attribute
from logitlab.features.interventions import check_top_features
from logitlab.model.runner import Runner
from logitlab.report.sections.features import check_finding, section_features
from logitlab.stats import paired
from logitlab.task import load_task, tokenize_task
from tests.tiny import make_model_folder, random_dictionaries


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path):  # noqa: ANN201
    from logitlab.model.load import load_model
    m = load_model(str(make_model_folder("llama_gqa", tmp_path_factory.mktemp("fa") / "llama")), cache=False)
    m = copy.copy(m)
    m.runner = Runner(m.spec, m.runner.w.to(m.runner.device, torch.float64))
    d = random_dictionaries(m.spec.d_model, m.spec.n_layers, "relu")
    tt = tokenize_task(load_task(str(tiny_task_file)), m.tokenizer)
    return m, d, tt, task_features(m, tt, d, "random", n_prompts=4, top=5, check=4)


def test_check_per_prompt_is_check_top_features(run) -> None:  # noqa: ANN001
    m, d, tt, out = run
    c = out["check"]
    assert c["k"] == 4 and set(c["measures"]) == set(CHECK_MEASURES)
    assert c["linear_model_error"] < 1e-6, "with everything held the model's code runs the graph (a float32 graph)"
    for i in (0, 3):
        ids = tt.tokens[i, : int(tt.final_pos[i]) + 1].tolist()
        inc = [int(x) for x in tt.incorrect_ids[i].tolist() if x != answers.PAD]
        g = attribute(m, ids, d, answer=int(tt.correct_ids[i]), contrast=inc, max_logits=1)
        want = check_top_features(m, ids, d, g, 4, answer=int(tt.correct_ids[i]), contrast=inc)
        pairs = {"zeroing": (want.spearman, want.sign_agreement),
                 "model_zeroing": (want.model["spearman"]["zeroed"], want.model["sign_agreement"]["zeroed"]),
                 "model_derivative": (want.model["spearman"]["derivative"],
                                      want.model["sign_agreement"]["derivative"]),
                 "model_derivative_attention_norms_held": (
                     want.model["spearman"]["derivative_attention_norms_held"],
                     want.model["sign_agreement"]["derivative_attention_norms_held"]),
                 "model_zeroing_by_model_derivative": (want.model["own_first_order"]["spearman"],
                                                       want.model["own_first_order"]["sign_agreement"])}
        assert c["features"][i] == want.features
        for name, (rho, sign) in pairs.items():
            got = c["measures"][name]
            assert got["spearman"]["per_prompt"][i] == pytest.approx(rho, abs=1e-9), (name, i)
            assert got["sign_agreement"]["per_prompt"][i] == pytest.approx(sign, abs=1e-9), (name, i)
    for m_ in c["measures"].values():
        for stat in m_.values():
            vals = [v for v in stat["per_prompt"] if v is not None]
            assert stat["n"] == len(vals) > 0 and len(stat["per_prompt"]) == 4
            assert stat["mean"] == pytest.approx(sum(vals) / len(vals))
            ref = paired(torch.tensor(vals, dtype=torch.float64)[None])
            assert stat["ci"] == pytest.approx(ref.ci[0].tolist(), abs=1e-6)
            assert stat["ci"][0] <= stat["mean"] + 1e-6 <= stat["ci"][1] + 2e-6


def test_report_shows_the_check_and_its_finding_follows_the_ci(run) -> None:  # noqa: ANN001
    out = copy.deepcopy(run[3])
    html = section_features({"features": out}, {}, [])  # type: ignore[arg-type]
    assert "The graphs against the real model" in html and "zeroing in the real model" in html
    assert out["frozen_positions"] == [[0]] * 4 and "only BOS is frozen" in html  # no massive activation here
    out2 = copy.deepcopy(out)
    out2["frozen_positions"] = [[0, 6], [0], [0, 6], [0, 2, 6]]
    assert "position 2 in 1 of 4 prompts, position 6 in 3 of 4 prompts" in section_features(
        {"features": out2}, {}, [])  # type: ignore[arg-type]
    stat = out["check"]["measures"]["model_zeroing"]
    for ci, word in (([0.2, 0.6], "agree in rank"), ([-0.2, 0.6], "do not agree in rank beyond chance"),
                     ([-0.7, -0.1], "disagree in rank")):
        stat["spearman"].update(mean=(ci[0] + ci[1]) / 2, ci=ci, n=4)
        f = check_finding({"features": out})  # type: ignore[arg-type]
        assert f is not None and word in f.text and f.figure_id == "features", f
    # the real model's own first-order prediction of zeroing: named in the finding only where its CI stays
    # below 0.5 (then no exact linear attribution predicts the zeroing well)
    own = out["check"]["measures"]["model_zeroing_by_model_derivative"]
    for hi, said in ((0.4, True), (0.6, False)):
        own["spearman"].update(mean=hi - 0.3, ci=[hi - 0.6, hi], n=4)
        f = check_finding({"features": out})  # type: ignore[arg-type]
        assert f is not None and ("largely beyond first order" in f.text) == said, (hi, f)
    flat = [f for per in out["check"]["features"] for f in per]
    by_layer = ", ".join(f"layer {l}: {sum(f[0] == l for f in flat)}" for l in sorted({f[0] for f in flat}))
    assert f"The {len(flat)} checked features by layer ({by_layer})" in html, html[-600:]
    # the first-order agreement, worded from its own CI
    first = out["check"]["measures"]["model_derivative"]
    for ci, word in (([0.25, 0.57], "to first order (each feature scaled by 1 + 10⁻³) they agree in rank"),
                     ([-6.9e-18, 0.4], "they do not agree in rank beyond chance")):
        first["spearman"].update(mean=(ci[0] + ci[1]) / 2, ci=ci, n=4)
        f = check_finding({"features": out})  # type: ignore[arg-type]
        assert f is not None and word in f.text, f
    assert "[+0.00, +0.40]" in f.text and "e−" not in f.text  # two decimals, no exponent
    stat["spearman"].update(mean=None, ci=None, n=0)
    assert check_finding({"features": out}) is None  # type: ignore[arg-type]
    del out["check"]
    assert "against the real model" not in section_features({"features": out}, {}, [])  # type: ignore[arg-type]
    assert check_finding({"features": out}) is None  # type: ignore[arg-type]
