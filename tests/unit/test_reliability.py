"""Bad input gets logitlab's own error with a clear message; outputs are atomic; untrusted text stays text."""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitlab._io import atomic_write
from logitlab.battery import run_battery, RunConfig
from logitlab.cli import main
from logitlab.errors import LogitlabError
from logitlab.model.load import load_model
from logitlab.model.spec import read_spec
from logitlab.sweep import SweepSettings, auto_chunk
from logitlab.task import load_task
from tests.tiny import make_model_folder


def test_unsupported_architecture_is_named() -> None:
    from transformers import BertConfig
    with pytest.raises(LogitlabError, match="'bert' is not supported"):
        read_spec(BertConfig())


def test_missing_model_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(LogitlabError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(LogitlabError, match="not in the local Hugging Face cache|tried the Hugging Face hub"):
        load_model("no-such-org/no-such-model-xyz")


def test_truncated_weights_and_gguf(tmp_path: Path) -> None:
    folder = make_model_folder("llama_gqa", tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LogitlabError, match="truncated or corrupt"):
        load_model(str(folder), cache=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LogitlabError, match="cannot read GGUF file"):
        load_model(str(bad))


@pytest.mark.parametrize("tiny_model", ["gpt2"], indirect=True)  # one architecture is enough
def test_nan_activations_are_located(tiny_model, tiny_task_file) -> None:
    w = tiny_model.runner.w
    saved = w.W_out[1].clone()
    try:
        w.W_out[1, 0, 0] = float("nan")
        with pytest.raises(LogitlabError, match="layer 1's MLP output"):
            run_battery(tiny_model, load_task(tiny_task_file), RunConfig())
    finally:
        w.W_out[1].copy_(saved)


def test_memory_guard_refuses_before_starting(tiny_model) -> None:
    with pytest.raises(LogitlabError, match="memory budget"):
        auto_chunk(tiny_model.runner, 16, SweepSettings(max_memory=10))


@pytest.mark.parametrize("tiny_model", ["qwen3_moe"], indirect=True)
def test_sweep_chunks_count_every_expert(tiny_model) -> None:
    """A sparse block computes every expert for every token (model/moe.py): a chunk's estimate holds the experts'
    hidden units and outputs, so a model with many wide experts gets chunks that fit them."""
    from dataclasses import replace
    from types import SimpleNamespace
    r, seq = tiny_model.runner, 16
    moe = replace(r.spec.moe, n_experts=128, d_expert=768)  # Qwen3-30B-A3B's expert count and width
    big = SimpleNamespace(spec=replace(r.spec, moe=moe), w=r.w, dtype=r.dtype, device=r.device)
    need = seq * moe.n_experts * (2 * moe.d_expert + r.spec.d_model) * 4  # moe_forward's (…, E, f) ×2, (…, E, D)
    assert auto_chunk(big, seq, SweepSettings(max_memory=10 * need)) <= 10


def test_unwritable_output_folder(tiny_task_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--task", str(tiny_task_file), "--out", str(blocker / "sub")]) == 2


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


options = st.lists(st.sampled_from(["--top-k", "--dtype", "--device", "--max-memory", "--task", "--out", "-k",
                                    "--force", "--no-report", "--bogus", "--answer"]) | st.text(max_size=12),
                   max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(["run", "predict", "report", "nosuch"]), rest=options)
def test_cli_arguments_never_crash(cmd: str, rest: list[str], tmp_path: Path) -> None:
    # The model never loads: it points at a folder that does not exist.
    argv = [cmd, *rest]
    if cmd in ("run", "predict"):
        argv += ["--model", str(tmp_path / "no-model")]
    if cmd == "predict":
        argv.insert(1, "prompt")
    if cmd == "run":
        argv += ["--out", str(tmp_path / "out")]
    code = main(argv)
    assert code in (0, 1, 2), f"{argv} -> exit {code}"


def test_report_escapes_untrusted_text(tmp_path: Path) -> None:
    from logitlab.report import render_report, build_figures, key_findings
    from tests.report.synthetic import make_results
    res = make_results()
    res["task"]["name"] = "<script>alert('task')</script>"
    res["model"]["name"] = "<img src=x onerror=alert(1)>"
    html = render_report(res, build_figures(res), key_findings(res))
    assert "<script>alert('task')" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(" in html


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_load_safely_and_refuse_code(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM
    folder = make_model_folder("llama_gqa", tmp_path / "bin")
    hf = AutoModelForCausalLM.from_pretrained(str(folder))
    (folder / "model.safetensors").unlink()
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")  # a plain state dict loads (weights_only)
    model = load_model(str(folder), cache=False)
    assert model.spec.n_kv_heads == 2
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Exploit(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(LogitlabError):
        load_model(str(folder), cache=False)
    assert not marker.exists(), "loading weights ran code from a pickle"


def test_keep_freed_memory_applies_on_linux() -> None:
    import sys

    from logitlab import keep_freed_memory
    assert keep_freed_memory() is sys.platform.startswith("linux")
