"""The TransformerBridge-hook fallback for architectures outside logitlab's own forward pass."""

from pathlib import Path

import pytest
import torch

from logitlab.analyses import clean_run, dla, head_ablation, head_attribution, layer_attribution, logit_lens
from logitlab.analyses.patching import activation_patching
from logitlab.battery import RunConfig, run_battery
from logitlab.errors import LogitlabError
from logitlab.model.backend import HOOKED_LOOPS, SWEEP, has
from logitlab.model.load import load_model
from logitlab.task import encode_prompt, load_task, tokenize_task
from tests.tiny import make_model_folder


@pytest.fixture(scope="module")
def opt(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return load_model(str(make_model_folder("opt", tmp_path_factory.mktemp("opt") / "m")), cache=False)


def test_fallback_matches_hf_and_keeps_the_invariants(opt, tiny_task_file: Path) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM
    assert not has(opt, SWEEP) and has(opt, HOOKED_LOOPS)
    run = clean_run(opt, tokenize_task(load_task(tiny_task_file), opt.tokenizer))
    t = run.task
    hf = AutoModelForCausalLM.from_pretrained(opt.source, dtype=torch.float32)(t.tokens).logits
    rows = torch.arange(t.n_prompts)
    final = hf[rows, t.final_pos]
    ref = final[rows, t.correct_ids] - final.gather(1, t.incorrect_ids).mean(-1)
    assert (run.logit_diff - ref).abs().max() < 1e-4, "logit diff vs the Hugging Face forward pass"
    res = dla(run)
    assert ((res.reconstructed + res.bias_term) - run.logit_diff).abs().max() < 1e-4
    layers = layer_attribution(run)
    assert (layers.values.sum(0) - res.reconstructed).abs().max() < 1e-4
    assert (logit_lens(run).values[-1] - res.reconstructed).abs().max() < 1e-5
    heads = head_attribution(run)
    for layer in range(opt.spec.n_layers):
        attn = layers.values[layers.labels.index(f"{layer}_attn_out")]
        assert (heads.values[layer].sum(0) + heads.bias[layer] - attn).abs().max() < 1e-4


def test_fallback_battery_runs_through_hooked_loops(opt, tiny_task_file: Path) -> None:  # noqa: ANN001
    res = run_battery(opt, load_task(tiny_task_file), RunConfig(patching_pairs=0))  # hooked loops: explicit pairs
    L, H = opt.spec.n_layers, opt.spec.n_heads
    assert len(res["head_ablation"]["zero"]["loss"]) == L and len(res["head_ablation"]["mean"]["logit_diff"][0]) == H
    rp = res["resid_patching"]  # (the tiny models' pairs pass the 1-logit gap: tests/tiny.py)
    assert rp["n_pairs"] >= 1 and rp["n_pairs"] + rp["n_excluded"] == 2 and len(rp["values"]) == L, rp["n_pairs"]
    tt = tokenize_task(load_task(tiny_task_file), opt.tokenizer)
    p = activation_patching(opt, tt, generated=False)
    # Position 0 (BOS) precedes every difference between clean and corrupted prompts, so its activations are the
    # same in both runs at every layer: patching them must change nothing (a misaligned hook would show here).
    for name, values in (("resid", p.resid), ("attn", p.attn), ("mlp", p.mlp)):
        assert p.normalise(values[:, 0]).abs().max() < 1e-4, f"{name} patching at BOS is not 0"
    assert p.normalise(p.resid).abs().max() > 0.05, "patching had no effect anywhere"
    ab = head_ablation(clean_run(opt, tt), "zero")
    assert (ab.logit_diff - ab.baseline_logit_diff).abs().max() > 1e-4, "ablation had no effect"


def test_fallback_refuses_soft_capped_logits(tmp_path: Path) -> None:
    # Gemma-2 runs on logitlab's own forward pass (soft-caps included); the fallback's own check must still
    # refuse a soft-capped read-out it cannot reproduce.
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from logitlab.model.hooked import HookRunner, generic_spec, read_output_weights
    folder = str(make_model_folder("gemma2", tmp_path / "g2"))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(folder))
    bridge.enable_compatibility_mode(disable_warnings=True)
    spec = generic_spec(bridge, hf.config)
    runner = HookRunner(spec, read_output_weights(bridge, spec), bridge)
    with pytest.raises(LogitlabError, match="not a linear read-out"):
        runner.check(torch.arange(1, 9)[None])


def test_fallback_on_the_command_line(opt, tiny_task_file: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`logitlab predict`, `run` and `formation` on a fallback model work end to end (no traceback)."""
    import json

    from logitlab.cli import main
    from logitlab.results import validate_results
    from transformers import AutoModelForCausalLM
    assert main(["predict", "Mary is a great friend", "--model", opt.source, "-k", "3"]) == 0
    shown = capsys.readouterr().out
    ids = encode_prompt(opt.tokenizer, "Mary is a great friend", True)
    hf = AutoModelForCausalLM.from_pretrained(opt.source, dtype=torch.float32)(torch.tensor([ids])).logits[0, -1]
    # (logits differ from HF's by a constant: the unembedding is centred; probabilities do not)
    assert f"{float(hf.softmax(-1).max()):.2%}" in shown, "predict's top probability differs from HF's"
    out = tmp_path / "run"
    assert main(["run", "--model", opt.source, "--task", str(tiny_task_file), "--out", str(out), "--no-report",
                 "--patching-pairs", "2"]) == 0
    validate_results(json.loads((out / "results.json").read_text()))
    ckpts = tmp_path / "ckpts"
    for step, seed in ((0, 1), (10, 0)):
        make_model_folder("opt", ckpts / f"step{step}", seed=seed)
    form = tmp_path / "formation"
    assert main(["formation", "--checkpoints", str(ckpts), "--task", str(tiny_task_file), "--out", str(form)]) == 0
    assert len(json.loads((form / "results.json").read_text())["checkpoints"]) == 2


def test_fallback_refuses_what_it_cannot_do(opt) -> None:  # noqa: ANN001
    from logitlab.model.backend import GRAD, require
    with pytest.raises(LogitlabError, match=r"gradients needs a backend that can .*model '.*' \(opt\) runs on HookRunner"):
        require(opt, GRAD, "gradients")
