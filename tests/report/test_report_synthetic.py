"""The synthetic results used by the report tests follow the schema and are consistent."""

from __future__ import annotations

import json
import math

import pytest

from synthetic import HOSTILE_PROMPT_PART, make_results, with_circuit, with_features

from logitlab.results import SCHEMA_VERSION, results_schema, validate_results


@pytest.mark.parametrize("sizes", [(3, 4, 6, 7), (1, 1, 2, 3), (5, 2, 9, 12)])
def test_shapes_and_consistency(sizes: tuple[int, int, int, int]) -> None:
    """Sizes match the arguments and the documented sums hold."""
    L, H, n, P = sizes
    r = with_circuit(make_results(*sizes))
    validate_results(r)  # exactly the schema's keys and types
    # every section, the optional ones included, but features (real ones: tests/unit/test_schema.py on every kind)
    assert set(r) | {"features"} == set(results_schema()["properties"]), "every section, the optional ones included"
    assert r["schema_version"] == SCHEMA_VERSION
    validate_results(with_features(r))  # the synthetic features section too
    json.dumps(r, allow_nan=False)  # plain JSON
    assert len(r["task"]["prompts"]) == len(r["task"]["answers"]) == n
    assert len(r["logit_diff"]["per_prompt"]) == n
    assert r["model"]["n_layers"] == L and r["model"]["n_heads"] == H
    la = r["layer_attribution"]
    assert math.isclose(sum(la["values"]), r["dla"]["reconstructed_mean"], abs_tol=1e-9)
    dla = r["dla"]
    assert dla["relative_error"] < 1e-4
    for layer in range(L):
        attn = la["values"][la["labels"].index(f"{layer}_attn_out")]
        heads = sum(r["head_attribution"][layer]) + r["head_attribution_detail"]["attn_bias"][layer]
        assert math.isclose(attn, heads, abs_tol=1e-9)
    assert len(r["logit_lens"]["values"]) == 2 * L + 1
    assert math.isclose(r["logit_lens"]["values"][-1], dla["reconstructed_mean"], abs_tol=1e-9)
    assert len(r["resid_patching"]["values"]) == L
    assert all(len(row) == P for row in r["resid_patching"]["values"])
    assert len(r["resid_patching"]["tokens"]) == P
    for h in r["attention"]["heads"]:
        pat = h["pattern"]
        assert len(pat) == len(r["attention"]["tokens"])
        assert all(math.isclose(sum(row), 1.0, abs_tol=1e-9) for row in pat)
    for kind in ("zero", "mean"):
        assert len(r["head_ablation"][kind]["loss"]) == L
    assert r["logit_diff"]["accuracy"] == pytest.approx(
        sum(v > 0 for v in r["logit_diff"]["per_prompt"]) / n)


def test_hostile_strings_present() -> None:
    """The strings include injection attempts, entities and repeated tokens."""
    r = make_results()
    assert any(HOSTILE_PROMPT_PART in p for p in r["task"]["prompts"])
    assert any("&amp;" in p for p in r["task"]["prompts"])
    tokens = r["resid_patching"]["tokens"]
    assert len(set(tokens)) < len(tokens)  # repeated token
    assert "</script>" in r["attention"]["tokens"]
    assert any("</div>" in a for pair in r["task"]["answers"] for a in pair)


def test_options() -> None:
    """Keyword options switch off naive attribution and the unembedding bias."""
    r = make_results(post_norm=False, unembed_bias=False, learned_pos=False)
    validate_results(r)
    assert r["head_attribution_detail"]["naive"] is None
    assert r["unembed_bias"]["present"] is False
    assert r["dla"]["bias_term"] == 0.0
    assert "pos_embed" not in r["layer_attribution"]["labels"]
    assert make_results(seed=1)["logit_diff"] != make_results(seed=2)["logit_diff"]
