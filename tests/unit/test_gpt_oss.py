"""gpt-oss on logitlab's own forward pass: attention sinks, attention biases, alternating sliding windows, yarn
rotary, and sparse blocks with a biased router (softmax over the top-k logits), biased experts and a clamped SwiGLU.

The invariant suite runs on the tiny kind ``gpt_oss`` (tests/tiny.py KINDS, MOE_KINDS). Here: the logits, every
layer's attention pattern and sparse-block output against Hugging Face in float32 and float64; that the sinks and
the clamps change the output (so the parity checks cover them); that the bridge logitlab boots keeps the value
biases (folding them is wrong with sinks); and refusals by name.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from logitlab.errors import LogitlabError
from logitlab.model.runner import Runner
from logitlab.model.spec import read_spec, read_weights
from logitlab.task import load_task, tokenize_task
from tests.tiny import GPT_OSS_LIMIT, make_config
from tests.unit.test_families import _centre, _load


def _model(factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return _load("gpt_oss", factory.getbasetemp())


def _tokens(m: Any, task_file: Path) -> torch.Tensor:
    return tokenize_task(load_task(task_file), m.tokenizer).tokens


def _hf_run(hf: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """HF's logits, attention weights per layer (eager: the sink column dropped) and sparse-block outputs."""
    moe_out: list[torch.Tensor] = []
    hooks = [layer.mlp.register_forward_hook(lambda _m, _a, out: moe_out.append(out[0]))
             for layer in hf.model.layers]
    try:
        with torch.no_grad():
            out = hf(tokens, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return out.logits, list(out.attentions), moe_out


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hf_parity_logits_patterns_and_sparse_blocks(dtype: torch.dtype, tmp_path_factory: pytest.TempPathFactory,
                                                     tiny_task_file: Path) -> None:
    m, hf = _model(tmp_path_factory)
    assert m.runner.__class__ is Runner and m.spec.attn_sinks and m.spec.moe is not None
    assert m.spec.sliding_window == (4, None) and m.spec.rotary[0].kind == "yarn" and m.spec.rotary[0].factor == 4.0
    tokens = _tokens(m, tiny_task_file)
    assert tokens.shape[1] > 8, "prompts must run past the window (4) and yarn's original context (8)"
    r = m.runner if dtype == torch.float32 else Runner(m.spec, m.runner.w.to(m.runner.device, dtype))
    ref_model = hf
    if dtype == torch.float64:  # transformers' grouped-product experts take no float64: its per-expert loop does
        ref_model = copy.deepcopy(hf).double()
        ref_model.set_experts_implementation("eager")
    logits, patterns, moe_out = _hf_run(ref_model, tokens)
    # Hugging Face's RMSNorm runs in float32 whatever the model's dtype, so its float64 pass is float32-accurate
    # (~1e-6 here); it checks the per-expert loop against logitlab as the float32 pass checks the grouped products.
    tol = 1e-4 if dtype == torch.float32 else 2e-5
    ours = r.logits(tokens)
    assert ours.dtype == dtype
    d = _max_rel(_centre(ours), _centre(logits))
    assert d < tol, f"logits differ from Hugging Face by {d:.2e} (relative) in {dtype}"
    cache = r.run_with_cache(tokens)
    for layer in range(m.spec.n_layers):
        d = (cache.pattern[layer] - patterns[layer]).abs().max().item()
        assert d < tol, f"layer {layer}: attention pattern differs from Hugging Face by {d:.2e}"
        d = _max_rel(cache.mlp_out[layer], moe_out[layer])
        assert d < tol, f"layer {layer}: sparse block output differs from Hugging Face by {d:.2e}"
    taken = 1 - cache.pattern.sum(-1)  # (layer, batch, head, query): what the sinks take from each row
    assert taken.min().item() > -tol and taken.mean().item() > 0.1 and taken.max().item() > 0.5, \
        f"the sinks take {taken.mean().item():.3f} of a row on average, at most {taken.max().item():.3f}"
    q = torch.arange(tokens.shape[1])
    outside = (q[:, None] - q[None, :]) >= 4  # (query, key) pairs outside layer 0's window of 4
    assert cache.pattern[0][..., outside].abs().max().item() == 0.0
    assert cache.pattern[1][..., outside].abs().max().item() > 1e-3, "layer 1 (full attention) never looks back"


def test_sinks_and_clamps_change_the_output(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path) -> None:
    """Switching the sinks off, or lifting the SwiGLU clamps, changes the logits by far more than the parity
    tolerance: the parity test covers both. The clamps bite on some units, not on all."""
    m, _ = _model(tmp_path_factory)
    tokens = _tokens(m, tiny_task_file)
    base = m.runner.logits(tokens)
    no_sinks = Runner(dataclasses.replace(m.spec, attn_sinks=False), m.runner.w).logits(tokens)
    alpha, limit = m.spec.moe.swiglu
    assert limit == GPT_OSS_LIMIT
    unclamped_spec = dataclasses.replace(m.spec, moe=dataclasses.replace(m.spec.moe, swiglu=(alpha, math.inf)))
    unclamped = Runner(unclamped_spec, m.runner.w).logits(tokens)
    d_sinks, d_clamps = (_centre(no_sinks) - _centre(base)).abs().max().item(), \
        (_centre(unclamped) - _centre(base)).abs().max().item()
    assert d_sinks > 0.1, f"sinks off changes the logits by only {d_sinks:.2e}"
    assert d_clamps > 0.1, f"clamps off changes the logits by only {d_clamps:.2e}"
    # share of expert units (every expert, every token) whose gate or up projection is clamped
    r, cache = m.runner, m.runner.run_with_cache(tokens)
    w = r.w
    clamped = []
    for layer in range(m.spec.n_layers):
        x = r.pre_norm(layer, 2, cache.resid_mid[layer])
        gate = torch.einsum("btd,edf->btef", x, w.W_exp_gate[layer]) + w.b_exp_gate[layer]
        up = torch.einsum("btd,edf->btef", x, w.W_exp_in[layer]) + w.b_exp_in[layer]
        clamped.append(((gate > limit) | (up.abs() > limit)).float().mean().item())
    assert all(0.01 < c < 0.6 for c in clamped), f"share of clamped units per layer: {clamped}"


def test_routing_is_a_softmax_over_the_top_k_logits(tmp_path_factory: pytest.TempPathFactory,
                                                    tiny_task_file: Path) -> None:
    """gpt-oss keeps the k largest router logits (its bias included) and takes the softmax over those k only,
    checked against the formula written out (HF parity of the block outputs checks it against the model)."""
    from logitlab.model.moe import route
    m, _ = _model(tmp_path_factory)
    r = m.runner
    cache = r.run_with_cache(_tokens(m, tiny_task_file))
    for layer in range(m.spec.n_layers):
        x = r.pre_norm(layer, 2, cache.resid_mid[layer])
        _, idx, weights = route(m.spec.moe, r.w, layer, x)
        logits = x @ r.w.W_router[layer].T + r.w.b_router[layer]
        top, want = logits.topk(2, -1)
        assert torch.equal(idx, want)
        expect = torch.zeros_like(logits).scatter(-1, want, top.softmax(-1))
        assert (weights - expect).abs().max().item() < 1e-6
        assert (weights.sum(-1) - 1).abs().max().item() < 1e-6
    assert r.w.b_router.abs().min().item() > 0  # the router bias is read (non-zero in the tiny model)


def test_bridge_keeps_value_biases(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path) -> None:
    """With sinks, z holds (row sum) · b_V, not b_V: the bridge logitlab boots keeps the value biases (its forward
    equals Hugging Face's), and read_weights refuses a sink model's bridge that logitlab did not boot."""
    m, hf = _model(tmp_path_factory)
    tokens = _tokens(m, tiny_task_file)
    assert m.runner.w.b_V.abs().max().item() > 0.05
    with torch.no_grad():
        d = (_centre(m.bridge(tokens)) - _centre(hf(tokens).logits)).abs().max().item()
    assert d < 1e-4, f"the bridge differs from Hugging Face by {d:.2e}"
    w = read_weights(m.bridge, m.spec)
    assert (w.sinks - m.runner.w.sinks).abs().max().item() == 0.0
    m.bridge.logitlab_value_biases_kept = False
    try:
        with pytest.raises(LogitlabError, match="value biases"):
            read_weights(m.bridge, m.spec)
    finally:
        m.bridge.logitlab_value_biases_kept = True


def _config(**change: Any) -> Any:
    cfg = make_config("gpt_oss", 300)
    for k, v in change.items():
        setattr(cfg, k, v)
    return cfg


def test_the_tiny_config_is_read() -> None:
    spec = read_spec(_config())
    assert spec.attn_sinks and spec.moe.topk_softmax and spec.moe.biases and spec.moe.swiglu == (1.702, GPT_OSS_LIMIT)
    assert spec.moe.sparse == (True, True) and spec.moe.d_expert == 32 and spec.n_kv_heads == 2


@pytest.mark.parametrize(("change", "named"), [
    ({"use_attention_chunks": True}, "use_attention_chunks"),
    ({"router_temperature": 0.5}, "router_temperature"),
    ({"experts_per_token": 3}, "experts_per_token"),
    ({"layer_types": ["sliding_attention", "chunked_attention"]}, "chunked_attention"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"swiglu_limit": -1.0}, "swiglu_limit"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                          "rope_theta": 150000.0, "extrapolation_factor": 2.0}}, "extrapolation_factor"),
])
def test_unknown_options_refused_by_name(change: dict[str, Any], named: str) -> None:
    with pytest.raises(LogitlabError, match=named):
        read_spec(_config(**change))


def test_released_duplicate_keys_accepted() -> None:
    """The released config.json files carry ``experts_per_token`` and ``initial_context_length``, which
    transformers ignores."""
    spec = read_spec(_config(experts_per_token=2, initial_context_length=8))
    assert spec.moe.top_k == 2


def test_bridge_objects(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path) -> None:
    """A TransformerBridge passed as an object: processed with compatibility mode's defaults (value biases folded)
    it is refused by name; passed raw, logitlab processes a copy and the numbers are the path load's."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from logitlab.model.load import load_model
    m, _ = _model(tmp_path_factory)
    folder = str(tmp_path_factory.getbasetemp() / "gpt_oss")
    tokens = _tokens(m, tiny_task_file)

    def boot() -> Any:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(folder))
    processed = boot()
    processed.enable_compatibility_mode(disable_warnings=True)
    with pytest.raises(LogitlabError, match="value biases"):
        load_model(processed, cache=False)
    raw = load_model(boot(), cache=False)
    d = (raw.runner.logits(tokens) - m.runner.logits(tokens)).abs().max().item()
    assert d < 1e-5, f"a raw bridge object gives logits {d:.2e} away from the path load's"


def test_task_inputs_are_away_from_the_clamps(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path) -> None:
    """The clamps are kinks, as routing ties are jumps: the finite-difference checks (steps of 1e-5 along random
    directions, test_block.py) are valid only if no unit of a kept expert at a position the metric reads is within
    reach of a clamp: the nearest one must be several times farther than such a step moves any unit
    (test_moe.py checks the routing ties)."""
    from logitlab.model.moe import route
    m, _ = _model(tmp_path_factory)
    t = tokenize_task(load_task(tiny_task_file), m.tokenizer)
    r, limit = m.runner, m.spec.moe.swiglu[1]
    cache, w = r.run_with_cache(t.tokens), r.w
    read = torch.arange(t.tokens.shape[1])[None] <= t.final_pos[:, None]  # (B, T) positions at or before the end
    g = torch.Generator().manual_seed(0)

    def units(layer: int, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = r.pre_norm(layer, 2, resid)
        gate = torch.einsum("btd,edf->btef", x, w.W_exp_gate[layer]) + w.b_exp_gate[layer]  # (B, T, E, f)
        up = torch.einsum("btd,edf->btef", x, w.W_exp_in[layer]) + w.b_exp_in[layer]
        return x, gate, up
    for layer in range(m.spec.n_layers):
        x, gate, up = units(layer, cache.resid_mid[layer])
        kept = route(m.spec.moe, w, layer, x)[2] > 0  # (B, T, E)
        near = torch.minimum((gate - limit).abs(), (up.abs() - limit).abs())[kept & read[..., None]]
        step = 1e-5 * torch.randn(cache.resid_mid[layer].shape, generator=g)
        _, gate2, up2 = units(layer, cache.resid_mid[layer] + step)
        moved = max((gate2 - gate).abs().max().item(), (up2 - up).abs().max().item())
        assert near.min().item() > 5 * moved, \
            f"layer {layer}: a unit {near.min().item():.1e} from a clamp; a step moves units by up to {moved:.1e}"


def test_processed_weights_cache_round_trip(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The sinks and the router and expert biases are written to the processed-weights cache and read back: a
    second load (from the cache: neither the direct reader nor the bridge) gives the first load's logits."""
    from logitlab.model.load import load_model
    m, _ = _model(tmp_path_factory)
    monkeypatch.setenv("LOGITLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = str(tmp_path_factory.getbasetemp() / "gpt_oss")
    tokens = _tokens(m, tiny_task_file)
    first = load_model(folder)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the second load did not come from the cache")
    monkeypatch.setattr("logitlab.model.sources.direct_weights", refuse)
    monkeypatch.setattr("logitlab.model.sources.boot_bridge", refuse)
    second = load_model(folder)
    for name in ("sinks", "b_router", "b_exp_gate", "b_exp_in", "b_exp_out"):
        assert torch.equal(getattr(second.runner.w, name), getattr(m.runner.w, name)), name
    assert torch.equal(second.runner.logits(tokens), first.runner.logits(tokens))
