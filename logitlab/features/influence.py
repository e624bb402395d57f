"""Influence, pruning thresholds and graph scores of an attribution graph's adjacency, as circuit-tracer computes
them (``prune_graph``, ``compute_graph_scores``): the normalised absolute adjacency Â (each row divided by its sum
of absolute values), influence w·(Â + Â² + …) on weighted logit targets, and the replacement and completeness
scores. Dense adjacencies (n_nodes × n_nodes) and row-limited ones ((rows, n_nodes) with each row's node, for
long prompts) are read in row blocks, never copied whole.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from logitlab.errors import LogitlabError

__all__ = ["normalise", "compute_influence", "rows_per_step", "abs_row_sums", "influence_rows", "threshold",
           "scores_rows", "graph_scores", "top_features"]


def normalise(A: Tensor) -> Tensor:
    """|A| with each row divided by its sum (rows summing to 0 stay 0)."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def compute_influence(A: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """weights · (A + A² + …) for a nilpotent (acyclic) square A (a row-bounded graph: ``graph.influence()``)."""
    if A.shape[0] != A.shape[1]:
        raise LogitlabError(f"compute_influence needs a square adjacency, not {tuple(A.shape)}: this graph has rows "
                            "for only some nodes (max_feature_nodes); use graph.influence()")
    cur = weights.to(A.dtype) @ A
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur @ A
        total += cur
    raise LogitlabError(f"influence did not converge in {max_iter} steps (the graph has a cycle?)")


def rows_per_step(A: Tensor) -> int:
    """Rows per step when an adjacency is read in blocks: a block's temporaries stay near 2²⁴ entries (64 MB in
    float32; at 1,000 tokens a row has ~570k entries)."""
    return max(1, 2 ** 24 // max(int(A.shape[-1]), 1))


def abs_row_sums(A: Tensor) -> Tensor:
    k = rows_per_step(A)
    return torch.cat([A[r:r + k].abs().sum(1) for r in range(0, A.shape[0], k)]) if len(A) else A.sum(1)


def influence_rows(A: Tensor, rows: Tensor, weights: Tensor, rowsum: Tensor | None = None,
                    normalise: bool = True, max_iter: int = 1000) -> Tensor:
    """weights · (Â + Â² + …) for an adjacency holding only the rows of the nodes ``rows`` (every other row zero),
    Â its absolute value with each row divided by its sum (``normalise``; as :func:`normalise`) or A itself.
    Read in blocks of rows: A is never copied."""
    w = weights.to(A.dtype)
    if normalise:
        scale = 1 / (abs_row_sums(A) if rowsum is None else rowsum.to(A.dtype)).clamp(min=1e-10)
    total = torch.zeros_like(w)
    cur = w
    for _ in range(max_iter):
        p = cur[rows] * scale if normalise else cur[rows]  # (n_rows,) weight reaching each row
        live = p.nonzero(as_tuple=True)[0]
        if not len(live):
            return total
        cur = torch.zeros_like(w)
        k = rows_per_step(A)
        for j in range(0, len(live), k):
            r = live[j:j + k]
            cur += p[r] @ (A[r].abs() if normalise else A[r])
        total += cur
    raise LogitlabError(f"influence did not converge in {max_iter} steps (the graph has a cycle?)")


def threshold(scores: Tensor, keep: float) -> Tensor:
    """The score above which the largest scores hold the fraction ``keep`` of their total."""
    s = scores.sort(descending=True).values
    cum = s.cumsum(0) / s.sum().clamp(min=1e-30)
    i = min(int(torch.searchsorted(cum, torch.tensor(keep, dtype=cum.dtype))), len(s) - 1)
    return s[i]


def scores_rows(A: Tensor, rows: Tensor, weights: Tensor, errors: slice, tokens: slice) -> tuple[float, float]:
    """:func:`graph_scores` on a row-bounded adjacency (nodes without a row: no inputs, so no error share)."""
    weights = weights.to(A.dtype)
    rowsum = abs_row_sums(A)
    influence = influence_rows(A, rows, weights, rowsum)
    tok, err = influence[tokens].sum(), influence[errors].sum()
    replacement = tok / (tok + err).clamp(min=1e-30)
    k = rows_per_step(A)
    err_share = torch.cat([A[r:r + k, errors].abs().sum(1) for r in range(0, len(A), k)])
    non_error = torch.ones_like(weights)
    non_error[rows] = 1 - err_share / rowsum.clamp(min=1e-10)
    out = influence + weights
    completeness = (non_error * out).sum() / out.sum().clamp(min=1e-30)
    return float(replacement), float(completeness)


def graph_scores(A: Tensor, weights: Tensor, errors: slice, tokens: slice) -> tuple[float, float]:
    """circuit-tracer's ``compute_graph_scores``: replacement = token influence / (token + error influence);
    completeness = influence-weighted mean over nodes of the share of their (normalised) inputs not from errors."""
    norm, weights = normalise(A), weights.to(A.dtype)
    influence = compute_influence(norm, weights)
    tok, err = influence[tokens].sum(), influence[errors].sum()
    replacement = tok / (tok + err).clamp(min=1e-30)
    non_error = 1 - norm[:, errors].sum(-1)
    out = influence + weights
    completeness = (non_error * out).sum() / out.sum().clamp(min=1e-30)
    return float(replacement), float(completeness)


def top_features(graph: Any, k: int | None = None) -> Tensor:
    """Feature node indices of an attribution graph by influence on the logit-difference target (circuit-tracer's
    normalised absolute adjacency), highest first; the first ``k``.

    With a row budget the attributed features come first, by their influence, then the others by theirs (the
    influence reaching them through the attributed rows: a lower bound, as their own rows are missing)."""
    n_f = graph.n_features
    if graph.rows is None:
        infl = compute_influence(normalise(graph.adjacency), graph.logit_weights("logit_diff"))[:n_f]
        order = infl.argsort(descending=True)
    else:
        infl = graph.influence("logit_diff")[:n_f]
        att = graph.attributed[:n_f]
        parts = [idx[torch.sort(infl[idx], descending=True, stable=True).indices]
                 for idx in (att.nonzero(as_tuple=True)[0], (~att).nonzero(as_tuple=True)[0])]
        order = torch.cat(parts)
    return order if k is None else order[:k]
