"""Scaled rotary embeddings (linear, dynamic, llama3, yarn, longrope; per layer type on Gemma-3) against Hugging Face.

Each scaling type runs on a tiny random model with the scaling switched on; logits are compared with the Hugging
Face forward pass at lengths below and above the original context where the length matters. logitlab computes
the frequencies itself (``logitlab.model.spec.Rotary``), so these comparisons check its formulas independently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from logitlab.errors import LogitlabError
from logitlab.model.spec import read_spec

ORIG = 16  # original context of the llama3 / yarn / longrope models (prompts run past it)
LENGTHS = (9, 16, 17, 40)  # below, at, just past and well past ORIG

SCALINGS: dict[str, dict[str, Any]] = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    # dynamic scales past max_position_embeddings (set to ORIG below for this model)
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIG, "rope_theta": 500.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIG, "rope_theta": 1000.0},
    "yarn_mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIG, "beta_fast": 8,
                    "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5, "truncate": False},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": ORIG, "rope_theta": 1000.0,
                 "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [1.0 + 1.5 * i for i in range(8)]},
}


def _llama_config(vocab: int, rope: dict[str, Any], **kw: Any) -> Any:
    from transformers import LlamaConfig
    max_pos = ORIG if rope["rope_type"] == "dynamic" else 4 * ORIG
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_pos,
                       rms_norm_eps=1e-5, bos_token_id=0, pad_token_id=1, tie_word_embeddings=False,
                       rope_parameters=dict(rope), architectures=["LlamaForCausalLM"], **kw)


def _gemma3_config(vocab: int) -> Any:
    """Gemma-3 1B's layout in small: sliding local layers with default rotary, global layers with linear ×8."""
    from transformers import Gemma3TextConfig
    return Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=6,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], max_position_embeddings=64,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000.0}},
        bos_token_id=0, pad_token_id=1, architectures=["Gemma3ForCausalLM"])


def _save(config: Any, folder: Path, gemma: bool = False) -> Path:
    """A random model of ``config`` with randomised norms, saved with the tiny tokenizer (as tests/tiny.py)."""
    from transformers import AutoModelForCausalLM
    folder.mkdir(parents=True, exist_ok=True)
    from tests.tiny import make_tokenizer
    make_tokenizer(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if gemma else 1.0))
            else:
                p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


_VOCAB = 300  # at least the tiny tokenizer's size
_loaded: dict[str, Any] = {}


def _model(name: str, tmp_dir: Path) -> Any:
    from logitlab.model.load import load_model
    if name not in _loaded:
        from tests.tiny import make_tokenizer
        vocab = len(make_tokenizer(tmp_dir / "tok"))
        cfg = _gemma3_config(vocab) if name == "gemma3_linear" else _llama_config(vocab, SCALINGS[name])
        _loaded[name] = load_model(str(_save(cfg, tmp_dir / name, gemma=name == "gemma3_linear")), cache=False)
    return _loaded[name]


@pytest.fixture(scope="module")
def rope_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rope")


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)  # the bridge centres the unembedding: compare centred logits


@pytest.mark.parametrize("name", [*SCALINGS, "gemma3_linear"])
def test_scaled_rotary_logits_match_hf(name: str, rope_dir: Path) -> None:
    from transformers import AutoModelForCausalLM
    model = _model(name, rope_dir)
    kinds = {r.kind for r in model.spec.rotary}
    assert kinds == ({"default", "linear"} if name == "gemma3_linear" else {SCALINGS[name]["rope_type"]})
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for T in LENGTHS:
        tokens = torch.randint(2, model.spec.d_vocab, (2, T), generator=g)
        # A fresh HF model per length: its dynamic scaling caches frequencies across calls.
        hf = AutoModelForCausalLM.from_pretrained(model.source, dtype=torch.float32)
        ref = hf(tokens).logits
        ours = model.runner.logits(tokens)
        d = (_centre(ours) - _centre(ref)).abs().max().item()
        assert d <= 1e-4 * max(1.0, ref.abs().max().item()), f"{name}, {T} positions: max diff {d}"
        worst = max(worst, d)
        # Each row's final position alone (the sweeps' last block) gives the same logits.
        last = model.runner.last_logits(tokens, torch.full((2,), T - 1))
        assert (_centre(last) - _centre(ref[:, -1])).abs().max().item() <= 1e-4
    print(f"{name}: max |logit diff| vs HF over lengths {LENGTHS}: {worst:.2e}")


@pytest.mark.parametrize("name", list(SCALINGS))
def test_inverse_frequencies_match_hf_formulas(name: str) -> None:
    """logitlab's own frequencies and attention factor equal transformers' for every length class."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = _llama_config(_VOCAB, SCALINGS[name])
    spec = read_spec(cfg)
    rot = spec.rotary[0]
    for T in LENGTHS:
        inv, att = ROPE_INIT_FUNCTIONS[rot.kind](cfg, torch.device("cpu"), seq_len=T)
        ours = rot.inv_freq(T)
        torch.testing.assert_close(ours, inv.float(), rtol=1e-6, atol=0)
        assert abs(rot.attention_factor - att) < 1e-12, f"{name}: attention factor {rot.attention_factor} vs {att}"
    if rot.kind in ("yarn", "longrope"):
        assert rot.attention_factor != 1.0, "the scaled model should exercise the attention factor"


def test_gemma3_rotary_per_layer_type(rope_dir: Path) -> None:
    spec = _model("gemma3_linear", rope_dir).spec
    assert [r.kind for r in spec.rotary] == ["default", "linear", "default"]
    assert spec.rotary[1].factor == 8.0 and spec.rotary[1].theta == 1000.0 and spec.rotary[0].theta == 10000.0


@pytest.mark.parametrize("rope, match", [
    ({"rope_type": "proportional", "rope_theta": 1e4}, "'proportional' is not supported"),
    ({"rope_type": "linear", "factor": 2.0, "mscale": 1.0}, "keys logitlab does not implement: mscale"),
    ({"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8},
     "keys logitlab does not implement: original_max_position_embeddings"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8}, "lack high_freq_factor, low_freq_f"),
    ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
])
def test_unknown_rotary_types_and_keys_are_refused(rope: dict[str, Any], match: str) -> None:
    cfg = _llama_config(_VOCAB, {"rope_type": "linear", "factor": 2.0})
    cfg.rope_parameters = rope  # set after construction: transformers' own validation only warns
    with pytest.raises(LogitlabError, match=match):
        read_spec(cfg)


def test_gemma3_unknown_key_on_one_layer_type_is_refused() -> None:
    cfg = _gemma3_config(_VOCAB)
    cfg.rope_parameters = {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                           "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6, "foo": 1}}
    with pytest.raises(LogitlabError, match="foo"):
        read_spec(cfg)


# ---- the analyses' invariants on scaled models (the tiny task's prompts run past the original context) ----------

@pytest.fixture(scope="module", params=["yarn", "longrope_short_context", "gemma3_linear"])
def scaled(request: pytest.FixtureRequest, rope_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from logitlab.model.load import load_model
    from tests.tiny import make_tokenizer
    name = request.param
    if name == "longrope_short_context" and name not in _loaded:
        # Original context 6: every tiny-task prompt (≥ 8 tokens) runs on the long factors.
        rope = {**SCALINGS["longrope"], "original_max_position_embeddings": 6}
        cfg = _llama_config(len(make_tokenizer(rope_dir / "tok")), rope)
        _loaded[name] = load_model(str(_save(cfg, rope_dir / name)), cache=False)
    return _model(name, rope_dir) if name != "longrope_short_context" else _loaded[name]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import TASK_YAML
    path = tmp_path_factory.mktemp("rope_task") / "task.yaml"
    path.write_text(TASK_YAML, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scaled_run(scaled: Any, task_file: Path) -> Any:
    from logitlab.analyses import clean_run
    from logitlab.task import load_task, tokenize_task
    return clean_run(scaled, tokenize_task(load_task(task_file), scaled.tokenizer))


def test_scaled_models_dla_and_logit_diff(scaled_run: Any) -> None:
    from tests.unit import test_invariants as inv
    if scaled_run.model.spec.rotary[0].kind == "longrope":
        assert int(scaled_run.task.final_pos.max()) + 1 > 6, "the prompts must run past the original context"
    inv.test_logit_diff_and_loss_match_full_logits(scaled_run)
    inv.test_dla_reconstructs_and_components_sum(scaled_run)
    inv.test_heads_sum_to_attn_out(scaled_run)


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_scaled_models_ablation_equals_hooked_loop(scaled_run: Any, kind: str) -> None:
    from tests.unit import test_invariants as inv
    inv.test_ablation_sweep_equals_one_forward_per_head(scaled_run, kind)


def test_scaled_models_patching_equals_hooked_loop(scaled: Any, task_file: Path) -> None:
    from tests.unit import test_invariants as inv
    inv.test_patching_equals_one_forward_per_patch(scaled, task_file)


def test_scaled_models_cached_prefix_blocks(scaled: Any, task_file: Path) -> None:
    from tests.unit import test_runner
    test_runner.test_blocks_with_cached_prefix_equal_full_blocks(scaled, task_file)


def test_scaled_models_graph_gradients_and_flops(scaled: Any, task_file: Path) -> None:
    from tests.unit import test_block, test_circuit
    test_circuit.test_graph_forward_unpatched_and_fully_patched(scaled)
    test_block.test_gradients_through_the_block_match_finite_differences(scaled, task_file)
    test_block.test_flops_counted_on_the_code_equal_the_closed_form(scaled)
