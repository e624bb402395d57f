"""The invariants on a GPU: forward pass, DLA, ablation sweep = hooked loop (skipped without CUDA)."""

from pathlib import Path

import pytest
import torch

from logitlab.analyses import clean_run, dla, head_ablation
from logitlab.battery import RunConfig, run_battery
from logitlab.interventions import head_mean_values
from logitlab.model.load import load_model
from logitlab.reference import loop_head_ablation
from logitlab.results import validate_results
from logitlab.task import load_task, tokenize_task

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture()
def gpu_model(tiny_model):  # noqa: ANN001, ANN201
    return load_model(tiny_model.source, device="cuda", cache=False)


def test_forward_and_dla_on_cuda(gpu_model, tiny_model, tiny_task_file: Path) -> None:  # noqa: ANN001
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    gpu, cpu = clean_run(gpu_model, tt), clean_run(tiny_model, tt)
    assert (gpu.logit_diff.cpu() - cpu.logit_diff).abs().max() < 1e-3, "CUDA vs CPU logit difference"
    res = dla(gpu)
    assert ((res.reconstructed + res.bias_term).cpu() - gpu.logit_diff.cpu()).abs().max() < 1e-3


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablation_sweep_equals_hooked_loop_on_cuda(gpu_model, tiny_task_file: Path, kind: str) -> None:  # noqa: ANN001
    tt = tokenize_task(load_task(tiny_task_file), gpu_model.tokenizer)
    run = clean_run(gpu_model, tt)
    res = head_ablation(run, kind)
    means = head_mean_values(run.cache, tt.final_pos) if kind == "mean" else None
    dev = gpu_model.runner.device
    ref_d, ref_l = loop_head_ablation(gpu_model, tt.tokens.to(dev), tt.final_pos.to(dev), tt.correct_ids.to(dev),
                                      tt.incorrect_ids.to(dev), means)
    assert (res.logit_diff.cpu() - ref_d.cpu()).abs().max() < 1e-3
    assert (res.loss.cpu() - ref_l.cpu()).abs().max() < 1e-3


def test_battery_on_cuda(gpu_model, tiny_task_file: Path) -> None:  # noqa: ANN001
    validate_results(run_battery(gpu_model, load_task(tiny_task_file), RunConfig(device="cuda")))
