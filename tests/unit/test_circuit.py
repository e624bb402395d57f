"""Edge-level forward, EAP-IG, faithfulness and path patching on tiny random models of every kind."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from logitlab.analyses import circuit as circuit_mod
from logitlab.analyses.circuit import (
    plain_metric, eap_ig_circuit, edge_patch_metric, edge_scores, pair_batches,
)
from logitlab.analyses.patching import activation_patching
from logitlab.analyses.path_patching import path_patching
from logitlab.model.graph import EdgeGraph, graph_forward
from logitlab.model.graph_prune import live_patch
from logitlab.model.runner import Runner
from logitlab.results import validate_results
from logitlab.results.circuit import Circuit, PathPatching
from logitlab.task import load_task, tokenize_task
from tests.tiny import KINDS, MOE_KINDS


@pytest.fixture
def tt(tiny_model, tiny_task_file):  # noqa: ANN001, ANN201
    return tokenize_task(load_task(tiny_task_file), tiny_model.tokenizer)


def _float64(model):  # noqa: ANN001, ANN202
    m = copy.copy(model)
    m.runner = Runner(model.spec, model.runner.w.to(model.runner.device, torch.float64))
    return m


def test_graph_forward_unpatched_and_fully_patched(tiny_model) -> None:  # noqa: ANN001
    """No patch = the ordinary forward; every edge patched = the other prompt's ordinary forward."""
    r, g = tiny_model.runner, EdgeGraph(tiny_model.spec)
    a, b = torch.randint(2, 200, (3, 9)), torch.randint(2, 200, (3, 9))
    fp = torch.full((3,), 8)
    ref_a, ref_b = (r.run_from(0, "pre", r.embed_sum(t))[:, 8] for t in (a, b))
    run_a = graph_forward(r, g, r.embed_sum(a), fp, record=True)
    run_b = graph_forward(r, g, r.embed_sum(b), fp, record=True)
    scale = ref_a.abs().max()
    assert (run_a.final - ref_a).abs().max() < 2e-6 * scale, f"unpatched: {(run_a.final - ref_a).abs().max():.2e}"
    allp = g.allowed.float()[None].expand(3, -1, -1)
    full = graph_forward(r, g, r.embed_sum(a), fp, allp, run_b.senders)
    assert (full.final - ref_b).abs().max() < 2e-6 * scale, f"all patched: {(full.final - ref_b).abs().max():.2e}"
    none = graph_forward(r, g, r.embed_sum(a), fp, allp * 0, run_b.senders)
    assert (none.final - ref_a).abs().max() < 2e-6 * scale


def test_graph_edges(tiny_model) -> None:  # noqa: ANN001
    """Heads read only earlier layers; an MLP reads its own layer's heads unless the block is parallel."""
    s, g = tiny_model.spec, EdgeGraph(tiny_model.spec)
    assert g.allowed[g.receiver(1, "q", 0), g.head_sender(0, s.n_heads - 1)]
    assert not g.allowed[g.receiver(1, "q", 0), g.head_sender(1, 0)]
    assert bool(g.allowed[g.receiver(1, "mlp"), g.head_sender(1, 0)]) == (not s.parallel)
    assert not g.allowed[g.receiver(1, "mlp"), g.mlp_sender(1)]
    assert g.allowed[g.receiver(0, "logits")].all()
    assert len(g.receiver_names) == g.n_receivers and len(g.sender_names) == g.n_senders


def test_full_graph_recovers_one_and_empty_zero(tiny_model, tt) -> None:  # noqa: ANN001
    """Against the ordinary forward's clean and corrupted metrics (computed independently of the graph)."""
    res = eap_ig_circuit(tiny_model, tt, steps=2, max_pairs=4, n_random=2, min_gap=0.0)
    assert abs(res.full - 1) < 1e-3 and abs(res.empty) < 1e-3, (res.full, res.empty)
    assert res.sizes[-1] == res.graph.n_edges
    assert abs(float(res.recovered.mean[-1]) - 1) < 1e-3  # the largest "circuit" is the full graph
    d = res.to_dict()
    validate_results(json.loads(json.dumps(d)), Circuit)
    assert d["n_edges_total"] == res.graph.n_edges and len(d["faithfulness"]["recovered"]) == len(res.sizes)
    scores = [abs(e["score"]) for e in d["edges"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_random_baseline_pairs(tiny_model, tt, monkeypatch) -> None:  # noqa: ANN001
    """The random circuits run on the first pairs, and on the others only when their noise matters: with the rule
    off (RANDOM_NOISE 0) every pair runs; with it always met the first FIRST_RANDOM_PAIRS do, and the band is the
    one a run given only those pairs computes; the edge scores and the top-n curve do not change."""
    kw = dict(steps=1, max_pairs=6, n_random=3, min_gap=0.0, random_pairs=6)
    monkeypatch.setattr(circuit_mod, "RANDOM_NOISE", 0.0)
    monkeypatch.setattr(circuit_mod, "RANDOM_FLOOR", 0.0)
    every = eap_ig_circuit(tiny_model, tt, **kw)
    assert (every.random_pairs, every.random_pairs_available) == (6, 6)
    monkeypatch.setattr(circuit_mod, "RANDOM_FLOOR", float("inf"))
    first = eap_ig_circuit(tiny_model, tt, **kw)
    assert (first.random_pairs, first.random_pairs_available) == (circuit_mod.FIRST_RANDOM_PAIRS, 6)
    only = eap_ig_circuit(tiny_model, tt, **{**kw, "random_pairs": circuit_mod.FIRST_RANDOM_PAIRS})
    assert torch.allclose(first.random_mean, only.random_mean, atol=1e-6)
    assert torch.allclose(first.random_ci, only.random_ci, atol=1e-6)
    assert not torch.allclose(every.random_mean[1:-1], first.random_mean[1:-1], atol=1e-6)  # the pairs differ
    assert torch.equal(every.scores.mean, first.scores.mean) and torch.equal(every.recovered.mean, first.recovered.mean)
    d = first.to_dict()
    validate_results(json.loads(json.dumps(d)), Circuit)
    assert d["faithfulness"]["random_pairs"] == circuit_mod.FIRST_RANDOM_PAIRS


# Mixtures of experts route each token to its top experts: a piecewise constant choice, so integrated gradients miss
# its jumps where routing switches along the path (tests/unit/test_moe.py checks completeness with routing fixed).
@pytest.mark.parametrize("tiny_model", [k for k in KINDS if k not in MOE_KINDS], indirect=True)
def test_ig_completeness(tiny_model, tt) -> None:  # noqa: ANN001
    """The embedding's edges are a cut: their scores sum to the clean − corrupted gap as the steps grow."""
    m, g = tiny_model, EdgeGraph(tiny_model.spec)
    b = pair_batches(tt, 2)[0]
    gap = plain_metric(m, b, b.clean_tokens) - plain_metric(m, b, b.corrupted_tokens)
    err = {n: (edge_scores(m, g, b, n)[:, :, 0].sum(1) - gap).abs().max().item() for n in (8, 32, 128)}
    # A right Riemann sum: the error falls like 1/steps.
    assert err[128] < 0.5 * err[32] + 1e-4 and err[32] < err[8] + 1e-4, f"completeness error by steps: {err}"
    assert err[128] < 0.05 * (gap.abs().max().item() + 0.1), f"completeness error {err} for gaps {gap.tolist()}"


def test_edge_scores_are_the_edge_derivative(tiny_model, tt) -> None:  # noqa: ANN001
    """With one step (the gradient at the clean run), score(u → r) = −d m / dε where edge u → r carries
    ε of the way to the corrupted value (central differences in float64, every edge; through post-norms too)."""
    m = _float64(tiny_model)
    g = EdgeGraph(m.spec)
    b = pair_batches(tt, 1)[0]
    b = circuit_mod.PairBatch(b.label, b.clean_tokens[:1], b.corrupted_tokens[:1], b.correct[:1], b.incorrect[:1])
    scores = edge_scores(m, g, b, steps=1)[0]  # (R, S)
    edges = g.edge_index
    eps = 1e-5
    patches = torch.zeros(2 * len(edges), g.n_receivers, g.n_senders, dtype=torch.float64)
    for i, (rcv, snd) in enumerate(edges.tolist()):
        patches[2 * i, rcv, snd], patches[2 * i + 1, rcv, snd] = eps, -eps
    vals = edge_patch_metric(m, g, b, patches).double().view(-1, 2)  # metrics come back in float32
    fd = -(vals[:, 0] - vals[:, 1]) / (2 * eps)
    got = scores[edges[:, 0], edges[:, 1]].double()
    err = (fd - got).abs().max().item()
    # float32 metric read-out: differences of ~1e-7 over 2e-5 → ~1e-2 absolute noise floor on fd.
    assert err < 2e-2 * max(1.0, got.abs().max().item()), f"max |fd − score| = {err:.2e}"


def test_batched_equals_one_at_a_time(tiny_model, tt, monkeypatch) -> None:  # noqa: ANN001
    g = EdgeGraph(tiny_model.spec)
    b = pair_batches(tt, 3)[0]
    gen = torch.Generator().manual_seed(1)
    patches = (torch.rand(5, g.n_receivers, g.n_senders, generator=gen) < 0.3).float() * g.allowed
    batched = edge_patch_metric(tiny_model, g, b, patches)
    monkeypatch.setattr(circuit_mod, "_ITEM_BUDGET", 1)  # one item per forward
    single = edge_patch_metric(tiny_model, g, b, patches)
    assert (batched - single).abs().max() < 1e-4, f"{(batched - single).abs().max():.2e}"


def test_skipping_nodes_that_read_only_the_other_run(tiny_model, tt, monkeypatch) -> None:  # noqa: ANN001
    """Nodes whose inputs all read the other run take its recorded writes instead of recomputing them: the same
    metrics (float64) as recomputing every node, for items from the empty circuit to the whole graph mixed in one
    batch (some layers skipped for some items only)."""
    import logitlab.model.graph as graph_mod
    m = _float64(tiny_model)
    g = EdgeGraph(m.spec)
    b = pair_batches(tt, 3)[0]
    gen = torch.Generator().manual_seed(2)
    allowed = g.allowed.double()
    edges = g.edge_index
    patches = allowed[None].repeat(6, 1, 1)
    for i, n in enumerate((0, 1, 3, 10, len(edges) // 2, len(edges))):  # kept edges carry the current run
        kept = edges[torch.randperm(len(edges), generator=gen)[:n]]
        patches[i, kept[:, 0], kept[:, 1]] = 0.0
    calls: list[int] = []
    real = graph_mod._reading_current

    def counted(rows, n_read):  # noqa: ANN001, ANN202
        live = real(rows, n_read)
        calls.append(-1 if live is None else len(live))
        return live

    monkeypatch.setattr(graph_mod, "_reading_current", counted)
    skipped = edge_patch_metric(m, g, b, patches).double()
    assert any(0 <= c < len(patches) * b.n for c in calls), "no node was skipped for any item"
    monkeypatch.setattr(graph_mod, "_reading_current", lambda rows, n_read: None)
    full = edge_patch_metric(m, g, b, patches).double()
    err = (skipped - full).abs().max().item()
    assert err < 1e-6 * max(1.0, full.abs().max().item()), f"skipping changed the metric by {err:.2e}"


def test_pruned_masks_give_the_same_metrics(tiny_model, tt, monkeypatch) -> None:  # noqa: ANN001
    """Kept edges off every path of kept edges from the embedding to the logits read the other run instead
    (``graph_prune.live_patch``), and each distinct rewritten mask runs once: the same metrics (float64) as the
    masks as given, for circuits from empty to whole, a duplicate, and a path whose one dead edge goes."""
    m = _float64(tiny_model)
    g = EdgeGraph(m.spec)
    b = pair_batches(tt, 3)[0]
    gen = torch.Generator().manual_seed(3)
    edges = g.edge_index
    sizes = (0, 1, 2, 5, 20, len(edges) // 4, len(edges) // 2, len(edges))
    patches = g.allowed.double()[None].repeat(len(sizes) + 3, 1, 1)
    for i, n in enumerate(sizes):  # kept edges carry the current run
        kept = edges[torch.randperm(len(edges), generator=gen)[:n]]
        patches[i, kept[:, 0], kept[:, 1]] = 0.0
    patches[len(sizes)] = patches[4]  # a duplicate
    path, dead = len(sizes) + 1, len(sizes) + 2
    h0, logits = g.head_sender(0, 0), g.receiver(0, "logits")
    patches[path, g.receiver(0, "q", 0), 0] = 0.0  # input → L0H0 → logits, and L1's MLP → logits with nothing
    patches[path, logits, h0] = 0.0                  # kept into L1's MLP: that edge is dead
    patches[path, logits, g.mlp_sender(1)] = 0.0
    patches[dead, logits, h0] = 0.0  # L0H0 → logits alone: L0H0 writes what the other run writes
    live = live_patch(g, patches)
    assert not live[0].any() and torch.equal(live[len(sizes) - 1], g.allowed), "empty / whole circuit"
    assert bool((live <= patches.eq(0)).all()), "a live edge that is not kept"
    assert live[path].sum() == 2 and live[path, logits, h0] and not live[path, logits, g.mlp_sender(1)]
    assert not live[dead].any()
    items = []
    real = circuit_mod.graph_forward

    def counted(runner, graph, embed, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        items.append(len(embed))
        return real(runner, graph, embed, *a, **kw)

    monkeypatch.setattr(circuit_mod, "graph_forward", counted)
    pruned = edge_patch_metric(m, g, b, patches).double()
    assert sum(items) < len(patches) * b.n, f"{sum(items)} items for {len(patches)} masks × {b.n} pairs"
    full = edge_patch_metric(m, g, b, patches, prune=False).double()
    err = (pruned - full).abs().max().item()
    assert err < 1e-6 * max(1.0, full.abs().max().item()), f"pruning changed the metric by {err:.2e}"
    # The dead-path mask is the empty circuit: the other run's metric.
    assert (pruned[dead] - full[0]).abs().max() < 1e-6 * max(1.0, full.abs().max().item())


def test_single_edge_layer_equals_the_edge_level_pass(tiny_model, tt, monkeypatch) -> None:  # noqa: ANN001
    """Masks of one edge each into a layer's receivers (path patching's): the per-pair pass of
    ``single_edge_layer`` gives the metrics (float64) of the general edge-level pass, for every receiver kind of
    the layer (query, key, value, MLP) and senders of every kind (embedding, heads of earlier layers and of the
    same layer, MLPs), both runs as the base; and masks of every out-edge of one head (the whole node)."""
    m = _float64(tiny_model)
    g = EdgeGraph(m.spec)
    b = pair_batches(tt, 3)[0]
    def one_edge_masks(layer: int) -> torch.Tensor:
        rows = range(layer * g.receivers_per_layer, (layer + 1) * g.receivers_per_layer)
        edges = [(r, s) for r in rows for s in g.allowed[r].nonzero()[:, 0].tolist()]
        patches = torch.zeros(len(edges), g.n_receivers, g.n_senders, dtype=torch.float64)
        for i, (r, s) in enumerate(edges):
            patches[i, r, s] = 1.0
        return patches

    calls: list[int] = []
    real = circuit_mod.single_edge_layer
    monkeypatch.setattr(circuit_mod, "single_edge_layer", lambda *a: calls.append(1) or real(*a))
    # Every out-edge of one head (path patching's whole node), a layer with later layers after it.
    first = m.spec.n_layers - 2
    whole = torch.zeros(m.spec.n_heads, g.n_receivers, g.n_senders, dtype=torch.float64)
    for h in range(m.spec.n_heads):
        sender = g.head_sender(first, h)
        whole[h, :, sender] = g.allowed[:, sender].double()
    last = m.spec.n_layers - 1
    for masks, start in ((one_edge_masks(last), last), (whole, first),
                         (torch.cat([one_edge_masks(first), whole]), first)):  # both kinds in one batch
        for base in ("clean", "corrupted"):
            fast = edge_patch_metric(m, g, b, masks, base=base, start=start).double()
            assert calls, "the single-edge pass did not run"
            general = edge_patch_metric(m, g, b, masks, base=base).double()  # from layer 0: the general pass
            err = (fast - general).abs().max().item()
            assert err < 1e-9 * max(1.0, general.abs().max().item()), f"{base}: {err:.2e}"
            calls.clear()


def test_all_paths_of_a_sender_equal_patching_the_head(tiny_model, tt) -> None:  # noqa: ANN001
    """Every out-edge of a head at once = activation patching of its z (an independent sweep)."""
    spec = tiny_model.spec
    ap = activation_patching(tiny_model, tt, generated=False, min_gap=0.0)
    senders = [(0, 1), (spec.n_layers - 2, spec.n_heads - 1)]
    res = path_patching(tiny_model, tt, senders, max_pairs=ap.reference.n, min_gap=0.0)  # the reference pairs
    ref = ap.reference
    frac = (ref.heads - ref.corrupted) / (ref.clean - ref.corrupted)  # (L, H, pair)
    for i, (l, h) in enumerate(senders):
        assert abs(float(res.node.mean[i]) - float(frac[l, h].mean())) < 1e-3 * max(1, float(frac[l, h].abs().max()))
    # Readers not after the sender hold no value; readers after it do.
    assert res.q.mean[0, 0].isnan().all() and not res.q.mean[0, 1:].isnan().any()
    assert not res.direct.mean.isnan().any()
    d = res.to_dict()
    validate_results(json.loads(json.dumps(d)), PathPatching)
    assert d["q"][0][0][0] is None and isinstance(d["direct"][0], float)


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_edge_equals_transformerlens_direct_path_patching(tiny_dir, component) -> None:  # noqa: ANN001
    """Oracle: TransformerLens 4.3's get_act_patch_direct_path (multi-head attention, no post-norms)."""
    from transformer_lens import patching as tlp

    from logitlab.model.load import load_model
    from tests.tiny import TASK_YAML, make_model_folder
    for kind in ("gpt2", "llama_mha"):
        m = load_model(str(make_model_folder(kind, tiny_dir / f"tl-{kind}")), cache=False)
        (tiny_dir / "tl-task.yaml").write_text(TASK_YAML, encoding="utf-8")
        b = pair_batches(tokenize_task(load_task(tiny_dir / "tl-task.yaml"), m.tokenizer), 1)[0]
        br = m.bridge
        _, clean_cache = br.run_with_cache(b.clean_tokens)
        _, corr_cache = br.run_with_cache(b.corrupted_tokens)
        c, inc = int(b.correct[0]), [int(x) for x in b.incorrect[0] if x >= 0]
        metric = lambda lg: lg[0, -1, c] - lg[0, -1, inc].mean()  # noqa: E731
        tl = tlp.get_act_patch_direct_path(br, b.corrupted_tokens, clean_cache, corr_cache, metric, 0, 1, component,
                                           verbose=False)
        g = EdgeGraph(m.spec)
        L, H = m.spec.n_layers, m.spec.n_heads
        patches = torch.zeros((L - 1) * H, g.n_receivers, g.n_senders)
        for i, (l, h) in enumerate((l, h) for l in range(1, L) for h in range(H)):
            patches[i, g.receiver(l, component, h), g.head_sender(0, 1)] = 1.0
        ours = edge_patch_metric(m, g, b, patches, base="corrupted")[:, 0].view(L - 1, H)
        err = (ours - tl[1:].cpu()).abs().max().item()
        assert err < 1e-4, f"{kind} {component}: max |logitlab − TransformerLens| = {err:.2e}"


def test_path_patching_precision_target(tiny_model, tt) -> None:  # noqa: ANN001
    """With a target, path patching runs its first pairs and adds the rest only while a quoted CI is too wide: a
    loose target equals path patching of the first pairs; an unreachable one uses every pair, as without a target."""
    from logitlab.analyses.path_patching import FIRST_PATH_PAIRS
    spec = tiny_model.spec
    senders = [(0, 1), (spec.n_layers - 2, spec.n_heads - 1)]
    n_all = sum(b.n for b in pair_batches(tt, 8))
    loose = path_patching(tiny_model, tt, senders, max_pairs=8, target=1e6)
    first = path_patching(tiny_model, tt, senders, max_pairs=FIRST_PATH_PAIRS)
    assert loose.precision is not None and loose.precision["n_pairs"] == min(FIRST_PATH_PAIRS, n_all)
    assert loose.precision["met"] and loose.precision["n_available"] == n_all
    for kind in ("q", "k", "v", "mlp", "direct", "node"):
        a, b = getattr(loose, kind).mean, getattr(first, kind).mean
        assert torch.allclose(a, b, atol=1e-5, equal_nan=True), kind
    strict = path_patching(tiny_model, tt, senders, max_pairs=8, target=1e-12)
    plain = path_patching(tiny_model, tt, senders, max_pairs=8)
    assert strict.precision is not None and strict.precision["n_pairs"] == n_all and plain.precision is None
    assert torch.allclose(strict.node.mean, plain.node.mean, atol=1e-5, equal_nan=True)
    assert strict.n_pairs == plain.n_pairs
    w = plain.headline_width()
    # the strict run batches its pairs in rounds: its numbers equal the plain run's to float32 rounding (as above)
    assert w is None or (w >= 0 and abs(strict.precision["achieved"] - w) <= 1e-5)


def _mix_per_layer(runner, x, m, pre_ref, out_ref, diff, head_idx, items, ref_rows=None):  # noqa: ANN001, ANN202
    """The post-norm head mixture one earlier layer at a time (the edge-level forward's first implementation)."""
    for l2 in range(m.shape[2]):
        act = m[:, :, l2].ne(0).any(-1)  # (n, r): whose view of layer l2 differs from the reference run's
        if not bool(act.any()):
            continue
        bi, ri = act.nonzero(as_tuple=True)
        gi = bi if items is None else items[bi]
        h0, H = int(head_idx[l2, 0]), head_idx.shape[1]
        gr = gi if ref_rows is None else ref_rows[gi]
        mixed = pre_ref[l2][gr] + torch.einsum("nh,nhtd->ntd", m[bi, ri, l2], diff[gi, h0:h0 + H])
        out, _ = runner.post_attention(l2, mixed)
        x = x.index_put((bi, ri), out - out_ref[l2][gr], accumulate=True)
    return x


@pytest.mark.parametrize("tiny_model", ["gemma3", "olmo2"], indirect=True)
@pytest.mark.parametrize("budget", [None, 1])
def test_batched_post_norm_mixture_equals_per_layer(tiny_model, monkeypatch, budget) -> None:  # noqa: ANN001
    """Post-norm models: the readers' mixtures of every earlier layer in one gather and one norm over rows of mixed
    layers equal one layer at a time (float64), for patches from nearly empty to nearly everything, readers
    relative to either run, all items and a subset (items whose nodes read only the other run are skipped);
    ``budget`` 1: one (item, reader, layer) per chunk."""
    import logitlab.model.graph as graph_mod
    m = _float64(tiny_model)
    r, g = m.runner, EdgeGraph(m.spec)
    assert m.spec.post_norms
    if budget is not None:
        monkeypatch.setattr(graph_mod, "_MIX_BUDGET", budget)
    gen = torch.Generator().manual_seed(3)
    n, T = 10, 9
    a, b = torch.randint(2, 200, (n, T), generator=gen), torch.randint(2, 200, (n, T), generator=gen)
    fp = torch.full((n,), T - 1)
    ea = r.embed_sum(a)
    other = graph_forward(r, g, r.embed_sum(b), fp, record=True).senders
    allowed = g.allowed.double()
    dens = torch.tensor([0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.99, 0.995, 1.0], dtype=torch.float64)
    u = torch.rand(n, g.n_receivers, g.n_senders, generator=gen, dtype=torch.float64)
    patches = (u < dens[:, None, None]) * allowed  # item i patches a fraction dens[i] of the edges
    patches[-1] = allowed  # the empty circuit: its nodes are skipped, so the others run as a subset of items

    real = graph_mod._mix_head_layers
    seen: set[tuple[bool, bool]] = set()
    errs: list[float] = []

    def checked(runner, x, w, pre_ref, out_ref, diff, head_idx, items, ref_rows=None):  # noqa: ANN001, ANN202
        want = _mix_per_layer(runner, x.clone(), w, pre_ref, out_ref, diff, head_idx, items, ref_rows)
        got = real(runner, x.clone(), w, pre_ref, out_ref, diff, head_idx, items, ref_rows)
        if bool(w.ne(0).any()):
            seen.add((items is None, bool((w < 0).any())))  # weights < 0: relative to the other run
        errs.append((got - want).abs().max().item() / max(1.0, want.abs().max().item()))
        return got

    monkeypatch.setattr(graph_mod, "_mix_head_layers", checked)
    batched = [graph_forward(r, g, ea[:k], fp[:k], patches[:k], other[:k]).final
               for k in (5, n)]
    # The other run's writes given once per row with each item's row named (as edge_patch_metric gives a pair's
    # writes to all its items): 5 rows, each read by two items.
    rows = other[torch.tensor([5, 1, 7, 0, 9])]
    index = torch.tensor([2, 0, 1, 2, 3, 4, 0, 1, 3, 4])
    want = graph_forward(r, g, ea, fp, patches, rows[index]).final
    got = graph_forward(r, g, ea, fp, patches, rows, other_index=index).final
    assert (got - want).abs().max() < 1e-12 * max(1.0, want.abs().max().item())
    assert seen == {(True, True), (True, False), (False, True), (False, False)}, seen
    assert max(errs) < 1e-12, f"batched vs per-layer mixture: max relative difference {max(errs):.2e}"
    monkeypatch.setattr(graph_mod, "_mix_head_layers", _mix_per_layer)
    ref = [graph_forward(r, g, ea[:k], fp[:k], patches[:k], other[:k]).final
           for k in (5, n)]
    for got, want in zip(batched, ref):
        err = (got - want).abs().max().item()
        assert err < 1e-12 * max(1.0, want.abs().max().item()), f"final residual stream differs by {err:.2e}"
    # The patches bite: the result is neither run's own.
    clean = graph_forward(r, g, ea, fp).final
    assert (batched[1][:-1] - clean[:-1]).abs().max() > 1e-3
