"""The built-in real model (Gemma-3-270M): invariants, and agreement with TransformerLens's own functions."""

import pytest
import torch

from logitlab.analyses import clean_run, dla, head_ablation, head_attribution, layer_attribution, logit_lens
from logitlab.interventions import head_mean_values
from logitlab.analyses.patching import activation_patching
from logitlab.reference import loop_head_ablation, loop_patching
from logitlab.sweep import SweepSettings
from logitlab.task import load_task, tokenize_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(builtin_model):  # noqa: ANN001, ANN201
    return clean_run(builtin_model, tokenize_task(load_task("pronouns"), builtin_model.tokenizer))


def test_model_prefers_the_right_pronoun(run) -> None:  # noqa: ANN001
    assert run.model.spec.post_norms and run.model.spec.n_kv_heads == 1
    assert (run.logit_diff > 0).all(), f"logit diffs {run.logit_diff.tolist()}"


def test_dla_and_attributions_are_exact(run) -> None:  # noqa: ANN001
    res = dla(run)
    assert res.relative_error < 1e-4, f"DLA relative error {res.relative_error}"
    layers = layer_attribution(run)
    assert abs(float(layers.values.sum(0).mean() - res.reconstructed.mean())) < 1e-3
    heads = head_attribution(run)
    for layer in range(run.model.spec.n_layers):
        attn = layers.values[layers.labels.index(f"{layer}_attn_out")].mean()
        total = heads.values[layer].sum(0).mean() + heads.bias[layer].mean()
        assert abs(float(total - attn)) < 1e-4 * max(1.0, abs(float(attn))), f"layer {layer}: {total} vs {attn}"
    # The naive (TransformerLens stack_head_results) numbers are far off for the top head.
    (l, h, v), = heads.top(1)
    assert abs(heads.naive[l, h].mean()) < abs(v) / 5


def test_logit_lens_matches_transformerlens_cache(run) -> None:  # noqa: ANN001
    m, t = run.model, run.task
    _, cache = m.bridge.run_with_cache(t.tokens)
    stack, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    ref = (scaled * run.direction).sum(-1).mean(-1)  # all prompts share one length, so pos -1 is final
    ours = logit_lens(run)
    assert list(ours.labels) == list(labels)
    diff = (ours.values.mean(-1) - ref).abs().max().item()
    assert diff < 1e-3, f"logit lens vs TransformerLens max abs diff {diff}"
    stack, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    ref = (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * run.direction).sum(-1).mean(-1)
    ours = layer_attribution(run)
    assert list(ours.labels) == list(labels)
    diff = (ours.values.mean(-1) - ref).abs().max().item()
    assert diff < 1e-3, f"layer attribution vs TransformerLens decompose_resid max abs diff {diff}"


def test_ablation_and_patching_match_hooked_loop(run) -> None:  # noqa: ANN001
    m, t = run.model, run.task
    layers = [0, 9, 17]
    for kind in ("zero", "mean"):
        res = head_ablation(run, kind)
        means = head_mean_values(run.cache, t.final_pos) if kind == "mean" else None
        ref_d, ref_l = loop_head_ablation(m, t.tokens, t.final_pos, t.correct_ids, t.incorrect_ids, means, layers)
        for got, ref, what in [(res.logit_diff[layers], ref_d, "logit diff"), (res.loss[layers], ref_l, "loss")]:
            diff = (got - ref).abs().max().item()
            assert diff < 1e-3, f"{kind}-ablation {what}: engine vs loop max diff {diff}"
    patch = activation_patching(m, t, SweepSettings(), generated=False)
    ref = loop_patching(m, t.clean_tokens, t.corrupted_tokens, t.pair_correct_ids, t.pair_incorrect_ids,
                        "resid_pre", layers)
    diff = (patch.resid[layers] - ref).abs().max().item()
    assert diff < 1e-3, f"resid patching engine vs loop max diff {diff}"
    assert torch.allclose(patch.normalise(patch.resid[0, 1]), torch.tensor(1.0), atol=1e-4)  # the name token


def test_direct_tokenizer_load_equals_from_pretrained(builtin_model, monkeypatch) -> None:  # noqa: ANN001
    import transformers
    from logitlab.model.load import _load_tokenizer
    ref = transformers.AutoTokenizer.from_pretrained(builtin_model.source)

    def refuse(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the built-in tokenizer must load without from_pretrained")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    ours = _load_tokenizer(builtin_model.source, builtin=True, trust_remote_code=False)
    monkeypatch.undo()
    assert type(ours) is type(ref) and len(ours) == len(ref)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (ref.bos_token_id, ref.eos_token_id,
                                                                          ref.pad_token_id)
    texts = ["Mary is a great friend, isn’t", " she", "  two  spaces\n\nnew lines\tand a tab", "<bos> inside",
             "ünïcödé, 漢字 and 😀", "1234567890", "<start_of_turn>user\nhi<end_of_turn>", ""]
    for text in texts:
        for special in (True, False):
            assert ours(text, add_special_tokens=special)["input_ids"] == ref(text, add_special_tokens=special)["input_ids"]
    ids = ref("Mary is a great friend, isn’t 😀")["input_ids"]
    assert ours.decode(ids) == ref.decode(ids) and ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
