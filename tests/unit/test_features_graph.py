"""Attribution graphs on tiny random models of every kind with random dictionaries: exactness invariants, finite
differences on edges, batched = one target at a time, pruning and scores."""

from __future__ import annotations

import copy
import zlib

import pytest
import torch

from logitlab.features.graph import attribute
from logitlab.features.influence import compute_influence, graph_scores
from logitlab.features.prune import prune_graph
from logitlab.features.replacement import build_replacement
from tests.tiny import random_dictionaries
from logitlab.model.runner import Runner

PROMPT = "Mary is a great friend, isn’t"
VARIANTS = ("relu", "jumprelu_skip", "topk", "relu_skip", "jumprelu", "topk_skip")


def _float64(model):  # noqa: ANN001, ANN202
    m = copy.copy(model)
    m.runner = Runner(model.spec, model.runner.w.to(model.runner.device, torch.float64))
    return m


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))


def _variant(model) -> str:  # noqa: ANN001
    # a stable hash (str hashes change from process to process), so each kind gets the same variant every run
    return VARIANTS[zlib.crc32((model.spec.model_type + str(model.spec.n_kv_heads)).encode()) % len(VARIANTS)]


def _graph(model, variant: str, dtype=torch.float64, **kw):  # noqa: ANN001, ANN202
    m = _float64(model) if dtype == torch.float64 else model
    d = random_dictionaries(model.spec.d_model, model.spec.n_layers, variant)
    return m, d, attribute(m, PROMPT, d, answer=" she", contrast=" he", dtype=dtype, **kw)


def test_invariants(tiny_model) -> None:  # noqa: ANN001
    """Σ incoming edges + bias = each feature's real pre-activation and each logit target's real value."""
    for variant in (_variant(tiny_model), "topk_skip"):
        m, d, g = _graph(tiny_model, variant)
        n_f, n_l = g.n_features, g.n_logits
        assert n_f > 20, f"too few active features ({n_f}) to test anything"
        total = g.adjacency.sum(1) + g.bias
        rel_f = _rel(total[:n_f], g.values[:n_f])
        rel_l = _rel(total[-n_l:], g.values[-n_l:])
        assert rel_f < 1e-8 and rel_l < 1e-8, f"{variant}: features {rel_f:.2e}, logits {rel_l:.2e}"
        assert g.has_logit_diff and g.n_logits >= 2
        # the edges carry most of each value (the bias alone does not explain the targets)
        assert float((g.adjacency[:n_f].sum(1)).abs().max()) > 1e-3


def test_replacement_reproduces_the_model(tiny_model) -> None:  # noqa: ANN001
    """With the real writes (features + errors + embeddings), the frozen forward gives the real MLP inputs and
    pre-cap logits at every position; token writes include the embedding scale (Gemma: √d_model)."""
    m = _float64(tiny_model)
    r, s = m.runner, m.spec
    d = random_dictionaries(s.d_model, s.n_layers, "relu_skip")
    ids = torch.tensor([[m.tokenizer.bos_token_id] + m.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    cache = r.run_with_cache(ids)
    rep = build_replacement(r, ids, d, cache, torch.float64)
    assert torch.allclose(rep.embed, r.w.W_E[ids[0]] * s.embed_scale, rtol=1e-12, atol=1e-12)
    if s.model_type == "gemma3_text":
        assert s.embed_scale == pytest.approx(s.d_model ** 0.5)
    writes = torch.stack([cache.mlp_out[l, 0] - d.layers[l].b_dec.double()
                          - (0 if d.layers[l].W_skip is None else
                             r.pre_norm(l, 2, cache.resid_pre[l] if s.parallel else cache.resid_mid[l])[0]
                             @ d.layers[l].W_skip.double()) for l in range(s.n_layers)])
    writes[:, 0] = 0  # position 0's MLP output is frozen (in the bias)
    m_in, normed = rep.forward(rep.embed[None], writes[:, None], bias=True)
    real_in = torch.stack([r.pre_norm(l, 2, cache.resid_pre[l] if s.parallel else cache.resid_mid[l])[0]
                           for l in range(s.n_layers)])
    assert _rel(m_in[:, 0], real_in) < 1e-10, _rel(m_in[:, 0], real_in)
    logits = normed[0] @ r.w.W_U + r.w.b_U
    real = r.final_norm(cache.resid_final[0])[0] @ r.w.W_U + r.w.b_U
    assert _rel(logits, real) < 1e-10, _rel(logits, real)


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa", "gemma3", "neox"])
def test_edges_by_finite_differences(tiny_dir, kind: str) -> None:  # noqa: ANN001
    """Removing one source's write in the frozen forward pass changes a target by exactly that edge (the pass is
    affine, so the change does not depend on the other writes: they are left at zero)."""
    from logitlab.features.graph import _cast
    from logitlab.model.load import load_model
    from tests.conftest import _models
    from tests.tiny import make_model_folder
    if kind not in _models:
        _models[kind] = load_model(str(make_model_folder(kind, tiny_dir / kind)), cache=False)
    m, d, g = _graph(_models[kind], "jumprelu_skip")
    r, s = m.runner, m.spec
    ids = torch.tensor([g.tokens])
    cache = r.run_with_cache(ids)
    rep = build_replacement(r, ids, d, cache, torch.float64)
    L, T, D = s.n_layers, g.n_pos, s.d_model
    zero_w, zero_e = torch.zeros(L, 1, T, D, dtype=torch.float64), torch.zeros(1, T, D, dtype=torch.float64)

    def value(t: int, writes: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        if t < g.n_features:
            l, p, f = (int(v) for v in g.features[t])
            m_in, _ = rep.forward(embed, writes, bias=False)
            return m_in[l, 0, p] @ d.layers[l].W_enc[:, f].double()
        _, normed = rep.forward(embed, writes, bias=False)
        u = r.w.W_U[:, g.logit_tokens[t - g.n_nodes + g.n_logits]] - r.w.W_U.mean(1)
        return rep._norm(normed, None, None, None, False)[0, -1] @ u

    targets = [i for i in range(g.n_features) if int(g.features[i, 0]) == L - 1][:2] + [g.n_nodes - g.n_logits]
    assert len(targets) == 3, "no feature in the last layer"
    sources = [i for i in range(g.n_features) if int(g.features[i, 0]) < L - 1][:4]
    for t in targets:
        for i in sources:  # features: activation × decoder row
            l, p, f = (int(v) for v in g.features[i])
            w = zero_w.clone()
            w[l, 0, p] = g.activations[i].double() * d.layers[l].W_dec[f].double()
            assert float(value(t, w, zero_e)) == pytest.approx(float(g.adjacency[t, i]), rel=1e-9, abs=1e-12)
        for l, p in ((0, T - 1), (L - 2, 3)):  # error nodes: the real MLP output minus the transcoder's
            tc = _cast(d.layers[l], r.device, torch.float64)
            x = r.pre_norm(l, 2, cache.resid_pre[l] if s.parallel else cache.resid_mid[l])[0]
            w = zero_w.clone()
            w[l, 0, p] = (cache.mlp_out[l, 0] - tc.decode(tc.encode(x), x))[p]
            want = float(g.adjacency[t, g.error_slice.start + l * T + p])
            assert float(value(t, w, zero_e)) == pytest.approx(want, rel=1e-9, abs=1e-12)
        for p in (0, 2):  # tokens: the scaled embedding
            e = zero_e.clone()
            e[0, p] = rep.embed[p]
            want = float(g.adjacency[t, g.token_slice.start + p])
            assert float(value(t, zero_w, e)) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_batched_equals_one_at_a_time(tiny_model) -> None:  # noqa: ANN001
    _, _, one = _graph(tiny_model, "topk", batch_size=1)
    _, _, many = _graph(tiny_model, "topk", batch_size=7)
    diff = float((one.adjacency - many.adjacency).abs().max())
    assert diff < 1e-12 * max(1.0, float(one.adjacency.abs().max())), diff


def test_float32_invariants(tiny_model) -> None:  # noqa: ANN001
    """In the model's own float32 the invariants hold to 1e-4 relative."""
    m, d, g = _graph(tiny_model, "relu", dtype=torch.float32)
    total = g.adjacency.double().sum(1) + g.bias
    for sl in (slice(0, g.n_features), slice(g.n_nodes - g.n_logits, g.n_nodes)):
        assert _rel(total[sl], g.values[sl]) < 1e-4, _rel(total[sl], g.values[sl])


def test_pruning_and_scores(tiny_model) -> None:  # noqa: ANN001
    _, _, g = _graph(tiny_model, "relu")
    res = prune_graph(g)
    assert res.node_mask[-g.n_pos - g.n_logits:].all()
    assert not res.edge_mask[~res.node_mask].any() and not res.edge_mask[:, ~res.node_mask].any()
    kept = res.node_mask[:g.n_features].nonzero()[:, 0]
    assert res.edge_mask[kept].any(1).all() and res.edge_mask[:, kept].any(0).all()
    # a kept feature or error node is never less influential than the node threshold's cut
    mid = slice(0, g.n_nodes - g.n_pos - g.n_logits)
    inf, mask = res.influence[mid], res.node_mask[mid]
    s = res.influence.sort(descending=True).values
    cut = s[int(torch.searchsorted(s.cumsum(0) / s.sum(), torch.tensor(0.8, dtype=s.dtype)))]
    assert bool((inf[mask] >= cut).all())
    rep, comp = g.scores()
    assert 0 <= rep <= 1 and 0 <= comp <= 1
    # removing every error edge leaves a graph whose scores are both 1
    A = g.adjacency.clone()
    A[:, g.error_slice] = 0
    assert graph_scores(A, g.logit_weights(), g.error_slice, g.token_slice) == pytest.approx((1.0, 1.0))


def test_scores_by_hand() -> None:
    """A 4-node chain: feature 0 ← token 2 and error 1; logit 3 ← feature 0. Influence and scores by hand."""
    A = torch.zeros(4, 4)
    A[0, 2], A[0, 1], A[3, 0] = 3.0, 1.0, -2.0
    w = torch.tensor([0, 0, 0, 1.0])
    inf = compute_influence(A.abs() / A.abs().sum(1, keepdim=True).clamp(min=1e-10), w)
    assert inf.tolist() == pytest.approx([1.0, 0.25, 0.75, 0.0])
    rep, comp = graph_scores(A, w, slice(1, 2), slice(2, 3))
    assert rep == pytest.approx(0.75)
    # completeness: node 0 has 3/4 non-error input, weight inf+w = 1; node 3 non-error 1, weight 1;
    # nodes 1, 2: non-error 1 (no inputs), weights 0.25, 0.75 → (0.75 + 1 + 0.25 + 0.75) / 3
    assert comp == pytest.approx((0.75 + 1 + 0.25 + 0.75) / 3)


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_graph_json_and_view(tiny_model, tmp_path) -> None:  # noqa: ANN001
    """graph.json holds every node, the kept edges (with their adjacency weights), scores and the check; the view
    is one offline page under the report's Content-Security-Policy."""
    import json

    from logitlab.features.prune import graph_to_dict
    from logitlab.features.graph_cli import write_graph
    from logitlab.report.page import CSP
    _, _, g = _graph(tiny_model, "relu", dtype=torch.float32)
    res = prune_graph(g)
    js, html = write_graph(graph_to_dict(g, res, model="tiny"), tmp_path)
    data = json.loads(js.read_text())
    assert len(data["nodes"]) == g.n_nodes and [n["id"] for n in data["nodes"]] == list(range(g.n_nodes))
    assert len(data["edges"]) == int(res.edge_mask.sum()) > 0
    s, t, w = data["edges"][0]
    assert w == pytest.approx(float(g.adjacency[t, s]))
    assert data["check"]["features"] < 1e-4 and data["check"]["logits"] < 1e-4
    assert (data["scores"]["replacement"], data["scores"]["completeness"]) == pytest.approx(g.scores())
    page = html.read_text()
    assert CSP in page and "plot-graph" in page and "<script src" not in page and "<link" not in page


@pytest.mark.parametrize("tiny_model", ["llama_gqa"], indirect=True)
def test_task_features(tiny_model, tiny_task_file) -> None:  # noqa: ANN001
    """Over the task's prompts: per-prompt scores, the exactness residual, and top features ranked by mean
    influence, each mean inside its CI and equal to the mean of the per-prompt influences."""
    from logitlab.features.analysis import task_features
    from logitlab.task import load_task, tokenize_task
    tt = tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)
    d = random_dictionaries(tiny_model.spec.d_model, tiny_model.spec.n_layers, "relu")
    out = task_features(tiny_model, tt, d, "random", n_prompts=4, top=5)
    assert out["n_prompts"] == 4 and len(out["replacement"]) == 4 and out["max_check"] < 1e-4
    means = [r["mean"] for r in out["top"]]
    assert means == sorted(means, reverse=True) and len(means) == 5
    for r in out["top"]:
        assert r["ci"][0] - 1e-9 <= r["mean"] <= r["ci"][1] + 1e-9 and 1 <= r["n_active"] <= 4


def test_run_features_from_the_command_line(tmp_path, tiny_task_file) -> None:  # noqa: ANN001
    """``logitlab run --features --transcoders DIR``: transcoders written as circuit-tracer's files, read back by
    the run, the features section in results.json (schema-checked on write) and in report.html."""
    import json

    from logitlab.cli import main
    from logitlab.features.formats import save_circuit_tracer
    from tests.tiny import make_model_folder
    folder = make_model_folder("llama_gqa", tmp_path / "model")
    import logitlab
    spec = logitlab.load_model(str(folder), cache=False).spec
    tc = save_circuit_tracer(random_dictionaries(spec.d_model, spec.n_layers, "jumprelu_skip"), tmp_path / "tc")
    out = tmp_path / "out"
    assert main(["run", "--model", str(folder), "--task", str(tiny_task_file), "--out", str(out),
                 "--analyses", "attention", "--features", "--transcoders", str(tc)]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert "features" in results["config"]["analyses"] and results["config"]["transcoders"] == str(tc)
    feats = results["features"]
    assert feats["n_prompts"] >= 2 and feats["transcoders"] == str(tc)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="features"' in html and "Transcoder features" in html
