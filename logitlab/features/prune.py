"""Pruning an attribution graph by influence (circuit-tracer's node 0.8 / edge 0.98 defaults), its exactness
check, and its ``graph.json`` form."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from logitlab.features.graph import AttributionGraph
from logitlab.features.influence import compute_influence, influence_rows, normalise, rows_per_step, threshold

__all__ = ["PruneResult", "prune_graph", "check_graph", "graph_to_dict"]


class PruneResult(NamedTuple):
    node_mask: Tensor  # (n_nodes,) bool
    edge_mask: Tensor  # the adjacency's shape, bool: (n_nodes, n_nodes) or (n_rows, n_nodes), [target row, source]
    influence: Tensor  # (n_nodes,) each node's influence on the weighted logit targets


def prune_graph(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                on: str | None = None) -> PruneResult:
    """circuit-tracer's ``prune_graph``: keep the nodes holding ``node_threshold`` of the influence on the logit
    targets, then the edges holding ``edge_threshold`` of the edge influence, then drop feature and error nodes
    left without outgoing (features: or incoming) edges, until nothing changes. Tokens and logits stay."""
    if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
        raise ValueError("thresholds must lie in [0, 1]")
    if graph.rows is not None:
        return _prune_rows(graph, node_threshold, edge_threshold, on)
    A, w = graph.adjacency, graph.logit_weights(on)
    n_f, n_fixed = graph.n_features, graph.n_pos + graph.n_logits
    influence = compute_influence(normalise(A), w)
    node_mask = influence >= threshold(influence, node_threshold)
    node_mask[-n_fixed:] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalise(pruned)
    edge_scores = norm * (compute_influence(norm, w) + w)[:, None]
    edge_mask = edge_scores >= threshold(edge_scores.flatten(), edge_threshold)
    old = None
    while old is None or not torch.equal(old, node_mask):
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-n_fixed] &= edge_mask[:, :-n_fixed].any(0)  # features and errors need an outgoing edge
        node_mask[:n_f] &= edge_mask[:n_f].any(1)  # features need an incoming edge
    return PruneResult(node_mask, edge_mask, influence)


def _prune_rows(graph: AttributionGraph, node_threshold: float, edge_threshold: float,
                on: str | None) -> PruneResult:
    """:func:`prune_graph` on a row-bounded graph: the same steps, the edge steps on the kept rows × kept nodes
    only (the pruned adjacency is zero elsewhere), so nothing is n_nodes² and nothing copies the adjacency.
    A feature without a row has no incoming edges to lose: only attributed features need one."""
    A, rows, w = graph.adjacency, graph.rows, graph.logit_weights(on)
    assert rows is not None
    n, n_f, n_fixed = graph.n_nodes, graph.n_features, graph.n_pos + graph.n_logits
    influence = influence_rows(A, rows, w)
    node_mask = influence >= threshold(influence, node_threshold)
    node_mask[-n_fixed:] = True
    keep = node_mask.nonzero(as_tuple=True)[0]  # (k,) kept nodes
    at = torch.full((n,), -1, dtype=torch.long)
    at[keep] = torch.arange(len(keep))  # node → its column in the kept block
    krows = node_mask[rows].nonzero(as_tuple=True)[0]  # adjacency rows of kept nodes
    step = rows_per_step(A)
    S = torch.cat([A[krows[j:j + step]][:, keep] for j in range(0, len(krows), step)])  # (r, k)
    norm = normalise(S)
    row_col = at[rows[krows]]  # (r,) each kept row's node, as a kept column
    w_k = w[keep]
    edge_scores = norm * (influence_rows(norm, row_col, w_k, normalise=False) + w_k)[row_col, None]
    em = edge_scores >= threshold(edge_scores.flatten(), edge_threshold)  # (r, k)
    alive = torch.ones(len(keep), dtype=torch.bool)
    needs_out = keep < n - n_fixed  # features and errors need an outgoing edge
    row_is_feature = rows[krows] < n_f  # attributed features need an incoming edge
    old = None
    while old is None or not torch.equal(old, alive):
        old = alive.clone()
        em[~alive[row_col]] = False
        em[:, ~alive] = False
        alive[needs_out] &= em[:, needs_out].any(0)
        alive[row_col[row_is_feature]] &= em[row_is_feature].any(1)
    node_mask[keep] = alive
    edge_mask = torch.zeros(A.shape, dtype=torch.bool)
    step = rows_per_step(em)
    for j in range(0, len(krows), step):
        edge_mask[krows[j:j + step, None], keep[None]] = em[j:j + step]
    return PruneResult(node_mask, edge_mask, influence)


def check_graph(graph: AttributionGraph) -> dict[str, float]:
    """The exactness invariants' residuals: max |Σ in-edges + bias − value| / max |value|, over the attributed
    features and the logits."""
    A, rows = graph.adjacency, graph.row_nodes
    k = rows_per_step(A)
    total = torch.cat([A[r:r + k].double().sum(1) for r in range(0, len(A), k)]) + graph.bias[rows]
    out = {}
    for name, sel in (("features", rows < graph.n_features), ("logits", rows >= graph.n_nodes - graph.n_logits)):
        want = graph.values[rows[sel]]
        out[name] = float((total[sel] - want).abs().max() / want.abs().max().clamp(min=1e-12)) if len(want) else 0.0
    return out


def graph_to_dict(graph: AttributionGraph, pruned: PruneResult, on: str | None = None,
                  model: str | None = None) -> dict[str, Any]:
    """``graph.json``: every node (kept or not), the kept edges, scores and the invariants' residuals (docs/features.md)."""
    on = on or ("logit_diff" if graph.has_logit_diff else "logits")
    n_f, L, T = graph.n_features, graph.n_layers, graph.n_pos
    labels = graph.node_labels()
    inf = pruned.influence.tolist()
    keep = pruned.node_mask.tolist()
    attributed = graph.attributed.tolist()
    nodes: list[dict[str, Any]] = []
    for i, (l, p, f) in enumerate(graph.features.tolist()):
        nodes.append({"id": i, "kind": "feature", "layer": l, "pos": p, "feature": f,
                      "activation": float(graph.activations[i]), "value": float(graph.values[i]),
                      "bias": float(graph.bias[i]), "influence": inf[i], "kept": keep[i], "label": labels[i],
                      "attributed": attributed[i]})
    for l in range(L):
        for p in range(T):
            i = n_f + l * T + p
            nodes.append({"id": i, "kind": "error", "layer": l, "pos": p, "norm": float(graph.error_norms[l, p]),
                          "influence": inf[i], "kept": keep[i], "label": labels[i]})
    for p in range(T):
        i = graph.token_slice.start + p
        nodes.append({"id": i, "kind": "token", "layer": -1, "pos": p, "token": graph.tokens[p],
                      "text": graph.token_strs[p], "influence": inf[i], "kept": keep[i], "label": labels[i]})
    for j in range(graph.n_logits):
        i = graph.n_nodes - graph.n_logits + j
        nodes.append({"id": i, "kind": "logit", "layer": L, "pos": T - 1, "token": graph.logit_tokens[j],
                      "text": graph.logit_labels[j], "prob": float(graph.logit_probs[j]),
                      "value": float(graph.values[i]), "bias": float(graph.bias[i]), "kept": True, "label": labels[i],
                      "attributed": True})
    r_idx, s_idx = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[r_idx, s_idx].tolist()
    t_idx = graph.row_nodes[r_idx]
    edges = [[int(s), int(t), w] for s, t, w in zip(s_idx.tolist(), t_idx.tolist(), weights)]
    replacement, completeness = graph.scores(on)
    return {
        "format": "logitlab-graph", "version": 1, "model": model, "prompt": graph.prompt, "tokens": graph.tokens,
        "token_strs": graph.token_strs, "n_layers": L, "influence_on": on,
        "scores": {"replacement": replacement, "completeness": completeness},
        "check": check_graph(graph),
        "counts": {"features": n_f, "kept_features": int(pruned.node_mask[:n_f].sum()), "nodes": graph.n_nodes,
                   "kept_nodes": int(pruned.node_mask.sum()), "kept_edges": len(edges),
                   "attributed_features": int(graph.attributed[:n_f].sum())},
        "settings": graph.meta, "nodes": nodes, "edges": edges,
    }
