"""Attribution graphs on the built-in model (Gemma-3-270M): its massive-activation position is frozen like BOS."""

from __future__ import annotations

import pytest
import torch

from logitlab.features.graph import attribute
from logitlab.features.prune import check_graph
from logitlab.features.replacement import massive_positions
from tests.tiny import random_dictionaries

pytestmark = pytest.mark.slow

PROMPT = "Mary is a great friend, isn’t"


def test_the_comma_is_frozen_and_the_graph_stays_exact(builtin_model) -> None:  # noqa: ANN001
    """Measured: after layer 0 the comma's residual stream has norm 1,321, 11.8× the median of the other
    positions after BOS (at most 2.9× elsewhere); the graph then has no nodes there and stays exact."""
    m = builtin_model
    ids = torch.tensor([m.tokenizer(PROMPT)["input_ids"]])
    assert m.tokenizer.decode(ids[0, 6:7]) == ","
    assert massive_positions(m.runner.run_with_cache(ids)) == [6]
    d = random_dictionaries(m.spec.d_model, m.spec.n_layers, "relu", n_features=32)
    g = attribute(m, PROMPT, d, answer=" she", contrast=" he", max_logits=1)
    kept = attribute(m, PROMPT, d, answer=" she", contrast=" he", max_logits=1, freeze_massive=False)
    assert g.frozen_positions == [0, 6] and kept.frozen_positions == [0]
    assert not bool((g.features[:, 1] == 6).any()) and bool((kept.features[:, 1] == 6).any())
    for graph in (g, kept):
        assert max(check_graph(graph).values()) < 1e-4, check_graph(graph)
        assert float(graph.values[-1]) == pytest.approx(float(kept.values[-1]), abs=1e-4)  # the real Δ either way
