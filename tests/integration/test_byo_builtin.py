"""The built-in model passed as a loaded Hugging Face model gives the battery's numbers of loading it by name."""

from __future__ import annotations

import pytest
import torch

from logitlab.battery import RunConfig, run_battery
from logitlab.model.load import load_model
from logitlab.task import load_task

pytestmark = pytest.mark.slow


def test_builtin_as_an_object_matches_by_name(builtin_model) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = builtin_model.source  # the cached float32 Hugging Face folder
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    embed = hf.get_input_embeddings().weight.detach().clone()
    model = load_model(hf, tokenizer=tok)
    assert model.spec == builtin_model.spec
    assert torch.equal(hf.get_input_embeddings().weight, embed), "the caller's model was changed"

    task = load_task("pronouns")
    config = RunConfig(patching_pairs=0)  # the explicit pair: generated pairs are tested elsewhere
    ours, ref = run_battery(model, task, config), run_battery(builtin_model, task, config)
    pairs = {
        "mean logit difference": (ours["logit_diff"]["mean"], ref["logit_diff"]["mean"]),
        "per-prompt logit difference": (ours["logit_diff"]["per_prompt"], ref["logit_diff"]["per_prompt"]),
        "DLA per prompt": (ours["dla"]["reconstructed_per_prompt"], ref["dla"]["reconstructed_per_prompt"]),
        "DLA bias term": (ours["dla"]["bias_term"], ref["dla"]["bias_term"]),
        "zero-ablation logit difference": (ours["head_ablation"]["zero"]["logit_diff"],
                                           ref["head_ablation"]["zero"]["logit_diff"]),
    }
    for what, (a, b) in pairs.items():
        a, b = torch.tensor(a), torch.tensor(b)
        assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        d = (a - b).abs().max().item()
        assert d <= 1e-4, f"{what}: the object load differs from the load by name by {d:.2e}"
