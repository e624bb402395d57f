"""The direct first load (logitlab/model/direct.py) gives the bridge path's weights, and falls back where it must.

For every covered family, a tiny random checkpoint (randomised norms, so folding bugs show) is loaded both ways:
the processed weights are equal field by field in float32 and after rounding to bfloat16, and so are the
logits. Checkpoints outside the allow-list take the bridge path, and two mutations of the processing (no
unembedding centring, no value-bias folding) are caught by the same comparison.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch

import tests.tiny as tiny
from logitlab.model import direct
from logitlab.model.bridge import boot_bridge
from logitlab.model.build import from_bridge
from logitlab.model.direct import direct_reason, direct_weights
from logitlab.model.hub import load_hf
from logitlab.model.load import load_model
from logitlab.model.spec import Weights, read_spec, read_weights

# name -> (tiny kind, config overrides): every covered family, with and without the options that change the
# processing (biases, tied embeddings, soft-capped logits, grouped KV heads, a bfloat16 checkpoint, shards).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama_mha": ("llama_mha", {}),
    "llama_gqa_bias": ("llama_gqa", {"attention_bias": True}),  # q, k, v and o biases
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),  # q, k, v biases, grouped: value biases folded through shared heads
    "qwen3_tied": ("qwen3", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {}),
    "gemma2_softcap": ("gemma2_softcap", {}),  # soft-capped logits: the unembedding is not centred
    "gemma2": ("gemma2_softcap", {"final_logit_softcapping": None, "attn_logit_softcapping": None}),
    "gemma3": ("gemma3", {}),  # tied, (1 + w) norms, query/key norms, one KV head
    "llama_wide": ("llama_gqa", {"hidden_size": 160}),  # d_model not a multiple of 64: uneven unembedding blocks
    "olmo2": ("olmo2", {}),  # no pre-norms (nothing folded, the final norm kept), query/key norms over all heads
    "olmo2_tied": ("olmo2", {"tie_word_embeddings": True}),
    "phi3": ("phi3", {}),  # fused qkv_proj and gate_up_proj, grouped KV heads
    "phi3_mha_tied": ("phi3", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "granite": ("granite", {}),  # residual multiplier in W_O and W_out, logits scaling in W_U
    "granite_bias": ("granite", {"attention_bias": True}),  # biases: value biases folded, then b_O scaled
    "granite_tied": ("granite", {"tie_word_embeddings": True}),  # W_U / logits_scaling, W_E as stored
    "qwen3_moe": ("qwen3_moe", {}),  # sparse layers 0 and 2 (router and experts folded), a dense layer 1
    "qwen3_moe_all_sparse": ("qwen3_moe", {"mlp_only_layers": []}),  # no dense MLP: width 0
    "olmoe": ("olmoe", {}),  # every layer sparse, query/key norms over all heads
    "mixtral": ("mixtral", {}),  # block_sparse_moe.experts.E.w1 (gate), w3 (up), w2 (down)
    "gpt_oss": ("gpt_oss", {}),  # sinks, value biases kept, router/expert biases, interleaved gate_up_proj
}
_STORED_BF16 = "qwen2_bf16"  # the qwen2 checkpoint stored in bfloat16
_STORED_F16 = "gemma3_f16"  # the gemma3 checkpoint stored in float16
_SHARDED = "gemma3_sharded"  # the gemma3 checkpoint in several files with an index


def _make(kind: str, folder: Path, overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    make_config = tiny.make_config

    def patched(k: str, vocab: int) -> Any:
        cfg = make_config(k, vocab)
        for key, value in overrides.items():
            setattr(cfg, key, value)
        return cfg
    with monkeypatch.context() as m:
        m.setattr(tiny, "make_config", patched)
        return tiny.make_model_folder(kind, folder)


def _resave(src: Path, dst: Path, **kwargs: Any) -> Path:
    """``src``'s model and tokenizer saved again into ``dst`` (``save_pretrained`` options)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).to(kwargs.pop("dtype", torch.float32))
    hf.save_pretrained(str(dst), safe_serialization=True, **kwargs)
    return dst


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("direct")
    with pytest.MonkeyPatch.context() as mp:
        out = {name: _make(kind, root / name, over, mp) for name, (kind, over) in VARIANTS.items()}
    out[_STORED_BF16] = _resave(out["qwen2"], root / _STORED_BF16, dtype=torch.bfloat16)
    out[_STORED_F16] = _resave(out["gemma3"], root / _STORED_F16, dtype=torch.float16)
    out[_SHARDED] = _resave(out["gemma3"], root / _SHARDED, max_shard_size="40KB")
    assert len(list(out[_SHARDED].glob("*.safetensors"))) > 2
    from safetensors import safe_open
    for name, stored in ((_STORED_BF16, "BF16"), (_STORED_F16, "F16")):
        with safe_open(str(out[name] / "model.safetensors"), framework="pt") as h:
            assert {str(h.get_slice(k).get_dtype()) for k in h.keys()} == {stored}
    return out


_bridges: dict[str, Any] = {}


def _bridge(folder: Path) -> Any:
    """The booted bridge of ``folder`` (the old first load), once per module."""
    if str(folder) not in _bridges:
        hf, tok = load_hf(str(folder), False)
        _bridges[str(folder)] = (boot_bridge(str(folder), hf, tok, folder.name, "cpu"), hf.config, tok)
    return _bridges[str(folder)]


def _mismatches(ref: Weights, got: Weights, atol: float) -> dict[str, Any]:
    """Fields of two Weights that differ: presence, shape, dtype, or values by more than ``atol`` (max diff)."""
    bad: dict[str, Any] = {}
    for f in fields(Weights):
        a, b = getattr(ref, f.name), getattr(got, f.name)
        if a is None or b is None:
            if (a is None) != (b is None):
                bad[f.name] = ("set" if a is not None else None, "set" if b is not None else None)
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            bad[f.name] = (tuple(a.shape), a.dtype, tuple(b.shape), b.dtype)
            continue
        diff = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
        if diff > atol:
            bad[f.name] = diff
    return bad


ALL = (*VARIANTS, _STORED_BF16, _STORED_F16, _SHARDED)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("block", ["default", "smallest"])
def test_direct_weights_equal_the_bridge_path(folders: dict[str, Path], name: str, block: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if block == "smallest":  # the embedding one row at a time, the unembedding 64 columns at a time
        monkeypatch.setattr(direct, "_BLOCK", 1)
    bridge, config, _ = _bridge(folders[name])
    spec = read_spec(config)
    assert direct_reason(folders[name], config, spec) is None
    got = direct_weights(folders[name], config, spec, torch.float32)
    assert got is not None
    ref = read_weights(bridge, spec, torch.float32)
    bad = _mismatches(ref, got, atol=1e-6)
    assert not bad, f"{name}: float32 weights differ from the bridge path's (max diffs): {bad}"
    # the same memory layouts too (a product's rounding can depend on its operands' layout)
    strides = {k: (v.stride(), getattr(got, k).stride()) for k, v in vars(ref).items()
               if v is not None and v.stride() != getattr(got, k).stride()}
    assert not strides, f"{name}: layouts differ from the bridge path's: {strides}"
    # bfloat16 and float16: the same float32 processing rounded once, to the bit
    for dtype in (torch.bfloat16, torch.float16):
        got16 = direct_weights(folders[name], config, spec, dtype)
        assert got16 is not None
        bad = _mismatches(read_weights(bridge, spec, dtype), got16, atol=0.0)
        assert not bad, f"{name}: {dtype} weights differ from the bridge path's: {bad}"


@pytest.mark.parametrize("name", ["llama_gqa_bias", "qwen2", "gemma2_softcap", "gemma3", _SHARDED, "olmo2", "phi3",
                                  "granite_bias", "qwen3_moe", "olmoe", "mixtral", "gpt_oss"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_direct_load_logits_equal_the_bridge_path(folders: dict[str, Path], name: str, dtype: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folders[name]
    bridge, config, tok = _bridge(folder)
    old = from_bridge(bridge, config, tok, str(folder), name, "cpu", dtype)

    def no_boot(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the direct load booted the bridge")
    monkeypatch.setattr("logitlab.model.sources.boot_bridge", no_boot)
    new = load_model(str(folder), dtype=dtype, cache=False)
    assert new._bridge is None and new.runner.w.W_Q.dtype == getattr(torch, dtype)
    tokens = new.tokenizer(["Mary is a great friend, isn’t", "John is an amazing person, isn’t"],
                           return_tensors="pt", padding=True).input_ids
    a, b = old.runner.logits(tokens), new.runner.logits(tokens)
    diff = (a - b).abs().max().item()
    assert diff <= 1e-6, f"{name} {dtype}: logits differ from the bridge path's by {diff}"
    assert a.abs().max().item() > 0.1  # the comparison sees real logits


def test_direct_load_caches_the_weights(folders: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGITLAB_CACHE", str(tmp_path / "cache"))
    first = load_model(str(folders["qwen2"]), dtype="bfloat16")
    files = sorted(p.name for p in (tmp_path / "cache" / "processed").iterdir())
    assert len(files) == 1 and files[0].endswith("-bfloat16.safetensors"), files
    monkeypatch.setattr("logitlab.model.sources.direct_weights",
                        lambda *a, **k: pytest.fail("a cached load processed the checkpoint again"))
    second = load_model(str(folders["qwen2"]), dtype="bfloat16")
    assert not _mismatches(first.runner.w, second.runner.w, atol=0.0)


def test_the_bridge_is_booted_on_demand(folders: dict[str, Path]) -> None:
    m = load_model(str(folders["mistral"]), cache=False)
    assert m._bridge is None
    tokens = m.tokenizer("Mary is a great friend", return_tensors="pt").input_ids
    ours, theirs = m.runner.logits(tokens), m.bridge(tokens)
    centred = (ours - ours.mean(-1, keepdim=True)) - (theirs - theirs.mean(-1, keepdim=True))
    assert centred.abs().max().item() < 1e-4, centred.abs().max().item()


# ---- fallbacks ------------------------------------------------------------------------------------------------

def _count_boots(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    booted: list[str] = []

    def counting(source: str, *args: Any, **kwargs: Any) -> Any:
        booted.append(source)
        return boot_bridge(source, *args, **kwargs)
    monkeypatch.setattr("logitlab.model.sources.boot_bridge", counting)
    return booted


def test_uncovered_family_takes_the_bridge_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny.make_model_folder("neox", tmp_path / "neox")  # one of logitlab's own, not covered here
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(folder))
    reason = direct_reason(folder, config, read_spec(config))
    assert reason is not None and "gpt_neox" in reason
    booted = _count_boots(monkeypatch)
    m = load_model(str(folder), cache=False)
    assert booted == [str(folder)] and m.runner.w.b_in.abs().max().item() > 0  # its MLP biases, read by the bridge


def test_unexpected_tensor_takes_the_bridge_path(folders: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint holding a tensor the direct load does not know is not guessed at: the bridge loads it."""
    import shutil

    from safetensors.torch import load_file, save_file
    folder = tmp_path / "extra"
    shutil.copytree(folders["qwen3_tied"], folder)
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.0.self_attn.extra_scale"] = torch.ones(3)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(folder))
    reason = direct_reason(folder, config, read_spec(config))
    assert reason is not None and "extra_scale" in reason
    booted = _count_boots(monkeypatch)
    load_model(str(folder), cache=False)
    assert booted == [str(folder)]


def test_olmo2_attention_biases_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OLMo-2 with attention biases (no released checkpoint has them) is left to the bridge path, not guessed at."""
    folder = _make("olmo2", tmp_path / "olmo2_bias", {"attention_bias": True}, monkeypatch)
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(folder))
    assert "bias" in (direct_reason(folder, config, read_spec(config)) or "")
    assert direct_weights(folder, config, read_spec(config)) is None


def test_no_safetensors_takes_the_bridge_path(folders: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(folders["mistral"]))
    (tmp_path / "config.json").write_text((folders["mistral"] / "config.json").read_text())
    assert "model.safetensors" in (direct_reason(tmp_path, config, read_spec(config)) or "")
    assert direct_weights(tmp_path, config, read_spec(config)) is None


# ---- the comparison catches mistakes in the processing ----------------------------------------------------------

def test_skipped_centring_is_caught(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    bridge, config, _ = _bridge(folders["gemma3"])
    spec = read_spec(config)
    unembedding = direct._unembedding
    monkeypatch.setattr(direct, "_unembedding",
                        lambda u, g, centre, scaling=1.0: unembedding(u, g, centre=False, scaling=scaling))
    got = direct_weights(folders["gemma3"], config, spec)
    assert got is not None
    assert set(_mismatches(read_weights(bridge, spec), got, atol=1e-6)) == {"W_U"}


def test_unfolded_value_biases_are_caught(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    bridge, config, _ = _bridge(folders["qwen2"])
    spec = read_spec(config)
    monkeypatch.setattr(direct, "_fold_value_biases", lambda b_O, b_V, W_O: b_O)
    got = direct_weights(folders["qwen2"], config, spec)
    assert got is not None
    assert set(_mismatches(read_weights(bridge, spec), got, atol=1e-6)) == {"b_O"}


def test_own_model_code_takes_the_bridge_path(folders: dict[str, Path]) -> None:
    """A folder whose config names its own modelling code (``auto_map``) is not assumed to be the standard one."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(folders["llama_mha"]))
    spec = read_spec(config)
    assert direct_reason(folders["llama_mha"], config, spec) is None
    config.auto_map = {"AutoModelForCausalLM": "modeling_custom.CustomLlama"}
    assert "auto_map" in (direct_reason(folders["llama_mha"], config, spec) or "")


def test_memory_estimate_counts_the_direct_load(folders: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A covered folder's first load is estimated without the bridge (weights plus float32 blocks); a folder the
    direct load does not cover keeps the bridge-booting estimate."""
    from logitlab.model.memory import COLD_LOAD_FACTOR, estimate_memory
    monkeypatch.setenv("LOGITLAB_CACHE", str(tmp_path / "cache"))
    est = estimate_memory(str(folders["qwen3_tied"]), "bfloat16")
    assert est is not None and not est.cold_load
    monkeypatch.setattr("logitlab.model.direct.DIRECT_MODEL_TYPES", frozenset())
    old = estimate_memory(str(folders["qwen3_tied"]), "bfloat16")
    assert old is not None and old.cold_load
    # the bridge path's load term is replaced by the weights plus the float32 blocks (vocabulary × d_model × 4)
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(folders["qwen3_tied"]))
    blocks = config.vocab_size * config.hidden_size * 4
    assert old.host - est.host == int(COLD_LOAD_FACTOR * est.n_params * 4) - est.runner_params * 2 - blocks, (old, est)
