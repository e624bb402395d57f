"""Circuit analyses on the built-in Gemma-3-270M (post-attention norms, one KV head) and the pronouns task."""

from __future__ import annotations

import torch

from logitlab.analyses.circuit import eap_ig_circuit
from logitlab.analyses.patching import activation_patching
from logitlab.analyses.path_patching import path_patching
from logitlab.task import load_task, tokenize_task


def test_path_patching_adds_up_to_head_patching_and_l14h3_acts_directly(builtin_model) -> None:  # noqa: ANN001
    """All paths of a head at once = exact activation patching of its z (an independent sweep), on the reference
    pair; L14H3 acts mostly directly on the logits, L9H2 mostly not (the indirect path of the README)."""
    tt = tokenize_task(load_task("pronouns"), builtin_model.tokenizer)
    ap = activation_patching(builtin_model, tt, generated=False)
    ref = ap.reference
    frac = ((ref.heads - ref.corrupted) / (ref.clean - ref.corrupted))[..., 0]  # (L, H), the one reference pair
    senders = [(9, 2), (14, 3)]
    res = path_patching(builtin_model, tt, senders, max_pairs=1)
    for i, (l, h) in enumerate(senders):
        assert abs(float(res.node.mean[i]) - float(frac[l, h])) < 1e-3, (l, h, float(res.node.mean[i]), float(frac[l, h]))
    assert float(res.direct.mean[1]) > 0.5 > float(res.direct.mean[0])
    assert float(res.node.mean[0]) > 0.5  # yet patching L9H2 as a whole restores most of the gap


def test_circuit_recovers_the_gap_and_beats_random_circuits(builtin_model) -> None:  # noqa: ANN001
    tt = tokenize_task(load_task("pronouns"), builtin_model.tokenizer)
    res = eap_ig_circuit(builtin_model, tt, steps=3, max_pairs=4, n_random=5, random_pairs=2)
    assert abs(res.full - 1) < 1e-3 and abs(res.empty) < 1e-3, (res.full, res.empty)
    n = res.chosen_n
    assert n is not None and n < res.graph.n_edges, f"no circuit below the whole graph reaches 80%: {res.recovered.mean}"
    i = res.sizes.index(n)
    assert float(res.recovered.ci[i, 0]) > float(res.random_ci[i, 1]), "the circuit must beat random circuits of its size"
    top = res.edges(10)
    assert any(e["sender"] == "L14H3" and e["receiver"] == "logits" for e in top), top
    assert torch.isfinite(res.scores.mean).all()
