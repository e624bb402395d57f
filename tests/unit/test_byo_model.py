"""Loading a model object (TransformerBridge, Hugging Face model) gives the numbers of loading it by path.

Each kind is loaded by path, then as objects built from the same folder: a Hugging Face model with its
tokenizer, a bridge without compatibility mode and a bridge with it. Logits and the battery's outputs must
agree to 1e-4, and the caller's objects must be unchanged afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from logitlab.battery import RunConfig, run_battery
from logitlab.errors import LogitlabError
from logitlab.model.hooked import HookRunner
from logitlab.model.load import load_model
from logitlab.task import load_task
from tests.tiny import make_model_folder

KINDS = ("gpt2", "llama_gqa", "gemma3", "opt")  # LayerNorm, grouped KV, post-attention norms, hook fallback
VARIANTS = ("hf", "bridge", "bridge_compat")
PROBE = torch.tensor([[0, 5, 9, 17, 33, 2, 8, 40], [0, 7, 7, 3, 120, 11, 4, 9]])
_cache: dict[str, Any] = {}


def _hf(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _tok(folder: Path) -> Any:
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder)


def _bridge(folder: Path, compat: bool) -> Any:
    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=_hf(folder), tokenizer=_tok(folder))
    if compat:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def _numbers(results: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The battery's outputs compared here, as tensors."""
    return {
        "logit_diff": torch.tensor(results["logit_diff"]["per_prompt"]),
        "dla": torch.tensor(results["dla"]["reconstructed_per_prompt"] + [results["dla"]["bias_term"]]),
        "head_attribution": torch.tensor(results["head_attribution"]),
        "head_ablation_zero": torch.tensor(results["head_ablation"]["zero"]["logit_diff"]),
        "resid_patching": torch.tensor(results["resid_patching"]["values"]),
    }


@pytest.fixture(scope="module")
def by_path(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path):  # noqa: ANN201
    """kind -> (folder, logits on PROBE, battery numbers), each kind loaded by path once."""
    def get(kind: str) -> tuple[Path, torch.Tensor, dict[str, torch.Tensor]]:
        if kind not in _cache:
            folder = make_model_folder(kind, tmp_path_factory.mktemp(f"byo-{kind}") / "m")
            model = load_model(str(folder), cache=False)
            _cache[kind] = (folder, model.runner.logits(PROBE), _numbers(run_battery(model, load_task(tiny_task_file),
                                                                                       RunConfig(patching_pairs=0))))
        return _cache[kind]
    return get


def _state(module: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), f"keys changed: {sorted(a.keys() ^ b.keys())[:5]}"
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_object_gives_the_numbers_of_the_path(kind: str, variant: str, by_path, tiny_task_file: Path) -> None:  # noqa: ANN001
    folder, ref_logits, ref = by_path(kind)
    if variant == "hf":
        obj, tok = _hf(folder), _tok(folder)
        types_before = [type(m) for m in obj.modules()]
        before = _state(obj)
        model = load_model(obj, tokenizer=tok)
        assert [type(m) for m in obj.modules()] == types_before, "the Hugging Face model's modules were replaced"
        assert model.name == str(folder), model.name
    else:
        obj = _bridge(folder, compat=variant == "bridge_compat")
        flags = (obj.compatibility_mode, obj._weights_processed, obj.training)
        before = _state(obj.original_model)
        model = load_model(obj)
        assert (obj.compatibility_mode, obj._weights_processed, obj.training) == flags, "the bridge's state changed"
        assert model.name == f"TransformerBridge({folder})", model.name
        assert (model.bridge is obj) == (variant == "bridge_compat"), "a compatibility-mode bridge in eval mode is kept"
    after = _state(obj if variant == "hf" else obj.original_model)
    assert _max_diff(before, after) == 0.0, "the caller's weights changed"
    assert model.bridge.compatibility_mode and model.bridge._weights_processed
    assert isinstance(model.runner, HookRunner) == (kind == "opt"), type(model.runner).__name__
    d = (model.runner.logits(PROBE) - ref_logits).abs().max().item()
    assert d <= 1e-4, f"{kind}/{variant}: logits differ from the path load by {d:.2e}"
    ours = _numbers(run_battery(model, load_task(tiny_task_file), RunConfig(patching_pairs=0)))
    for key, value in ref.items():
        assert ours[key].shape == value.shape, f"{kind}/{variant}: {key} shape {tuple(ours[key].shape)}"
        assert value.numel(), f"{kind}/{variant}: {key} is empty (the tiny models' pairs pass the gap)"
        d = (ours[key] - value).abs().max().item()
        assert d <= 1e-4, f"{kind}/{variant}: {key} differs from the path load by {d:.2e}"
    assert ref["head_ablation_zero"].std() > 0, "the comparison is vacuous: ablation had no effect"


def test_in_memory_tokenizer_and_dtype(by_path) -> None:  # noqa: ANN001
    """A tokenizer with no folder behind it works (the bridge re-loads tokenizers from ``name_or_path``)."""
    from transformers import PreTrainedTokenizerFast
    folder, ref_logits, _ = by_path("gpt2")
    saved = _tok(folder)
    tok = PreTrainedTokenizerFast(tokenizer_object=saved.backend_tokenizer, bos_token="<bos>", pad_token="<pad>")
    hf = _hf(folder)
    model = load_model(hf, tokenizer=tok)
    d = (model.runner.logits(PROBE) - ref_logits).abs().max().item()
    assert d <= 1e-4, f"logits differ from the path load by {d:.2e}"
    assert model.tokenizer("Mary is")["input_ids"] == saved("Mary is")["input_ids"]
    half = load_model(hf, tokenizer=tok, dtype="bfloat16")
    assert half.runner.w.W_U.dtype == torch.bfloat16 and next(hf.parameters()).dtype == torch.float32


def test_bridge_in_training_mode_is_copied(by_path) -> None:  # noqa: ANN001
    folder, ref_logits, _ = by_path("gpt2")
    bridge = _bridge(folder, compat=True)
    bridge.train()
    model = load_model(bridge)
    assert bridge.training, "the caller's bridge was put in eval mode"
    assert model.bridge is not bridge and not model.bridge.training
    d = (model.bridge(PROBE) - model.bridge(PROBE)).abs().max().item()
    assert d == 0.0, f"the Model's bridge is not deterministic (dropout on?): {d:.2e}"


def test_compat_bridge_without_processing_is_processed_afresh(by_path) -> None:  # noqa: ANN001
    folder, ref_logits, _ = by_path("gpt2")
    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=_hf(folder), tokenizer=_tok(folder))
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    model = load_model(bridge)
    assert model.bridge is not bridge and not bridge._weights_processed
    d = (model.runner.logits(PROBE) - ref_logits).abs().max().item()
    assert d <= 1e-4, f"logits differ from the path load by {d:.2e}"


@pytest.mark.parametrize(("option", "reason"), [("fold_ln", "LayerNorm not folded"),
                                                ("center_unembed", "unembedding not centred"),
                                                ("center_writing_weights", "writing weights not centred")])
def test_compat_bridge_with_other_options_is_refused(option: str, reason: str, by_path) -> None:  # noqa: ANN001
    folder, _, _ = by_path("gpt2")
    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=_hf(folder), tokenizer=_tok(folder))
    bridge.enable_compatibility_mode(disable_warnings=True, **{option: False})
    with pytest.raises(LogitlabError, match=reason):
        load_model(bridge)


def test_processed_bridge_outside_compatibility_mode_is_refused(by_path) -> None:  # noqa: ANN001
    folder, _, _ = by_path("gpt2")
    bridge = _bridge(folder, compat=False)
    bridge.process_weights()
    with pytest.raises(LogitlabError, match="outside compatibility mode"):
        load_model(bridge)


def test_hf_model_without_tokenizer_is_refused(by_path) -> None:  # noqa: ANN001
    folder, _, _ = by_path("gpt2")
    with pytest.raises(LogitlabError, match="tokenizer="):
        load_model(_hf(folder))


def test_wrapped_hf_model_is_refused(by_path) -> None:  # noqa: ANN001
    folder, _, _ = by_path("gpt2")
    bridge = _bridge(folder, compat=False)
    with pytest.raises(LogitlabError, match="pass the TransformerBridge itself"):
        load_model(bridge.original_model, tokenizer=_tok(folder))


@pytest.mark.parametrize("obj", [3, torch.nn.Linear(2, 2), None])
def test_wrong_type_is_refused(obj: Any) -> None:
    with pytest.raises(LogitlabError) as err:
        load_model(obj)
    message = str(err.value)
    assert type(obj).__name__ in message and "TransformerBridge" in message and "PreTrainedModel" in message, message


def test_tokenizer_with_a_path_is_refused(by_path) -> None:  # noqa: ANN001
    folder, _, _ = by_path("gpt2")
    with pytest.raises(LogitlabError, match="only used with a model object"):
        load_model(str(folder), tokenizer=_tok(folder), cache=False)


def test_device_auto_is_cuda_when_available_else_cpu(by_path, tiny_task_file: Path, tmp_path: Path,  # noqa: ANN001
                                                     capsys: pytest.CaptureFixture) -> None:
    """``auto`` (the command line's default) is resolved once: the model, the run's config and the start-up line
    name the device the run uses; an unknown or unavailable device is refused before anything loads."""
    import json

    from logitlab.cli import main
    from logitlab.model.device import device_option
    want = "cuda" if torch.cuda.is_available() else "cpu"
    folder, _, _ = by_path("gpt2")
    model = load_model(str(folder), device="auto", cache=False)
    assert model.device == want and model.runner.device.type == want
    assert device_option("auto") == want and device_option("cpu") == "cpu"
    with pytest.raises(LogitlabError, match="unknown device 'gpu'"):
        device_option("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(LogitlabError, match="CUDA is not available"):
            device_option("cuda:1")
    out = tmp_path / "run"
    assert main(["run", "--model", str(folder), "--task", str(tiny_task_file), "--out", str(out), "--no-report"]) == 0
    assert f"device: {want}" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["config"]["device"] == want
    assert main(["predict", "Mary is", "--model", str(folder), "-k", "1", "--device", "gpu"]) == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err
    assert main(["formation", "--checkpoints", str(tmp_path), "--device", "gpu"]) == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err
