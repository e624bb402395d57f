"""OLMo-2, Phi-3 and Granite on logitlab's own forward pass: what is particular to each family.

The invariant suite runs on each family's tiny kind too (HF parity, DLA sums, sweeps = hooked loops, gradients,
graph forward, schema); this file checks each family's own features against the Hugging Face forward pass (not
against TransformerLens: its own OLMo-2 logit lens leaves out the final norm's weight) and its refusals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from logitlab.analyses import clean_run, dla, logit_lens
from logitlab.errors import LogitlabError
from logitlab.model.spec import read_spec
from logitlab.task import load_task, tokenize_task

_models: dict[str, tuple[Any, Any]] = {}


def _load(kind: str, tmp: Path) -> tuple[Any, Any]:
    """(logitlab model, Hugging Face model) of a tiny kind, built once per session."""
    if kind not in _models:
        from transformers import AutoModelForCausalLM

        from logitlab.model.load import load_model
        from tests.tiny import make_model_folder
        folder = make_model_folder(kind, tmp / kind)
        _models[kind] = (load_model(str(folder), cache=False),
                         AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval())
    return _models[kind]


def _centre(x: torch.Tensor) -> torch.Tensor:
    # The processed unembedding is centred (TransformerLens convention): compare centred logits.
    return x - x.mean(-1, keepdim=True)


def _hf_diff(hf: Any, logits: torch.Tensor, t: Any) -> torch.Tensor:
    rows = torch.arange(t.n_prompts)
    last = logits[rows, t.final_pos]
    return last[rows, t.correct_ids] - last[rows, t.incorrect_ids[:, 0]]


def _lens_against_hf(kind: str, tmp: Path, task_file: Path, head: Any) -> None:
    """The logit lens before every layer and at the end, and DLA, against HF's hidden states read out by HF's
    own final norm weight and ``head`` (the unembedding and any logit scaling), with the final norm's scale
    frozen at the clean run's (logitlab's linear lens)."""
    m, hf = _load(kind, tmp)
    run = clean_run(m, tokenize_task(load_task(task_file), m.tokenizer))
    t = run.task
    assert int(t.incorrect_ids.shape[1]) == 1
    norm = hf.model.norm
    seen: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    try:
        with torch.no_grad():
            out = hf(t.tokens, output_hidden_states=True)
    finally:
        hook.remove()
    scale = (seen[0].pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    lens = logit_lens(run)
    for layer in range(m.spec.n_layers):
        with torch.no_grad():
            ref = _hf_diff(hf, head(out.hidden_states[layer] / scale * norm.weight), t)
        got = lens.values[lens.labels.index(f"{layer}_pre")]
        assert (got - ref).abs().max().item() < 1e-4, f"lens before layer {layer}"
    ref = _hf_diff(hf, out.logits, t)
    assert (lens.values[lens.labels.index("final_post")] - ref).abs().max().item() < 1e-4
    assert (run.logit_diff.cpu() - ref).abs().max().item() < 1e-4
    res = dla(run)
    assert (res.reconstructed + res.bias_term - ref).abs().max().item() < 1e-4


# ---- OLMo-2 ---------------------------------------------------------------------------------------------------

def test_olmo2_spec_and_weights(tmp_path_factory: pytest.TempPathFactory) -> None:
    m, hf = _load("olmo2", tmp_path_factory.getbasetemp())
    s = m.spec
    assert not s.pre_norms and s.post_norms and s.qk_norm and s.qk_norm_all_heads
    w = m.runner.w
    assert w.q_norm_w.shape == (s.n_layers, s.n_heads * s.d_head)
    assert w.k_norm_w.shape == (s.n_layers, s.n_kv_heads * s.d_head)
    attn = hf.model.layers[1].self_attn
    assert torch.equal(w.q_norm_w[1], attn.q_norm.weight) and torch.equal(w.k_norm_w[1], attn.k_norm.weight)
    assert torch.equal(w.lnf_w, hf.model.norm.weight)  # the final norm's weight is read, not dropped
    assert (w.lnf_w - 1).abs().max() > 0.1  # and the tiny model's is far from the identity


def test_olmo2_matches_hf_forward(tmp_path_factory: pytest.TempPathFactory) -> None:
    m, hf = _load("olmo2", tmp_path_factory.getbasetemp())
    toks = torch.randint(2, m.spec.d_vocab, (3, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(toks).logits
    got = m.runner.logits(toks)
    assert (_centre(got) - _centre(ref)).abs().max().item() < 1e-4


def test_olmo2_query_norm_couples_heads(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The query norm runs over all heads together: changing head 0's query projection changes head 1's pattern
    # (a per-head norm would leave it), in Hugging Face and in logitlab alike.
    m, _ = _load("olmo2", tmp_path_factory.getbasetemp())
    r = m.runner
    toks = torch.randint(2, m.spec.d_vocab, (1, 9), generator=torch.Generator().manual_seed(2))
    x = r.embed_sum(toks)
    before = r.attention(0, x)[1][:, 1].clone()
    saved = r._W_qkv[0, : m.spec.d_head].clone()
    try:
        r._W_qkv[0, : m.spec.d_head] *= 3.0
        after = r.attention(0, x)[1][:, 1]
    finally:
        r._W_qkv[0, : m.spec.d_head] = saved
    assert (after - before).abs().max().item() > 1e-3


def test_olmo2_lens_and_dla_against_hf(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path) -> None:
    _, hf = _load("olmo2", tmp_path_factory.getbasetemp())
    _lens_against_hf("olmo2", tmp_path_factory.getbasetemp(), tiny_task_file, hf.lm_head)


# ---- Phi-3 ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [6, 21])  # within and past the original context (8): short and long factors
def test_phi3_matches_hf_forward(tmp_path_factory: pytest.TempPathFactory, n: int) -> None:
    m, hf = _load("phi3", tmp_path_factory.getbasetemp())
    s = m.spec
    assert s.rotary[0].kind == "longrope" and s.rotary[0].dim == s.d_head // 2 and s.sliding_window[0] == 8
    toks = torch.randint(2, s.d_vocab, (2, n), generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        ref = hf(toks).logits
    assert (_centre(m.runner.logits(toks)) - _centre(ref)).abs().max().item() < 1e-4


def test_phi3_split_projections(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The fused projections, split: the value rows of qkv_proj and the up half of gate_up_proj are logitlab's.
    m, hf = _load("phi3", tmp_path_factory.getbasetemp())
    s, w = m.spec, m.runner.w
    layer = hf.model.layers[2]
    nq, nk = s.n_heads * s.d_head, s.n_kv_heads * s.d_head
    W_v = layer.self_attn.qkv_proj.weight[nq + nk:]  # (K·dh, D)
    assert torch.allclose(w.W_V[2].permute(0, 2, 1).reshape(nk, s.d_model) / layer.input_layernorm.weight, W_v,
                          atol=1e-5)
    d_mlp = w.W_in.shape[-1]
    assert torch.allclose(w.W_out[2], layer.mlp.down_proj.weight.T)
    assert layer.mlp.gate_up_proj.weight.shape[0] == 2 * d_mlp


def test_phi3_lens_and_dla_against_hf(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path) -> None:
    _, hf = _load("phi3", tmp_path_factory.getbasetemp())
    _lens_against_hf("phi3", tmp_path_factory.getbasetemp(), tiny_task_file, hf.lm_head)


# ---- Granite --------------------------------------------------------------------------------------------------

def test_granite_multipliers_folded(tmp_path_factory: pytest.TempPathFactory) -> None:
    m, hf = _load("granite", tmp_path_factory.getbasetemp())
    s, cfg = m.spec, hf.config
    assert (s.embed_scale, s.attn_scale, s.residual_multiplier, s.logits_scaling) == (
        cfg.embedding_multiplier, cfg.attention_multiplier, cfg.residual_multiplier, cfg.logits_scaling)
    toks = torch.randint(2, s.d_vocab, (2, 13), generator=torch.Generator().manual_seed(3))
    outs: dict[str, torch.Tensor] = {}
    hooks = [hf.model.layers[1].self_attn.register_forward_hook(lambda _m, _a, o: outs.__setitem__("attn", o[0])),
             hf.model.layers[1].mlp.register_forward_hook(lambda _m, _a, o: outs.__setitem__("mlp", o)),
             hf.model.embed_tokens.register_forward_hook(lambda _m, _a, o: outs.__setitem__("embed", o))]
    try:
        with torch.no_grad():
            ref = hf(toks).logits
    finally:
        for h in hooks:
            h.remove()
    assert (_centre(m.runner.logits(toks)) - _centre(ref)).abs().max().item() < 1e-4
    cache = m.runner.run_with_cache(toks)
    # What a component writes to the residual stream is the module's output times the residual multiplier, and
    # the residual stream is the sum of those writes and the scaled embedding.
    assert (cache.attn_out[1] - cfg.residual_multiplier * outs["attn"]).abs().max().item() < 1e-5
    assert (cache.mlp_out[1] - cfg.residual_multiplier * outs["mlp"]).abs().max().item() < 1e-5
    assert (cache.embed - cfg.embedding_multiplier * outs["embed"]).abs().max().item() < 1e-5
    total = cache.embed + cache.attn_out.sum(0) + cache.mlp_out.sum(0)
    assert (total - cache.resid_final).abs().max().item() < 1e-4


def test_granite_lens_and_dla_against_hf(tmp_path_factory: pytest.TempPathFactory, tiny_task_file: Path) -> None:
    _, hf = _load("granite", tmp_path_factory.getbasetemp())
    ls = hf.config.logits_scaling
    _lens_against_hf("granite", tmp_path_factory.getbasetemp(), tiny_task_file, lambda x: hf.lm_head(x) / ls)


# ---- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "change", "named"), [
    ("granite", {"mlp_bias": True}, "mlp_bias"),
    ("granite", {"residual_multiplier": 0.0}, "residual_multiplier"),
    ("granite", {"logits_scaling": -1.0}, "logits_scaling"),
    ("granite", {"rope_parameters": {"rope_type": "proportional", "rope_theta": 1e4}}, "proportional"),
    ("olmo2", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ("olmo2", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0, "mscale": 1.0}},
     "mscale"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0],
                                  "long_factor": [1.0], "original_max_position_embeddings": 8}}, "longrope"),
])
def test_unsupported_flags_refused_by_name(kind: str, change: dict[str, Any], named: str) -> None:
    from tests.tiny import make_config
    cfg = make_config(kind, 300)
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(LogitlabError, match=named):
        read_spec(cfg)
