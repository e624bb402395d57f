"""Big models on one device, checked on a tiny model on the CPU: a bfloat16 load holds no float32 copy of the
model, its weights are the float32 processing rounded once, the cache serves both dtypes, attributions
accumulate in float32, the memory estimate refuses what cannot fit, and ``--dtype auto`` is float32 on the CPU.
(The same path on a GPU: tests/unit/test_cuda.py.)"""

from __future__ import annotations

import gc
import warnings
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from logitlab.errors import LogitlabError
from logitlab.model.load import load_model
from logitlab.model.spec import Weights
from tests.tiny import make_model_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder("llama_gqa", tmp_path_factory.mktemp("big") / "llama_gqa")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOGITLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _weights(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {f.name: getattr(model.runner.w, f.name) for f in fields(Weights) if getattr(model.runner.w, f.name) is not None}


def _float32_bytes() -> int:
    """Bytes of every float32 tensor the process holds (parameters included), each storage counted once."""
    gc.collect()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance on torch's deprecated module proxies warns
        warnings.simplefilter("ignore")
        objs = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objs:
        try:
            if obj.dtype == torch.float32 and obj.device.type == "cpu":
                st = obj.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, ReferenceError):  # tensors without storage (meta, some views)
            continue
    return sum(seen.values())


def test_bfloat16_load_holds_no_float32_copy(folder: Path) -> None:
    f32_model_bytes = sum(p.numel() * 4 for p in _weights(load_model(str(folder), cache=False)).values())
    gc.collect()
    before = _float32_bytes()
    m16 = load_model(str(folder), dtype="bfloat16", cache=False)
    grew16 = _float32_bytes() - before
    assert m16.dtype == "bfloat16" and m16._bridge is None, "a bfloat16 load keeps no bridge"
    wrong = {k: v.dtype for k, v in _weights(m16).items() if v.dtype != torch.bfloat16}
    assert not wrong, f"weights not in bfloat16: {wrong}"
    assert grew16 < 0.05 * f32_model_bytes, (f"a bfloat16 load left {grew16} bytes of float32 tensors alive "
                                             f"(the float32 weights are {f32_model_bytes} bytes)")
    # The measurement can fail: a float32 load grows by at least its float32 weights.
    before = _float32_bytes()
    m32 = load_model(str(folder), cache=False)
    grew32 = _float32_bytes() - before
    assert m32.dtype == "float32" and grew32 >= f32_model_bytes, (grew32, f32_model_bytes)


def test_bfloat16_loss_reads_the_unembedding_without_a_float32_copy(folder: Path) -> None:
    """The log-partition of a bfloat16 model widens the unembedding block by block: no float32 tensor as large as
    the unembedding stays alive after it, and it equals logsumexp of the float32 logits of the bfloat16 weights."""
    m16 = load_model(str(folder), dtype="bfloat16", cache=False)
    r = m16.runner
    normed = torch.randn(5, m16.spec.d_model).to(torch.bfloat16)
    gc.collect()
    before = _float32_bytes()
    got = r.log_partition(normed)
    grew = _float32_bytes() - before
    W_U = r.w.W_U.float()  # (D, vocab)
    b_U = torch.zeros(W_U.shape[1]) if r.w.b_U is None else r.w.b_U.float()
    want = torch.logsumexp(r.softcap(normed.float() @ W_U + b_U), -1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    assert grew < W_U.numel() * 4 // 2, f"{grew} bytes of float32 tensors stayed alive (unembedding {W_U.numel() * 4})"


def test_bfloat16_weights_are_the_float32_processing_rounded_once(folder: Path) -> None:
    m32 = load_model(str(folder), cache=False)
    m16 = load_model(str(folder), dtype="bfloat16", cache=False)
    w32, w16 = _weights(m32), _weights(m16)
    assert w32.keys() == w16.keys()
    bad = [k for k in w32 if not torch.equal(w32[k].to(torch.bfloat16), w16[k])]
    assert not bad, f"bfloat16 weights differ from the float32 ones rounded: {bad}"


def test_the_cache_serves_both_dtypes(folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _weights(load_model(str(folder), cache=False))
    load_model(str(folder), dtype="bfloat16")  # cold: writes the bfloat16 file only
    files = sorted(p.name for p in (cache / "processed").iterdir())
    assert len(files) == 1 and files[0].endswith("-bfloat16.safetensors"), files
    m32 = load_model(str(folder))  # a float32 load must not read the rounded file: it writes its own
    assert all(torch.equal(ref[k], v) for k, v in _weights(m32).items()), "float32 load read bfloat16 weights"
    assert len(list((cache / "processed").iterdir())) == 2
    (next(p for p in (cache / "processed").iterdir() if p.name.endswith("-bfloat16.safetensors"))).unlink()

    def no_boot(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the bridge was booted although the float32 cache holds the weights")
    monkeypatch.setattr("logitlab.model.sources.boot_bridge", no_boot)
    monkeypatch.setattr("logitlab.model.sources.direct_weights", no_boot)  # nor the checkpoint processed again
    m16 = load_model(str(folder), dtype="bfloat16")  # warm: the float32 file read in bfloat16
    assert m16._bridge is None
    assert all(v.dtype == torch.bfloat16 and torch.equal(ref[k].to(torch.bfloat16), v)
               for k, v in _weights(m16).items())


def test_bfloat16_attributions_accumulate_in_float32(folder: Path, tiny_task_file: Path) -> None:
    from logitlab.analyses import clean_run, dla
    from logitlab.task import load_task, tokenize_task
    m32 = load_model(str(folder), cache=False)
    m16 = load_model(str(folder), dtype="bfloat16", cache=False)
    t = tokenize_task(load_task(tiny_task_file), m16.tokenizer)
    r32, r16 = clean_run(m32, t), clean_run(m16, t)
    d32, d16 = dla(r32), dla(r16)
    for name in ("reconstructed", "bias_term"):
        assert getattr(d16, name).dtype == torch.float32, f"{name} is {getattr(d16, name).dtype}"
    # Each attribution sums to the model's own logit difference, in float32: the bfloat16 run's to its own
    # (bf16 rounding of the components themselves only), and close to the float32 run's.
    own = ((d16.reconstructed + d16.bias_term) - r16.logit_diff).abs().max().item()
    assert own < 2e-2 * max(1.0, r16.logit_diff.abs().max().item()), f"bf16 DLA vs its logit diff: {own}"
    scale = max(1.0, d32.reconstructed.abs().max().item())
    gap = (d16.reconstructed - d32.reconstructed).abs().max().item()
    assert gap < 0.1 * scale, f"bf16 vs float32 DLA: max diff {gap} (scale {scale})"


def test_memory_estimate_refuses_what_cannot_fit(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from logitlab.model.memory import IGNORE_ENV, check_load
    est = check_load(str(folder), "bfloat16", "cpu", processed_cache=False, budget=lambda device: 2**40)
    assert est is not None and est.host > est.runner_params * 2
    with pytest.raises(LogitlabError, match=r"needs an estimated [\d.]+ GiB of RAM, but 0\.00 GiB are available"):
        check_load(str(folder), "bfloat16", "cpu", budget=lambda device: 1024)
    # load_model refuses before loading anything; the environment variable lets it load anyway.
    monkeypatch.setattr("logitlab.model.memory.available_memory", lambda device: 1024)
    monkeypatch.setattr("logitlab.model.sources.load_hf", lambda *a: pytest.fail("loaded despite the refusal"))
    with pytest.raises(LogitlabError, match="needs an estimated"):
        load_model(str(folder), dtype="bfloat16", cache=False)
    monkeypatch.undo()
    monkeypatch.setattr("logitlab.model.memory.available_memory", lambda device: 1024)
    monkeypatch.setenv(IGNORE_ENV, "1")
    assert load_model(str(folder), dtype="bfloat16", cache=False).dtype == "bfloat16"


def test_dtype_auto_is_float32_on_cpu(folder: Path) -> None:
    from logitlab.cli import _dtype
    from logitlab.model.device import resolve_dtype
    assert resolve_dtype("auto", "cpu") == "float32" and _dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(LogitlabError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")
    m = load_model(str(folder), dtype="auto", cache=False)
    assert m.dtype == "float32" and m.runner.w.W_Q.dtype == torch.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_cached_load_makes_no_transposed_copy(folder: Path, cache: Path, dtype: str) -> None:
    """The cache stores the unembedding and the MLP matrices in the runner's layout: a warm load uses the tensors
    it reads (converted to the load's dtype where needed) without cloning them into another layout."""
    from torch.utils._python_dispatch import TorchDispatchMode

    cold = load_model(str(folder), dtype=dtype)  # writes the cache
    w = cold.runner.w
    smallest = min(w.W_U.numel(), w.W_in.numel(), w.W_out.numel())

    class Copies(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[str, tuple[int, ...]]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.clone.default, torch.ops.aten.copy_.default) and out.numel() >= smallest:
                self.seen.append((str(func), tuple(out.shape)))
            return out

    with Copies() as copies:
        warm = load_model(str(folder), dtype=dtype)
    assert not copies.seen, f"a cached load copied big weights into another layout: {copies.seen}"
    for k, v in _weights(cold).items():
        assert torch.equal(v, getattr(warm.runner.w, k)), k
    tokens = torch.arange(1, 9)[None]
    assert torch.equal(warm.runner.run_with_cache(tokens).resid_final, cold.runner.run_with_cache(tokens).resid_final)
