"""logitlab's staged forward pass equals the Hugging Face and TransformerLens bridge forward passes."""

import pytest
import torch

from logitlab.task import load_task, tokenize_task


def _centre(x: torch.Tensor) -> torch.Tensor:
    # Centring the unembedding shifts every logit of a position equally; compare centred logits.
    return x - x.mean(-1, keepdim=True)


def test_runner_matches_hf_and_bridge(tiny_model, tiny_task_file) -> None:
    from transformers import AutoModelForCausalLM
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    tokens = tt.tokens
    ours = tiny_model.runner.logits(tokens)
    bridge = tiny_model.bridge(tokens)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model.name, dtype=torch.float32)(tokens).logits
    d_bridge = (_centre(ours) - _centre(bridge)).abs().max().item()
    d_hf = (_centre(ours) - _centre(hf)).abs().max().item()
    scale = hf.abs().max().item()
    assert d_hf < 1e-4 * max(1.0, scale), f"{tiny_model.spec.model_type}: runner vs HF max diff {d_hf}"
    assert d_bridge < 1e-4 * max(1.0, scale), f"{tiny_model.spec.model_type}: runner vs bridge max diff {d_bridge}"


def test_cache_matches_bridge_hooks(tiny_model, tiny_task_file) -> None:
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    _, cache = tiny_model.bridge.run_with_cache(tt.tokens)
    ours = tiny_model.runner.run_with_cache(tt.tokens)
    for layer in range(tiny_model.spec.n_layers):
        for name, mine in [("attn.hook_z", ours.z[layer]), ("hook_attn_out", ours.attn_out[layer]),
                           ("hook_resid_pre", ours.resid_pre[layer]), ("hook_mlp_out", ours.mlp_out[layer]),
                           ("attn.hook_pattern", ours.pattern[layer])]:
            ref = cache[f"blocks.{layer}.{name}"]
            diff = (ref - mine).abs().max().item()
            assert diff < 1e-4 * max(1.0, ref.abs().max().item()), f"{name} L{layer}: max diff {diff}"


def test_blocks_with_cached_prefix_equal_full_blocks(tiny_model, tiny_task_file) -> None:
    # Positions P… run with the keys/values of positions 0…P-1 from a cache give the same outputs as the whole
    # sequence (rotary offsets, sliding windows and the final-position query included).
    r = tiny_model.runner
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    cache = r.run_with_cache(tt.tokens)
    T = tt.tokens.shape[1]
    last = torch.full((tt.n_prompts,), T - 1)
    for layer in range(tiny_model.spec.n_layers):
        x = cache.resid_pre[layer]
        full = r.block(layer, x)
        full_last = r.block(layer, x, query_pos=last)
        k, v = r.keys_values(layer, x)
        for P in (1, T // 2, T - 1):
            got = r.block(layer, x[:, P:], prefix_kv=(k[:, :P], v[:, :P]))
            assert (got - full[:, P:]).abs().max().item() < 1e-5, f"layer {layer}, prefix {P}"
            got_last = r.block(layer, x[:, P:], query_pos=last, prefix_kv=(k[:, :P], v[:, :P]))
            assert (got_last - full_last).abs().max().item() < 1e-5, f"layer {layer}, prefix {P}, last position"


def test_processed_weights_cache_skips_the_bridge(tmp_path, monkeypatch) -> None:
    from logitlab.model.load import load_model
    from tests.tiny import make_model_folder
    monkeypatch.setenv("LOGITLAB_CACHE", str(tmp_path / "cache"))
    folder = make_model_folder("gemma3", tmp_path / "m")
    first = load_model(str(folder))
    assert list((tmp_path / "cache" / "processed").glob("*.safetensors"))
    monkeypatch.setattr("logitlab.model.sources.direct_weights", lambda *a, **k: pytest.fail("cache not read"))
    second = load_model(str(folder))
    assert second._bridge is None, "a cached load must not boot the bridge"
    tokens = torch.tensor([[0, 5, 9, 11, 3, 7]])
    diff = (first.runner.logits(tokens) - second.runner.logits(tokens)).abs().max().item()
    assert diff == 0.0, f"cached weights differ: {diff}"
    assert (second.bridge(tokens) - first.bridge(tokens)).abs().max().item() < 1e-5  # booted lazily
