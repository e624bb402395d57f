"""Circuit discovery with EAP-IG (edge attribution patching with integrated gradients), and its faithfulness.

Method (Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness"; edges as in
:mod:`logitlab.model.graph`): the graph's nodes are the embedding, every head and every MLP; an edge joins a
writer to a later reader's query, key or value input, MLP input or the logits. An edge's score is the change
of the metric m (clean prompt's logit difference, correct − mean incorrect) expected when the edge alone
carries the clean instead of the corrupted value, estimated with integrated gradients over the input:

    score(u → r) = Σ_pos (a_u^clean − a_u^corr) · (1/N) Σ_{k=1..N} ∂m/∂(input of r) at x_k,
    x_k = corrupted embedding + (k/N)(clean − corrupted embedding),

averaged over the task's clean/corrupted pairs (``ig_steps`` = N). Where a layer's heads pass a post-attention
norm, the head's write reaches the reader through that norm, and the gradient is taken through it (the norm's
Jacobian at x_k; :func:`_post_norm_terms`).

Faithfulness: keep the top-n edges by |score|, give every other edge the corrupted run's value (the clean
prompt runs; each reader's input mixes current writes on kept edges and corrupted writes on the others, see
:func:`logitlab.model.graph.graph_forward`), and report the recovered fraction of each pair's gap,
(m − m_corr) / (m_clean − m_corr), for n on a log grid, with the same for ``n_random`` circuits of n random edges
as a baseline band (on the first pairs only while more pairs would not move it: :data:`RANDOM_NOISE`). "The
circuit" is the smallest n whose mean recovery is at least ``threshold`` (0.8).

Invariants (tested): the full graph recovers exactly 1 and the empty graph 0 for every pair; IG completeness —
the embedding's edges (a cut every path crosses) sum to m_clean − m_corr as the steps grow (the Riemann sum of
the input-level integrated gradient); edge patching equals TransformerLens's direct path patching where that
is defined; batched equals one item at a time.

Example:
    >>> tt = tokenize_task(load_task("pronouns"), model.tokenizer)
    >>> res = eap_ig_circuit(model, tt)
    >>> res.chosen_n, res.recovered.mean[res.sizes.index(res.chosen_n)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses.patching import MIN_GAP
from logitlab.errors import LogitlabError
from logitlab.model.backend import GRAD, SWEEP, require
from logitlab.model.graph import EdgeGraph, graph_forward, single_edge_layer
from logitlab.model.graph_prune import is_binary_patch, live_patch
from logitlab.model.load import Model
from logitlab.registry import setting
from logitlab.results.circuit import Circuit
from logitlab.stats import Paired, paired
from logitlab.task import TokenizedTask, generated_pairs

__all__ = ["CircuitSettings", "PairBatch", "CircuitResult", "pair_batches", "edge_scores", "edge_patch_metric", "plain_metric",
           "recorded_runs", "eap_ig_circuit", "CIRCUIT_PAIRS", "IG_STEPS", "N_RANDOM", "RANDOM_PAIRS", "THRESHOLD"]

#: Defaults: clean/corrupted pairs used, integration steps, random circuits per size, recovery defining "the circuit".
CIRCUIT_PAIRS = 16
IG_STEPS = 5
N_RANDOM = 20
THRESHOLD = 0.8
#: Pairs the random circuits of the faithfulness baseline run on: at most RANDOM_PAIRS, the first FIRST_RANDOM_PAIRS
#: first; the others only if, at some size, the pairs' noise in a circuit's mean recovery (√(mean within-circuit
#: variance / pairs)) exceeds RANDOM_NOISE × the spread between circuits (their means' SD) and RANDOM_FLOOR.
RANDOM_PAIRS = 8
FIRST_RANDOM_PAIRS = 4
RANDOM_NOISE = 0.25
RANDOM_FLOOR = 0.01
#: Items per batch of the edge-level forward (each holds its senders' outputs: S × T × D floats, twice).
_ITEM_BUDGET = 2**30


@dataclass(frozen=True)
class CircuitSettings:
    """Settings of EAP-IG circuit discovery."""

    pairs: int = setting(CIRCUIT_PAIRS, "clean/corrupted pairs used (the task's own first, then generated ones)",
                         flag="--circuit-pairs", commands=("run", "circuit"),
                         help="Clean/corrupted pairs for circuit discovery.")
    ig_steps: int = setting(IG_STEPS, "integrated-gradient steps of the edge scores", flag="--ig-steps",
                            commands=("run", "circuit"), help="Integrated-gradient steps of the circuit's edge scores.")
    n_random: int = setting(N_RANDOM, "random circuits per size in the faithfulness baseline")
    threshold: float = setting(THRESHOLD, "recovered fraction that defines the circuit")

    def __post_init__(self) -> None:
        if min(self.pairs, self.ig_steps, self.n_random) < 1:
            raise LogitlabError("circuit settings: pairs, ig_steps and n_random must be ≥ 1")
        if not 0 < self.threshold <= 1:
            raise LogitlabError(f"circuit threshold must be in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class PairBatch:
    """Clean/corrupted pairs of one token length, scored with the clean prompt's answers."""

    label: str
    clean_tokens: Tensor  # (pair, pos)
    corrupted_tokens: Tensor
    correct: Tensor  # (pair,)
    incorrect: Tensor  # (pair, k), padded with answers.PAD

    @property
    def n(self) -> int:
        return int(self.clean_tokens.shape[0])


def pair_batches(tt: TokenizedTask, max_pairs: int = CIRCUIT_PAIRS) -> list[PairBatch]:
    """The task's explicit (reference) pairs first, then pairs generated from its templates, ``max_pairs`` in all."""
    out: list[PairBatch] = []
    left = max_pairs
    if tt.clean_tokens is not None and left > 0:
        assert tt.corrupted_tokens is not None and tt.pair_correct_ids is not None and tt.pair_incorrect_ids is not None
        n = min(left, int(tt.clean_tokens.shape[0]))
        out.append(PairBatch("reference", tt.clean_tokens[:n], tt.corrupted_tokens[:n], tt.pair_correct_ids[:n],
                             tt.pair_incorrect_ids[:n]))
        left -= n
    for g in generated_pairs(tt) if left > 0 else ():
        n = min(left, g.n_pairs)
        out.append(PairBatch(g.template_text, g.clean_tokens[:n], g.corrupted_tokens[:n], g.correct_ids[:n],
                             g.incorrect_ids[:n]))
        left -= n
        if left <= 0:
            break
    return out


def _metric(model: Model, final: Tensor, b: PairBatch, rows: Tensor | None = None) -> Tensor:
    dev = final.device
    correct, incorrect = b.correct.to(dev), b.incorrect.to(dev)
    if rows is not None:
        correct, incorrect = correct[rows], incorrect[rows]
    d, _ = model.runner.answer_metrics(final, correct, incorrect, with_loss=False)
    return d.float()


def recorded_runs(model: Model, graph: EdgeGraph, b: PairBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Embeddings and recorded sender outputs (pair, S, T, D) of the clean and corrupted prompts."""
    r = model.runner
    T = b.clean_tokens.shape[1]
    fp = torch.full((b.n,), T - 1, device=r.device)
    ce, xe = r.embed_sum(b.clean_tokens.to(r.device)), r.embed_sum(b.corrupted_tokens.to(r.device))
    with torch.no_grad():
        clean = graph_forward(r, graph, ce, fp, record=True).senders
        corr = graph_forward(r, graph, xe, fp, record=True).senders
    assert clean is not None and corr is not None
    return ce, xe, clean, corr


def _post_norm_terms(model: Model, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What scoring head writes through the post-attention RMSNorms y = w_l ⊙ x_l / rms(x_l) at x (B, L, T, D)
    needs: a head's score for a reader with cotangent g is ⟨Jᵀg, δ⟩ with
    Jᵀg = (w ⊙ g) / rms − x · ((w ⊙ g) · x) / (D · rms³), i.e. Σ_td g · A − Σ_t (Σ_d g · W) · Q with
    A = w ⊙ δ / rms (B, L, H, T, D), W = w ⊙ x (B, L, T, D) and Q = (x · δ) / (D · rms³) (B, L, H, T), for the
    heads' clean − corrupted writes δ (B, L, H, T, D). Jᵀg itself (one per reader and layer) is never formed.
    """
    spec, w = model.spec, model.runner.w
    if spec.normalization != "RMS":
        raise LogitlabError("edge scores through a post-attention LayerNorm are not implemented",
                            f"{spec.model_type} has post-attention norms of type {spec.normalization}")
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, df, wf = x.to(dt), delta.to(dt), w.post1_w.to(dt)[None, :, None]  # wf (1, L, 1, D)
    rms = (xf.pow(2).mean(-1, keepdim=True) + spec.eps).sqrt()  # (B, L, T, 1)
    A = df * (wf / rms)[:, :, None]
    Q = torch.einsum("bltd,blhtd->blht", xf, df) / (spec.d_model * rms[..., 0] ** 3)[:, :, None]
    return A, xf * wf, Q


def edge_scores(model: Model, graph: EdgeGraph, b: PairBatch, steps: int = IG_STEPS,
                runs: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> Float[Tensor, "pair receiver sender"]:
    """Per-pair EAP-IG score of every edge (0 on non-edges), in logit-difference units (module docstring).

    ``runs``: the pairs' embeddings and recorded writes (:func:`recorded_runs`), if already computed.
    """
    if steps < 1:
        raise LogitlabError("ig_steps must be ≥ 1")
    r, spec = model.runner, model.spec
    H, L = spec.n_heads, spec.n_layers
    Rl = graph.receivers_per_layer
    T = b.clean_tokens.shape[1]
    fp = torch.full((b.n,), T - 1, device=r.device)
    ce, xe, clean, corr = runs if runs is not None else recorded_runs(model, graph, b)
    delta = clean - corr  # (pair, S, T, D): each sender's clean − corrupted write
    scores = torch.zeros(b.n, graph.n_receivers, graph.n_senders, dtype=torch.float32, device=r.device)
    linear = [0] + [graph.mlp_sender(l) for l in range(L)]
    heads_idx = torch.tensor([graph.head_sender(l, h) for l in range(L) for h in range(H)], device=delta.device)
    delta_heads = delta[:, heads_idx].unflatten(1, (L, H))  # (pair, L, H, T, D)
    for k in range(1, steps + 1):
        with torch.enable_grad():
            x = (xe + (k / steps) * (ce - xe)).detach().requires_grad_(True)
            run = graph_forward(r, graph, x, fp, keep_inputs=True)
            m = _metric(model, run.final, b)
            assert run.inputs is not None
            grads = torch.autograd.grad(m.sum(), run.inputs)
        # Receivers per layer: (attention inputs (B, Rl−1, T, D), MLP input (B, T, D)); then the logits.
        blocks = [(l * Rl, grads[2 * l], graph.head_sender(l, 0)) for l in range(L)]
        blocks += [(l * Rl + Rl - 1, grads[2 * l + 1][:, None],
                    graph.head_sender(l, 0) + (0 if spec.parallel else H)) for l in range(L)]
        blocks.append((graph.n_receivers - 1, grads[-1][:, None], graph.n_senders))
        if spec.post_norms:
            assert run.attn_pre is not None
            A, W, Q = _post_norm_terms(model, torch.stack([a.detach() for a in run.attn_pre], 1), delta_heads)
        for row, g, n_read in blocks:
            rows = slice(row, row + g.shape[1])
            if not spec.post_norms:
                scores[:, rows, :n_read] += torch.einsum("brtd,bstd->brs", g, delta[:, :n_read]).float() / steps
                continue
            lin = [s for s in linear if s < n_read]
            scores[:, rows, lin] += torch.einsum("brtd,bstd->brs", g, delta[:, lin]).float() / steps
            n_l = sum(1 for l2 in range(L) if graph.head_sender(l2, 0) < n_read)  # earlier layers whose heads it reads
            gd = g.to(A.dtype)
            part = torch.einsum("brtd,blhtd->brlh", gd, A[:, :n_l]) - torch.einsum(
                "brlt,blht->brlh", torch.einsum("brtd,bltd->brlt", gd, W[:, :n_l]), Q[:, :n_l])
            scores[:, rows, heads_idx[:n_l * H]] += part.flatten(2).float() / steps
    return scores * graph.allowed.to(scores.device)


def edge_patch_metric(model: Model, graph: EdgeGraph, b: PairBatch, patches: Tensor, base: str = "clean",
                      start: int = 0, progress: Callable[[int], None] | None = None,
                      runs: tuple[Tensor, Tensor, Tensor, Tensor] | None = None, prune: bool = True
                      ) -> Float[Tensor, "mask pair"]:
    """The metric with edges patched: ``patches`` (M, R, S) float, 1 where an edge carries the *other* run's
    value; ``base`` names the prompt that runs (``"clean"``: other = corrupted; ``"corrupted"``: other = clean).

    Every (mask, pair) is one item of the edge-level forward, batched; ``start`` as in :func:`graph_forward`.
    ``runs``: the pairs' embeddings and recorded writes (:func:`recorded_runs`), if already computed.
    ``prune``: masks of kept and patched edges (0 or 1) run as :func:`~logitlab.model.graph_prune.live_patch`
    rewrites them, each distinct one once (the same metrics up to rounding; False: as given).
    """
    single = _one_sender(graph, patches, start)
    if single is None and start == 0 and prune and len(patches) and is_binary_patch(graph, patches):
        # Each distinct mask once, with the kept edges that cannot change the metric patched (exact:
        # logitlab.model.graph_prune); the items it saves count as done.
        rewritten = graph.allowed.to(patches.device) & ~live_patch(graph, patches)
        distinct, inv = torch.unique(rewritten.flatten(1), dim=0, return_inverse=True)
        if len(distinct) < len(patches) or bool(rewritten.ne(patches.ne(0)).any()):
            out = edge_patch_metric(model, graph, b, distinct.view(-1, *patches.shape[1:]).to(patches.dtype),
                                    base, progress=progress, runs=runs, prune=False)
            if progress is not None:
                progress((len(patches) - len(distinct)) * b.n)
            return out[inv.to(out.device)]
    r = model.runner
    ce, xe, clean, corr = runs if runs is not None else recorded_runs(model, graph, b)
    emb, own, other = (ce, clean, corr) if base == "clean" else (xe, corr, clean)
    M, n = patches.shape[0], b.n
    T, D = emb.shape[1], emb.shape[2]
    per_item = 4 * graph.n_senders * T * D * emb.element_size() + 1
    chunk = max(1, min(M * n, _ITEM_BUDGET // per_item))
    out = torch.empty(M * n, dtype=torch.float32)
    patches = patches.to(device=r.device, dtype=emb.dtype)
    # Patches reaching only receivers of layer `start`: the edge-level pass runs that layer alone, and the
    # ordinary (faster) forward pass continues, exact since no later reader is patched.
    Rl = graph.receivers_per_layer
    touched = patches.ne(0).any(-1).any(0).nonzero()[:, 0]
    one_layer = start < graph.n_layers and bool(((touched >= start * Rl) & (touched < (start + 1) * Rl)).all())
    if single is not None:
        single = single[0].to(r.device), single[1].to(r.device)
    with torch.no_grad():
        for a in range(0, M * n, chunk):
            items = torch.arange(a, min(a + chunk, M * n), device=r.device)
            mi, pi = items // n, items % n
            fp = torch.full((len(items),), T - 1, device=r.device)
            if single is not None:  # one edge or head per mask (path patching): no per-item copy of the writes
                resid = single_edge_layer(r, graph, start, emb, own, other, pi, single[0][mi], single[1][mi])
                final = r.run_from(start, "post", resid, final_pos=fp)
            else:
                run = graph_forward(r, graph, emb[pi], fp, patches[mi], other, start=start,
                                    base=own[pi] if start else None, stop=start if one_layer else None,
                                    other_index=pi)
                final = run.final if not one_layer else r.run_from(start, "post", run.resid, final_pos=fp)
            out[a:a + len(items)] = _metric(model, final, b, pi).cpu()
            if progress is not None:
                progress(len(items))
    return out.view(M, n)


def _one_sender(graph: EdgeGraph, patches: Tensor, start: int) -> tuple[Tensor, Tensor] | None:
    """(receiver, sender) per mask when every mask of ``patches`` (M, R, S) patches one sender only: one edge into
    a receiver of layer ``start``, or every out-edge of a head of layer ``start`` (receiver −1); else None."""
    if start >= graph.n_layers:
        return None
    used = patches.ne(0).any(1)  # (M, S)
    if not bool(used.sum(1).eq(1).all()):
        return None
    M, Rl = patches.shape[0], graph.receivers_per_layer
    items = torch.arange(M, device=patches.device)
    snd = used.to(torch.int8).argmax(1)
    col = patches[items, :, snd]  # (M, R): each mask's one sender column
    allowed = graph.allowed.to(patches)[:, snd].T  # (M, R)
    rcv = col.ne(0).to(torch.int8).argmax(1)
    one = (col.ne(0).sum(1) == 1) & (col[items, rcv] == 1) & (allowed[items, rcv] == 1) \
        & (rcv >= start * Rl) & (rcv < (start + 1) * Rl)
    whole = torch.isin(snd, graph.head_senders[start].to(snd.device)) & (col == allowed).all(1)
    if not bool((one | whole).all()):
        return None
    return torch.where(one, rcv, -1), snd


def _sizes(n_edges: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, … below ``n_edges``, then ``n_edges`` itself."""
    sizes, k = [], 0
    while True:
        n = (1, 2, 5)[k % 3] * 10 ** (k // 3)
        if n >= n_edges:
            break
        sizes.append(n)
        k += 1
    return sizes + [n_edges]


@dataclass(frozen=True)
class CircuitResult:
    """EAP-IG edge scores and the faithfulness curve (module docstring)."""

    graph: EdgeGraph
    ig_steps: int
    edge_index: Tensor  # (edge, 2): (receiver, sender), ranked by |mean score|
    scores: Paired  # per edge, over used pairs (logit-difference units), ranked
    sizes: list[int]
    recovered: Paired  # (size,) over used pairs
    random_mean: Tensor  # (size,) mean over random circuits of their mean recovery
    random_ci: Tensor  # (size, 2): 2.5% and 97.5% of the random circuits' mean recovery
    n_random: int
    random_pairs: int  # pairs the random circuits ran on: the first ones, as many as the baseline needed
    random_pairs_available: int
    full: float
    empty: float
    threshold: float
    n_pairs: int
    n_excluded: int

    @property
    def chosen_n(self) -> int | None:
        """The smallest size whose mean recovery reaches the threshold."""
        for i, n in enumerate(self.sizes):
            if float(self.recovered.mean[i]) >= self.threshold:
                return n
        return None

    def edges(self, top: int = 1000) -> list[dict[str, Any]]:
        out = []
        for i in range(min(top, len(self.edge_index))):
            rcv, snd = (int(v) for v in self.edge_index[i])
            s, node, inp = self.graph.edge_label(rcv, snd)
            out.append({"sender": s, "receiver": node, "input": inp, "score": float(self.scores.mean[i]),
                        "score_ci": [float(v) for v in self.scores.ci[i]]})
        return out

    def to_dict(self, top: int = 1000) -> Circuit:
        ci = lambda t: [[float(a), float(b)] for a, b in t.tolist()]  # noqa: E731
        n = self.chosen_n
        i = None if n is None else self.sizes.index(n)
        g = self.graph
        return cast(Circuit, {
            "method": "eap-ig", "ig_steps": self.ig_steps, "n_pairs": self.n_pairs, "n_excluded": self.n_excluded,
            "n_edges_total": g.n_edges, "nodes": ["input", *g.sender_names[1:], "logits"],
            "edges": self.edges(max(top, n or 0)),
            "faithfulness": {"n_edges": list(self.sizes), "recovered": self.recovered.mean.tolist(),
                             "recovered_ci": ci(self.recovered.ci), "random_mean": self.random_mean.tolist(),
                             "random_ci": ci(self.random_ci), "n_random": self.n_random,
                             "random_pairs": self.random_pairs,
                             "random_pairs_available": self.random_pairs_available},
            "chosen": {"n_edges": n, "threshold": self.threshold,
                       "recovered": None if i is None else float(self.recovered.mean[i]),
                       "recovered_ci": None if i is None else [float(v) for v in self.recovered.ci[i]],
                       "random_mean": None if i is None else float(self.random_mean[i]),
                       "random_ci": None if i is None else [float(v) for v in self.random_ci[i]]},
            "full": self.full, "empty": self.empty,
        })


def eap_ig_circuit(model: Model, tt: TokenizedTask, *, steps: int = IG_STEPS, max_pairs: int = CIRCUIT_PAIRS,
                   n_random: int = N_RANDOM, threshold: float = THRESHOLD, min_gap: float = MIN_GAP,
                   random_pairs: int = RANDOM_PAIRS,
                   progress: Callable[[str, int], Callable[[int], None]] | None = None) -> CircuitResult:
    """Score every edge with EAP-IG over the task's pairs and measure the faithfulness curve (module docstring).

    ``progress(description, total)`` returns a callback advanced by finished items. The random circuits run on
    the first ``random_pairs`` used pairs (their band spans circuits, which differ far more than pairs do).
    """
    require(model, SWEEP, "circuit discovery")
    require(model, GRAD, "circuit discovery")
    if n_random < 1 or random_pairs < 1:
        raise LogitlabError("the faithfulness baseline needs n_random ≥ 1 random circuits on random_pairs ≥ 1 pairs")
    batches = pair_batches(tt, max_pairs)
    if not batches:
        raise LogitlabError("circuit discovery needs clean/corrupted pairs",
                            "give the task a patching: list, or templates with subjects of two classes")
    graph = EdgeGraph(model.spec)
    allowed = graph.allowed
    adv = progress("circuit: edge scores", sum(b.n for b in batches) * steps) if progress else None
    per_pair, clean_ld, corr_ld, empty_ld = [], [], [], []
    runs = [recorded_runs(model, graph, b) for b in batches]
    for b, rb in zip(batches, runs):
        per_pair.append(edge_scores(model, graph, b, steps, runs=rb).cpu())
        # The references come from the ordinary forward pass; the empty graph (and, as the last size of the
        # faithfulness curve, the full one) from the edge-level one.
        clean_ld.append(plain_metric(model, b, b.clean_tokens))
        corr_ld.append(plain_metric(model, b, b.corrupted_tokens))
        empty_ld.append(edge_patch_metric(model, graph, b, allowed.float()[None], runs=rb)[0])
        if adv:
            adv(b.n * steps)
    clean, corr = torch.cat(clean_ld), torch.cat(corr_ld)
    used = (clean - corr).abs() >= min_gap
    if not bool(used.any()):
        raise LogitlabError(f"no clean/corrupted pair has a logit-difference gap of at least {min_gap}",
                            "circuit discovery normalises by the gap; use pairs the model tells apart")
    scores = torch.cat(per_pair)[used]  # (used pair, R, S)
    edge_index = graph.edge_index
    flat = scores[:, edge_index[:, 0], edge_index[:, 1]]  # (used pair, edge)
    order = flat.mean(0).abs().argsort(descending=True)
    edge_index, flat = edge_index[order], flat[:, order]
    sizes = _sizes(graph.n_edges)
    gen = torch.Generator().manual_seed(0)
    top = [edge_index[:n] for n in sizes]
    # Random circuits of each size (the whole graph is one circuit only), on the first random_pairs used pairs.
    rand = [edge_index[torch.randperm(len(edge_index), generator=gen)[:n]] for n in sizes[:-1] for _ in range(n_random)]
    picked = [(bi, int(i)) for bi, idx in _first_used(batches, list(used.split([b.n for b in batches])), random_pairs)
              for i in idx]  # (batch index, pair) of the pairs the random circuits may use, in order
    n_items = len(top) * sum(b.n for b in batches) + len(rand) * len(picked)
    adv = progress("circuit: faithfulness", n_items) if progress else None

    def recovery(masks: list[Tensor], bs: list[PairBatch], refs: list[tuple[Tensor, Tensor]],
                 bs_runs: list[tuple[Tensor, Tensor, Tensor, Tensor] | None]) -> Tensor:
        """(mask, pair) recovered fraction of each pair's own gap."""
        rec = []
        for b, (c, x), rb in zip(bs, refs, bs_runs):
            patches = allowed.float()[None].repeat(len(masks), 1, 1)
            for i, kept in enumerate(masks):
                patches[i, kept[:, 0], kept[:, 1]] = 0.0  # kept edges carry the clean run's own values
            rec.append((edge_patch_metric(model, graph, b, patches, progress=adv, runs=rb) - x) / (c - x))
        return torch.cat(rec, dim=1)

    top_frac = recovery(top, batches, list(zip(clean_ld, corr_ld)), runs)[:, used]  # (size, used pair)
    recovered = paired(top_frac)
    parts, done = [], 0  # the random circuits' recoveries (mask, pair), a round of pairs at a time
    while done < len(picked):
        want = len(picked) if done else min(FIRST_RANDOM_PAIRS, len(picked))
        groups = [(bi, torch.tensor([i for b2, i in picked[done:want] if b2 == bi]))
                  for bi in dict.fromkeys(bi for bi, _ in picked[done:want])]
        parts.append(recovery(rand, [_subset(batches[bi], idx) for bi, idx in groups],
                              [(clean_ld[bi][idx], corr_ld[bi][idx]) for bi, idx in groups], [None] * len(groups)))
        done = want
        frac = torch.cat(parts, dim=1).view(len(sizes) - 1, n_random, done)
        if done >= 2:  # the pairs' noise in each circuit's mean against the spread between circuits, per size
            noise = (frac.var(-1).mean(-1) / done).sqrt()
            if bool((noise <= torch.clamp(RANDOM_NOISE * frac.mean(-1).std(-1), min=RANDOM_FLOOR)).all()):
                break
    if adv and done < len(picked):  # the pairs not needed count as done
        adv(len(rand) * (len(picked) - done))
    rand_means = frac.mean(-1)
    full_row = torch.full((1, n_random), float(recovered.mean[-1]))  # every circuit of all edges is the graph
    rand_means = torch.cat([rand_means, full_row])
    random_mean = rand_means.mean(-1)
    random_ci = torch.quantile(rand_means, torch.tensor([0.025, 0.975]), dim=-1).T
    empty = float(((torch.cat(empty_ld) - corr) / (clean - corr))[used].mean())
    # full: the last size keeps every edge, the whole graph through the edge-level forward.
    return CircuitResult(graph=graph, ig_steps=steps, edge_index=edge_index, scores=paired(flat.T), sizes=sizes,
                         recovered=recovered, random_mean=random_mean, random_ci=random_ci, n_random=n_random,
                         random_pairs=done, random_pairs_available=len(picked),
                         full=float(top_frac[-1].mean()), empty=empty, threshold=threshold,
                         n_pairs=int(used.sum()), n_excluded=int((~used).sum()))


def _first_used(batches: list[PairBatch], used: list[Tensor], n: int) -> list[tuple[int, Tensor]]:
    """The first ``n`` used pairs: (batch index, indices of its pairs) per batch that holds some."""
    out: list[tuple[int, Tensor]] = []
    for bi, u in enumerate(used):
        idx = u.nonzero()[:, 0][: max(0, n - sum(len(i) for _, i in out))]
        if len(idx):
            out.append((bi, idx))
    return out


def _subset(b: PairBatch, idx: Tensor) -> PairBatch:
    return PairBatch(b.label, b.clean_tokens[idx], b.corrupted_tokens[idx], b.correct[idx], b.incorrect[idx])


def plain_metric(model: Model, b: PairBatch, tokens: Tensor) -> Tensor:
    """The metric from the ordinary forward pass (:meth:`Runner.run_from`), independent of the edge graph."""
    r = model.runner
    T = tokens.shape[1]
    with torch.no_grad():
        final = r.run_from(0, "pre", r.embed_sum(tokens.to(r.device)), final_pos=torch.full((b.n,), T - 1, device=r.device))
    return _metric(model, final, b).cpu()
