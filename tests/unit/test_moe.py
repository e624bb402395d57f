"""Mixtures of experts (Qwen3-MoE, OLMoE, Mixtral, gpt-oss) on logitlab's own forward pass.

The invariant suite runs on the tiny kinds ``qwen3_moe`` and ``gpt_oss`` (tests/tiny.py KINDS; gpt-oss's own
checks are in test_gpt_oss.py). Here each of the four families
(``model_kind``) is checked against Hugging Face (logits, every layer's MoE output, the lens and DLA), its sweeps
against one hooked forward per intervention and its gradients against finite differences; then routing itself:
the test inputs are away from routing ties (so finite differences are valid), integrated gradients are complete
when routing cannot switch, and refusals of unknown router options by name.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from logitlab.analyses import clean_run, head_ablation
from logitlab.analyses.circuit import edge_scores, pair_batches, plain_metric
from logitlab.analyses.patching import activation_patching
from logitlab.errors import LogitlabError
from logitlab.model.graph import EdgeGraph
from logitlab.model.moe import route
from logitlab.model.runner import Runner
from logitlab.model.spec import read_spec
from logitlab.reference import loop_head_ablation, loop_patching
from logitlab.sweep import SweepSettings
from logitlab.task import load_task, tokenize_task
from tests.unit.test_block import test_gradients_through_the_block_match_finite_differences as _gradients_check
from tests.unit.test_families import _centre, _lens_against_hf, _load

FAMILIES = ["qwen3_moe", "olmoe", "mixtral", "gpt_oss"]


def _model(kind: str, factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return _load(kind, factory.getbasetemp())


@pytest.mark.parametrize("model_kind", FAMILIES)
def test_hf_parity_logits_and_each_moe_output(model_kind: str, tmp_path_factory: pytest.TempPathFactory,
                                              tiny_task_file: Path) -> None:
    m, hf = _model(model_kind, tmp_path_factory)
    assert m.spec.moe is not None and m.runner.__class__ is Runner
    t = tokenize_task(load_task(tiny_task_file), m.tokenizer)
    seen: list[torch.Tensor] = []
    # (gpt-oss's block returns its output and the router scores)
    hooks = [layer.mlp.register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
             for layer in hf.model.layers]
    try:
        with torch.no_grad():
            ref = hf(t.tokens).logits
    finally:
        for h in hooks:
            h.remove()
    ours = m.runner.logits(t.tokens)
    assert (_centre(ours) - _centre(ref)).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    cache = m.runner.run_with_cache(t.tokens)
    for layer, out in enumerate(seen):  # each layer's sparse block (or Qwen3-MoE's dense MLP) output
        assert (cache.mlp_out[layer] - out).abs().max().item() < 1e-5 * max(1.0, out.abs().max().item()), layer
    if model_kind == "qwen3_moe":
        assert m.spec.moe.sparse == (True, False, True)  # layer 1 is dense (mlp_only_layers)


@pytest.mark.parametrize("model_kind", FAMILIES)
def test_lens_and_dla_against_hf(model_kind: str, tmp_path_factory: pytest.TempPathFactory,
                                 tiny_task_file: Path) -> None:
    _, hf = _model(model_kind, tmp_path_factory)
    _lens_against_hf(model_kind, tmp_path_factory.getbasetemp(), tiny_task_file, hf.lm_head)


@pytest.mark.parametrize("model_kind", FAMILIES)
def test_sweeps_equal_hooked_loops(model_kind: str, tmp_path_factory: pytest.TempPathFactory,
                                   tiny_task_file: Path) -> None:
    """Head ablation and MLP (MoE output) patching: the batched engine against one hooked forward each."""
    m, _ = _model(model_kind, tmp_path_factory)
    t = tokenize_task(load_task(tiny_task_file), m.tokenizer)
    res = head_ablation(clean_run(m, t), "zero", SweepSettings(chunk_size=5))
    ref_d, _ = loop_head_ablation(m, t.tokens, t.final_pos, t.correct_ids, t.incorrect_ids)
    assert (res.logit_diff - ref_d).abs().max().item() < 1e-4
    ap = activation_patching(m, t, SweepSettings(chunk_size=7), generated=False).reference
    loop = loop_patching(m, t.clean_tokens, t.corrupted_tokens, t.pair_correct_ids, t.pair_incorrect_ids, "mlp_out",
                         per_pair=True)
    assert (ap.mlp - loop).abs().max().item() < 1e-4
    assert (ap.mlp - ap.corrupted).abs().max().item() > 1e-2, "patching the MoE outputs changed nothing"


@pytest.mark.parametrize("model_kind", FAMILIES)
def test_gradients_match_finite_differences(model_kind: str, tmp_path_factory: pytest.TempPathFactory,
                                            tiny_task_file: Path) -> None:
    m, _ = _model(model_kind, tmp_path_factory)
    _gradients_check(m, tiny_task_file)


def _top_gaps(m: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Per sparse layer and position, the k-th minus the (k+1)-th largest router logit (float64)."""
    r = Runner(m.spec, m.runner.w.to(m.runner.device, torch.float64))
    cache, moe, gaps = r.run_with_cache(tokens), m.spec.moe, []
    for layer in (l for l in range(m.spec.n_layers) if moe.sparse[l]):
        logits = route(moe, r.w, layer, r.pre_norm(layer, 2, cache.resid_mid[layer]))[0].log()
        top = logits.topk(moe.top_k + 1, -1).values
        assert moe.top_k < moe.n_experts  # (with every expert kept there is no choice, and no tie)
        gaps.append(top[..., moe.top_k - 1] - top[..., moe.top_k])  # log-probabilities: logits up to a shift
    return torch.stack(gaps)  # (sparse layer, B, T)


@pytest.mark.parametrize("model_kind", FAMILIES)
def test_task_inputs_are_away_from_routing_ties(model_kind: str, tmp_path_factory: pytest.TempPathFactory,
                                                tiny_task_file: Path) -> None:
    """Routing is discontinuous where a token's k-th and (k+1)-th experts tie: the finite-difference checks
    (steps of 1e-5) are valid only if no token the metric reads is within 1e-3 of a tie."""
    m, _ = _model(model_kind, tmp_path_factory)
    t = tokenize_task(load_task(tiny_task_file), m.tokenizer)
    gaps = _top_gaps(m, t.tokens)
    read = torch.arange(t.tokens.shape[1])[None] <= t.final_pos[:, None]  # positions at or before each final one
    assert gaps[:, read].min().item() > 1e-3, f"a routing tie within 1e-3: {gaps[:, read].min().item():.2e}"


def test_integrated_gradients_complete_when_routing_cannot_switch(tmp_path_factory: pytest.TempPathFactory,
                                                                  tiny_task_file: Path) -> None:
    """With every expert kept (top_k = n_experts) the block is smooth and EAP-IG's embedding cut sums to the
    clean − corrupted gap as the steps grow; with top 2 of 4 the routing of the subject's position differs between
    the clean and corrupted prompts, so it switches along the path and completeness does not hold (the
    invariant suite leaves mixtures of experts out of its completeness check)."""
    m, _ = _model("qwen3_moe", tmp_path_factory)
    t = tokenize_task(load_task(tiny_task_file), m.tokenizer)
    b = pair_batches(t, 2)[0]
    r = m.runner
    idx = [{l: route(m.spec.moe, r.w, l, r.pre_norm(l, 2, c.resid_mid[l]))[1].sort(-1).values
            for l in (0, 2)} for c in (r.run_with_cache(b.clean_tokens), r.run_with_cache(b.corrupted_tokens))]
    assert any(not torch.equal(idx[0][l], idx[1][l]) for l in (0, 2)), "routing never differs: check is vacuous"
    dense = copy.copy(m)
    dense.spec = dataclasses.replace(m.spec, moe=dataclasses.replace(m.spec.moe, top_k=m.spec.moe.n_experts))
    dense.runner = Runner(dense.spec, m.runner.w)
    g = EdgeGraph(dense.spec)
    gap = plain_metric(dense, b, b.clean_tokens) - plain_metric(dense, b, b.corrupted_tokens)
    err = {n: (edge_scores(dense, g, b, n)[:, :, 0].sum(1) - gap).abs().max().item() for n in (8, 32, 128)}
    assert err[128] < 0.5 * err[32] + 1e-4 and err[32] < err[8] + 1e-4, f"completeness error by steps: {err}"
    assert err[128] < 0.05 * (gap.abs().max().item() + 0.1), f"completeness error {err} for gaps {gap.tolist()}"


def _config(kind: str, **change: Any) -> Any:
    from tests.tiny import make_config
    cfg = make_config(kind, 300)
    for k, v in change.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize(("kind", "change", "named"), [
    ("qwen3_moe", {"shared_expert_intermediate_size": 16}, "shared_expert_intermediate_size"),
    ("mixtral", {"router_temperature": 0.5}, "router_temperature"),
    ("olmoe", {"moe_capacity_factor": 1.25}, "moe_capacity_factor"),
    ("olmoe", {"clip_qkv": 8.0}, "clip_qkv"),
    ("olmoe", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("qwen3_moe", {"decoder_sparse_step": 0}, "decoder_sparse_step"),
])
def test_unknown_router_options_refused_by_name(kind: str, change: dict[str, Any], named: str) -> None:
    with pytest.raises(LogitlabError, match=named):
        read_spec(_config(kind, **change))


def test_training_only_router_options_accepted() -> None:
    """The auxiliary loss, router logits in the output and Mixtral's jitter noise (applied by Hugging Face in
    training mode only) do not change the forward pass logitlab runs."""
    spec = read_spec(_config("mixtral", router_jitter_noise=0.1, router_aux_loss_coef=0.5, output_router_logits=True))
    assert spec.moe is not None and spec.moe.norm_topk_prob and spec.moe.top_k == 2
    spec = read_spec(_config("qwen3_moe", decoder_sparse_step=2, mlp_only_layers=[]))
    assert spec.moe is not None and spec.moe.sparse == (False, True, False)
