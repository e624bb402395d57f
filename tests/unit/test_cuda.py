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


# ---------------------------------------------------------------------------------------------------------
# Big models on one device: bfloat16 weights on the GPU, no float32 copy there, sweeps sized to free memory


def test_bfloat16_load_on_cuda_holds_bfloat16_weights_only(tiny_model) -> None:  # noqa: ANN001
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    m = load_model(tiny_model.source, device="cuda", dtype="bfloat16", cache=False)
    w = {k: v for k, v in vars(m.runner.w).items() if v is not None}
    assert all(v.dtype == torch.bfloat16 and v.is_cuda for v in w.values()), {k: v.dtype for k, v in w.items()}
    assert m._bridge is None, "a bfloat16 load frees its bridge"
    held = sum(v.numel() * v.element_size() for v in w.values())
    peak = torch.cuda.max_memory_allocated() - base
    # The bridge stays on the host: the GPU's peak is the bfloat16 weights plus one weight in float32 at a time.
    largest32 = max(v.numel() for v in w.values()) * 4
    assert peak <= held + largest32 + 2**20, f"peak {peak} bytes on the GPU for {held} bytes of bfloat16 weights"


def test_dtype_auto_is_bfloat16_on_cuda() -> None:
    from logitlab.model.device import resolve_dtype
    want = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    assert resolve_dtype("auto", "cuda") == want


def test_sweeps_chunk_to_free_device_memory(gpu_model, monkeypatch) -> None:  # noqa: ANN001
    from logitlab.sweep import SweepSettings, auto_chunk
    from logitlab.model.device import available_memory
    r = gpu_model.runner
    free, _ = torch.cuda.mem_get_info(r.device)
    assert available_memory(r.device) >= free, "torch's cached but unused memory counts as free"
    # With (pretend) 8 GiB free on the GPU, the chunks fit half of it, whatever the host has free.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    chunk = auto_chunk(r, 512, SweepSettings())
    assert chunk == auto_chunk(r, 512, SweepSettings(max_memory=4 * 2**30)) < 4096, chunk
