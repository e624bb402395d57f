"""Gemma-2 on logitlab's own forward pass: attention and final-logit soft-caps, pre-cap attributions.

The invariant suite runs on the ``gemma2_softcap`` tiny kind too (HF parity, DLA sums, sweeps = hooked loops,
gradients, graph forward); this file checks what is particular to the soft-caps: that they bite on the tiny
model, that the pre-cap logit difference (what the attributions decompose) is Hugging Face's logit difference
before the cap, and that the whole battery runs and its results say which value is which.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from logitlab.analyses import clean_run, dla, head_attribution, layer_attribution, logit_lens
from logitlab.errors import LogitlabError
from logitlab.model.runner import Runner
from logitlab.model.spec import read_spec
from logitlab.task import load_task, tokenize_task


@pytest.fixture(scope="module")
def g2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from logitlab.model.load import load_model
    from tests.tiny import make_model_folder
    return load_model(str(make_model_folder("gemma2_softcap", tmp_path_factory.mktemp("g2") / "m")), cache=False)


@pytest.fixture(scope="module")
def hf(g2: Any) -> Any:
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(g2.source, dtype=torch.float32)


@pytest.fixture(scope="module")
def run(g2: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.tiny import TASK_YAML
    path = tmp_path_factory.mktemp("g2task") / "task.yaml"
    path.write_text(TASK_YAML, encoding="utf-8")
    return clean_run(g2, tokenize_task(load_task(path), g2.tokenizer))


def _tokens(g2: Any, T: int = 20) -> torch.Tensor:
    return torch.randint(2, g2.spec.d_vocab, (3, T), generator=torch.Generator().manual_seed(0))


def test_spec_reads_the_caps_windows_and_norms(g2: Any) -> None:
    s = g2.spec
    assert s.attn_softcap == 5.0 and s.final_softcap == 3.0
    assert s.sliding_window == (4, None, 4) and s.post_norms and not s.qk_norm
    assert s.attn_scale == 16 ** -0.5 and s.embed_scale == 64 ** 0.5


def test_logits_match_hf_with_the_caps_on_and_the_caps_bite(g2: Any, hf: Any) -> None:
    tokens = _tokens(g2)  # 20 positions: past the sliding window of 4
    ref = hf(tokens).logits
    ours = g2.runner.logits(tokens)
    d = (ours - ref).abs().max().item()
    assert d < 1e-4, f"runner vs HF (caps on): max diff {d}"  # no centring: the unembedding is not centred
    # Without either cap the forward pass is far from the model's: both caps change the numbers on this model.
    for field in ("attn_softcap", "final_softcap"):
        uncapped = Runner(replace(g2.spec, **{field: None}), g2.runner.w)
        gap = (uncapped.logits(tokens) - ref).abs().max().item()
        assert gap > 0.1, f"{field}: the cap does not bite on the tiny model (gap {gap})"
    assert ref.abs().max().item() < 3.0 and ref.abs().max().item() > 2.5, "logits should crowd the final cap"


def test_pattern_and_z_are_hf_attention_with_capped_scores(g2: Any, hf: Any) -> None:
    tokens = _tokens(g2, 12)
    out = hf(tokens, output_attentions=True)
    cache = g2.runner.run_with_cache(tokens)
    for layer, att in enumerate(out.attentions):
        d = (cache.pattern[layer] - att).abs().max().item()
        assert d < 1e-4, f"layer {layer}: pattern vs HF max diff {d}"


def test_pre_cap_logit_diff_is_hf_before_the_cap(run: Any, hf: Any) -> None:
    t = run.task
    hidden = hf.model(t.tokens).last_hidden_state  # after the final norm
    pre = hf.lm_head(hidden)  # logits before the soft-cap
    rows = torch.arange(t.n_prompts)
    at = pre[rows, t.final_pos]
    want = at[rows, t.correct_ids] - at.gather(1, t.incorrect_ids).mean(-1)
    assert run.pre_cap_logit_diff is not None
    d = (run.pre_cap_logit_diff - want).abs().max().item()
    assert d < 1e-4, f"pre-cap logit diff vs HF's lm_head output: {d}"
    capped = 3.0 * torch.tanh(at / 3.0)
    d = (run.logit_diff - (capped[rows, t.correct_ids] - capped.gather(1, t.incorrect_ids).mean(-1))).abs().max()
    assert d < 1e-4, f"capped logit diff vs HF: {d}"
    assert (run.pre_cap_logit_diff - run.logit_diff).abs().max() > 0.05, "the final cap should change the diff"


def test_attributions_decompose_the_pre_cap_difference(run: Any) -> None:
    res = dla(run)
    assert torch.equal(res.model, run.pre_cap_logit_diff.cpu()) and torch.equal(res.model_capped, run.logit_diff.cpu())
    assert res.max_abs_error < 1e-4, f"DLA vs pre-cap: {res.max_abs_error}"
    layers = layer_attribution(run)
    assert (layers.values.sum(0) - res.reconstructed).abs().max() < 1e-4
    assert (logit_lens(run).values[-1] - res.reconstructed).abs().max() < 1e-5
    heads = head_attribution(run)
    assert heads.values.shape[:2] == (run.model.spec.n_layers, run.model.spec.n_heads)
    # Against the capped value the reconstruction would not hold: the check would fail if it compared with it.
    assert (res.reconstructed + res.bias_term - res.model_capped).abs().max() > 1e-2
    d = res.to_dict()
    assert d["final_logit_softcap"] == 3.0 and abs(d["model_capped_mean"] - float(run.logit_diff.mean())) < 1e-6
    assert abs(d["model_mean"] - float(run.pre_cap_logit_diff.mean())) < 1e-6


def test_uncapped_models_report_no_cap(tiny_model, tiny_task_file) -> None:  # noqa: ANN001
    if tiny_model.spec.final_softcap is not None:  # the capped kind: the tests above check it with the cap
        r = clean_run(tiny_model, tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer))
        assert r.pre_cap_logit_diff is not None and "model_capped_mean" in dla(r).to_dict()
        return
    r = clean_run(tiny_model, tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer))
    assert r.pre_cap_logit_diff is None and r.attributed_logit_diff is r.logit_diff
    assert "model_capped_mean" not in dla(r).to_dict()


def test_the_whole_battery_runs_with_the_caps_on(g2: Any, run: Any, tmp_path: Path) -> None:
    from logitlab.battery import ANALYSES, RunConfig, run_battery
    from logitlab.results import validate_results
    # every analysis but the features one (it needs transcoders; tests/unit/test_schema.py runs it on every kind)
    res = run_battery(g2, run.task.task, RunConfig(analyses=tuple(a for a in ANALYSES if a != "features"),
                                                   patching_pairs=2))
    validate_results(json.loads(json.dumps(res)))
    assert res["dla"]["relative_error"] < 1e-4
    assert abs(res["dla"]["model_capped_mean"] - res["logit_diff"]["mean"]) < 1e-5
    assert abs(res["dla"]["model_mean"] - float(run.pre_cap_logit_diff.mean())) < 1e-5


@pytest.mark.parametrize("field, value, match", [
    ("attn_logit_softcapping", 0.0, "positive"),
    ("use_bidirectional_attention", True, "bidirectional"),
    ("layer_types", ["sliding_attention", "chunked_attention", "full_attention"], "chunked_attention"),
])
def test_unsupported_gemma2_flags_are_refused(g2: Any, field: str, value: Any, match: str) -> None:
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(g2.source)
    setattr(cfg, field, value)
    with pytest.raises(LogitlabError, match=match):
        read_spec(cfg)
