"""Row-bounded attribution graphs (``max_feature_nodes``, for long prompts) on tiny random models: the attributed
rows keep the exactness invariant and are the unbounded graph's rows, the features chosen are the most influential
ones (against a brute force on the dense graph), a budget covering every feature gives the unbounded graph, and
pruning, influence and scores on (rows, n_nodes) equal the dense versions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from logitlab.errors import LogitlabError
from logitlab.features.graph import attribute
from logitlab.features.influence import compute_influence, normalise
from logitlab.features.prune import check_graph, graph_to_dict, prune_graph
from tests.tiny import random_dictionaries
from tests.unit.test_features_graph import PROMPT, _float64, _variant


def _graphs(model, variant: str, budget: int | None, answer: bool = True, **kw):  # noqa: ANN001, ANN202
    """The unbounded graph and the graph with ``budget`` feature rows (float64); budget None: a third of them."""
    m = _float64(model)
    d = random_dictionaries(model.spec.d_model, model.spec.n_layers, variant)
    ac = {"answer": " she", "contrast": " he"} if answer else {}
    full = attribute(m, PROMPT, d, dtype=torch.float64, batch_size=5, **ac)
    budget = full.n_features // 3 if budget is None else budget
    return full, attribute(m, PROMPT, d, dtype=torch.float64, max_feature_nodes=budget, **ac, **kw)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))


def test_bounded_rows_are_exact(tiny_model) -> None:  # noqa: ANN001
    """(logits + budget) rows × n_nodes; each attributed row satisfies Σ in-edges + bias = value and equals the
    unbounded graph's row (a row does not depend on which others are attributed); no other row is stored."""
    full, g = _graphs(tiny_model, _variant(tiny_model), None, batch_size=4, rank_every=9)
    budget = full.n_features // 3
    assert full.n_features > 20, full.n_features
    assert g.adjacency.shape == (budget + g.n_logits, full.n_nodes) and g.n_nodes == full.n_nodes
    assert g.meta["max_feature_nodes"] == budget and g.meta["rank_every"] == 9
    rows = g.rows
    assert rows is not None and torch.equal(rows, rows.sort().values) and len(rows.unique()) == len(rows)
    assert int((rows < g.n_features).sum()) == budget
    assert torch.equal(rows[budget:], torch.arange(g.n_nodes - g.n_logits, g.n_nodes))
    total = g.adjacency.sum(1) + g.bias[rows]
    res = _rel(total, g.values[rows])
    assert res < 1e-8, f"Σ in-edges + bias − value: {res:.2e}"
    c = check_graph(g)
    assert c["features"] < 1e-8 and c["logits"] < 1e-8, c
    diff = _rel(g.adjacency, full.adjacency[rows])
    assert diff < 1e-12, f"attributed rows differ from the unbounded graph's by {diff:.2e}"
    att = g.attributed
    assert int(att[:g.n_features].sum()) == budget and att[-g.n_logits:].all() and not att[g.error_slice].any()
    assert torch.equal(g.dense()[~att], torch.zeros(int((~att).sum()), g.n_nodes, dtype=g.adjacency.dtype))


@pytest.mark.parametrize("tiny_model", ["llama_gqa", "gemma3"], indirect=True)
def test_budget_covering_every_feature_is_the_unbounded_graph(tiny_model) -> None:  # noqa: ANN001
    full, g = _graphs(tiny_model, "jumprelu_skip", 10 ** 6, batch_size=5)
    assert g.adjacency.shape == (full.n_features + full.n_logits, full.n_nodes)
    assert torch.equal(g.dense(), full.adjacency), float((g.dense() - full.adjacency).abs().max())
    p, q = prune_graph(g), prune_graph(full)
    assert torch.equal(p.node_mask, q.node_mask)
    assert torch.equal(g.dense().new_zeros(q.edge_mask.shape, dtype=torch.bool).index_put_((g.rows,), p.edge_mask),
                       q.edge_mask)
    assert _rel(p.influence, q.influence) < 1e-12
    assert g.scores() == pytest.approx(full.scores(), rel=1e-12)


def _brute_force(full, budget: int, batch: int, every: int) -> set[int]:  # noqa: ANN001
    """circuit-tracer's selection replayed on the dense unbounded graph: rows not yet attributed are zero."""
    n_f, n_l = full.n_features, full.n_logits
    w = full.logit_weights()
    have = torch.zeros(full.n_nodes, dtype=torch.bool)
    have[-n_l:] = True
    chosen: list[int] = []
    while len(chosen) < budget:
        A = full.adjacency * have[:, None]
        infl = compute_influence(normalise(A), w)[:n_f]
        rank = torch.sort(infl, descending=True, stable=True).indices.tolist()
        new = [i for i in rank if not have[i]][:min(every, budget - len(chosen))]
        chosen += new
        have[new] = True
    return set(chosen)


@pytest.mark.parametrize("tiny_model", ["gpt2", "llama_gqa", "gemma3", "neox"], indirect=True)
@pytest.mark.parametrize(("budget", "every", "answer"), [(40, 7, True), (100, 1000, True), (60, 16, False)])
def test_selection_by_influence(tiny_model, budget: int, every: int, answer: bool) -> None:  # noqa: ANN001
    """The features given rows are those the brute force picks: the top ones by influence on the logit targets in
    the rows attributed so far, re-ranked every ``every`` rows (one ranking when every ≥ budget: the direct
    effects on the targets)."""
    full, g = _graphs(tiny_model, "relu", budget, answer=answer, batch_size=3, rank_every=every)
    got = set(g.rows[g.rows < g.n_features].tolist())
    want = _brute_force(full, budget, 3, every)
    assert len(got) == budget and got == want, f"{len(got ^ want)} features differ"
    if every >= budget:  # one ranking: the top `budget` by direct influence on the weighted logit targets
        direct = full.logit_weights() @ normalise(full.adjacency)
        top = set(torch.sort(direct[:g.n_features], descending=True, stable=True).indices[:budget].tolist())
        assert got == top


@pytest.mark.parametrize("tiny_model", ["gpt2", "gemma3"], indirect=True)
def test_rows_pruning_and_scores_equal_dense(tiny_model) -> None:  # noqa: ANN001
    """The same graph stored as its feature and logit rows only: pruning, influence, scores, the check and
    graph.json's edges equal the dense versions."""
    m = _float64(tiny_model)
    d = random_dictionaries(tiny_model.spec.d_model, tiny_model.spec.n_layers, "topk")
    for kw in ({"answer": " she", "contrast": " he"}, {}):
        full = attribute(m, PROMPT, d, dtype=torch.float64, **kw)
        rows = torch.cat([torch.arange(full.n_features), torch.arange(full.n_nodes - full.n_logits, full.n_nodes)])
        g = replace(full, adjacency=full.adjacency[rows].clone(), rows=rows)
        for th in ((0.8, 0.98), (0.5, 0.9)):
            p, q = prune_graph(g, *th), prune_graph(full, *th)
            assert torch.equal(p.node_mask, q.node_mask), th
            assert torch.equal(p.edge_mask, q.edge_mask[rows]) and not q.edge_mask[~g.attributed].any(), th
            assert _rel(p.influence, q.influence) < 1e-12
        assert g.scores() == pytest.approx(full.scores(), rel=1e-12)
        A = g.adjacency.clone()
        A[:, g.error_slice] = 0
        assert replace(g, adjacency=A).scores() == pytest.approx((1.0, 1.0))
        assert check_graph(g) == check_graph(full)
        dg, df = graph_to_dict(g, prune_graph(g)), graph_to_dict(full, prune_graph(full))
        assert dg["edges"] == df["edges"] and dg["counts"] == df["counts"]


@pytest.mark.parametrize("tiny_model", ["llama_gqa"], indirect=True)
def test_bounded_graph_json(tiny_model) -> None:  # noqa: ANN001
    """graph.json of a bounded graph: every node, `attributed` per feature, the budget in the settings; no edge
    into a feature without a row; each edge's weight is the dense adjacency's."""
    full, g = _graphs(tiny_model, "relu", 30, batch_size=4)
    data = graph_to_dict(g, prune_graph(g))
    assert len(data["nodes"]) == full.n_nodes and data["settings"]["max_feature_nodes"] == 30
    feats = [n for n in data["nodes"] if n["kind"] == "feature"]
    assert sum(n["attributed"] for n in feats) == 30 == data["counts"]["attributed_features"]
    att = {n["id"] for n in data["nodes"] if n.get("attributed")}
    assert data["edges"] and all(t in att for _, t, _ in data["edges"])
    dense = g.dense()
    assert all(w == float(dense[t, s]) for s, t, w in data["edges"])
    assert data["check"]["features"] < 1e-8


def test_influence_refuses_a_row_bounded_adjacency() -> None:
    with pytest.raises(LogitlabError, match="square"):
        compute_influence(torch.ones(2, 5), torch.ones(5))


def test_graph_command_with_a_row_budget(tmp_path, capsys) -> None:  # noqa: ANN001
    """``logitlab graph --max-feature-nodes N``: graph.json and its view with N attributed features."""
    import json

    import logitlab
    from logitlab.cli import main
    from logitlab.features.formats import save_circuit_tracer
    from tests.tiny import make_model_folder
    folder = make_model_folder("gemma3", tmp_path / "model")
    spec = logitlab.load_model(str(folder), cache=False).spec
    tc = save_circuit_tracer(random_dictionaries(spec.d_model, spec.n_layers, "relu"), tmp_path / "tc")
    args = ["graph", PROMPT, "--model", str(folder), "--transcoders", str(tc), "--out", str(tmp_path / "g"),
            "--max-feature-nodes", "25"]
    assert main(args) == 0
    data = json.loads((tmp_path / "g" / "graph.json").read_text(encoding="utf-8"))
    assert data["settings"]["max_feature_nodes"] == 25 and data["counts"]["attributed_features"] == 25
    assert data["counts"]["features"] > 25 and data["check"]["features"] < 1e-4
    assert (tmp_path / "g" / "graph.html").exists()
    capsys.readouterr()
    assert main(args + ["--answer", " she", "--contrast", " he", "--check", "3"]) == 0  # checked with the budget
    data = json.loads((tmp_path / "g" / "graph.json").read_text(encoding="utf-8"))
    assert len(data["intervention_check"]["top_features"]["predicted"]) == 3
