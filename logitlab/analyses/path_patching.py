"""Path patching, exact and batched: how much of a head's effect travels through each later reader.

Method (Wang et al. 2022, "Interpretability in the Wild"; edge convention of TransformerLens's
``get_act_patch_direct_path``): the corrupted prompt runs; one edge — a sender head's write into one later
reader's input — carries the clean run's value instead, and everything downstream of that reader is recomputed.
Readers: each later head's query input, each later KV head's key and value inputs, each MLP that reads the
sender (its own layer's MLP in sequential blocks) and the logits (the *direct* path). Each value is a fraction
of the pair's clean − corrupted gap, (patched − corrupted) / (clean − corrupted), averaged over the pairs with
a seeded bootstrap CI; ``node`` patches every path of the sender at once.

Where this differs from TransformerLens (which refuses both cases): on models with post-attention norms the
sender's write is its contribution to the norm's input and each reader sees the norm of its own mixture (exact,
see :mod:`logitlab.model.graph`); with grouped KV heads a key/value reader is the KV head (``L{l}G{k}``), read by
all query heads of its group, so ``k``/``v`` have one column per KV head.

Invariants (tested): one edge equals TransformerLens's direct path patching on models it supports; all paths
of a sender together equal patching the head itself (activation patching of its z); batched = one at a time.

Example:
    >>> res = path_patching(model, tt, senders=[(9, 2), (14, 3)])
    >>> res.v.mean[0]   # (layer, kv_head): L9H2's effect through each later value input
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor

from logitlab.analyses.ablation import AblationResult
from logitlab.analyses.circuit import (
    CIRCUIT_PAIRS, PairBatch, edge_patch_metric, pair_batches, plain_metric, recorded_runs,
)
from logitlab.analyses.heads import HeadAttributionResult
from logitlab.analyses.patching import MIN_GAP
from logitlab.errors import LogitlabError
from logitlab.model.backend import SWEEP, require
from logitlab.model.graph import EdgeGraph
from logitlab.model.load import Model
from logitlab.registry import setting
from logitlab.results.circuit import PathPatching
from logitlab.stats import Paired, paired
from logitlab.task import TokenizedTask

__all__ = ["PathPatchingSettings", "PathPatchingResult", "path_patching", "path_items", "top_senders"]


@dataclass(frozen=True)
class PathPatchingSettings:
    """Path patching's senders and pairs (it runs in every ``logitlab run``: fewer pairs than discovery)."""

    n_senders: int = setting(4, "path patching: how many top heads send")
    path_pairs: int = setting(8, "path patching: clean/corrupted pairs used")

    def __post_init__(self) -> None:
        if min(self.n_senders, self.path_pairs) < 1:
            raise LogitlabError("path patching settings: n_senders and path_pairs must be ≥ 1")


_KINDS = ("q", "k", "v", "mlp", "direct", "node")
#: Pairs path patching runs before its first precision check (with a target).
FIRST_PATH_PAIRS = 4


@dataclass(frozen=True)
class PathPatchingResult:
    """Per sender head: fractions of the gap through each reader; NaN where the reader is not after the sender."""

    senders: list[tuple[int, int]]
    q: Paired  # (sender, layer, head)
    k: Paired  # (sender, layer, kv_head)
    v: Paired  # (sender, layer, kv_head)
    mlp: Paired  # (sender, layer)
    direct: Paired  # (sender,)
    node: Paired  # (sender,)
    kv_groups: int
    n_pairs: int
    n_excluded: int
    precision: dict[str, Any] | None = None  # with a precision target: target, achieved, pairs used/available

    def headline_width(self) -> float | None:
        """The widest 95% CI half-width of the numbers the findings quote: each sender's whole-head value and its
        largest path (None when no pair is used)."""
        widths = []
        for si in range(len(self.senders)):
            best, best_w = None, None
            for kind in ("q", "k", "v", "mlp", "direct"):
                p: Paired = getattr(self, kind)
                m, c = p.mean[si].flatten(), p.ci[si].reshape(-1, 2)
                for j in range(m.numel()):
                    if m[j] == m[j] and (best is None or abs(float(m[j])) > best):
                        best, best_w = abs(float(m[j])), float(c[j, 1] - c[j, 0]) / 2
            node = self.node.ci[si]
            if bool(node.isnan().any()) or best_w is None or best_w != best_w:
                return None
            widths += [float(node[1] - node[0]) / 2, best_w]
        return round(max(widths), 6) if widths else None

    def to_dict(self) -> PathPatching:
        def vals(t: Tensor) -> Any:
            return [None if v != v else float(v) for v in t.tolist()] if t.dim() == 1 else [vals(x) for x in t]

        def cis(t: Tensor) -> Any:
            if t.dim() == 1:
                return None if bool(t.isnan().any()) else [float(v) for v in t.tolist()]
            return [cis(x) for x in t]

        out: dict[str, Any] = {"n_pairs": self.n_pairs, "n_excluded": self.n_excluded,
                               "senders": [f"L{l}H{h}" for l, h in self.senders],
                               "sender_heads": [list(s) for s in self.senders], "kv_groups": self.kv_groups}
        for kind in _KINDS:
            p: Paired = getattr(self, kind)
            out[kind], out[f"{kind}_ci"] = vals(p.mean), cis(p.ci)
        out["precision"] = self.precision
        return cast(PathPatching, out)


def _masks(graph: EdgeGraph, layer: int, head: int) -> list[tuple[str, tuple[int, ...], int, Tensor]]:
    """(kind, index, start layer, patch (R, S)) for every path of sender (layer, head), then the whole node."""
    spec = graph.spec
    s = graph.head_sender(layer, head)
    out = []

    def one(kind: str, idx: tuple[int, ...], start: int, rows: list[int]) -> None:
        p = torch.zeros(graph.n_receivers, graph.n_senders)
        p[rows, s] = 1.0
        out.append((kind, idx, start, p))

    for l in range(layer + 1, spec.n_layers):
        for h in range(spec.n_heads):
            one("q", (l, h), l, [graph.receiver(l, "q", h)])
        for k in range(spec.n_kv_heads):
            one("k", (l, k), l, [graph.receiver(l, "k", k)])
            one("v", (l, k), l, [graph.receiver(l, "v", k)])
    for l in range(layer if not spec.parallel else layer + 1, spec.n_layers):
        one("mlp", (l,), l, [graph.receiver(l, "mlp")])
    one("direct", (), spec.n_layers, [graph.receiver(0, "logits")])
    node = graph.allowed[:, s].nonzero()[:, 0].tolist()
    one("node", (), layer, node)
    return out


def top_senders(heads: HeadAttributionResult, zero: AblationResult | None, n: int) -> list[tuple[int, int]]:
    """Path patching's senders: the heads with the largest |zero-ablation effect| and |direct logit attribution|,
    alternately (duplicates skipped), ``n`` in all; DLA alone without ablation.

    The ablation ranking reads the heads ablated exactly only: a screened ablation
    (:mod:`logitlab.analyses.ablation_screen`) holds estimates for the others, and its exact heads are already the
    ones with the largest estimated effects.
    """
    lists = [[(l, h) for l, h, _ in heads.top(n)]]
    if zero is not None:
        delta = (zero.logit_diff - zero.baseline_logit_diff[None, None]).mean(-1)  # (layer, head)
        exact = zero.exact.flatten().tolist()  # (layer * head,) bool
        ranked = [int(i) for i in delta.abs().flatten().argsort(descending=True) if exact[int(i)]]
        lists.insert(0, [divmod(i, delta.shape[1]) for i in ranked[:n]])
    out: list[tuple[int, int]] = []
    for i in range(n):  # the two top-n lists together hold at least n heads
        for x in lists:
            if i < len(x) and x[i] not in out and len(out) < n:
                out.append(x[i])
    return out


def path_items(model: Model, tt: TokenizedTask, senders: list[tuple[int, int]], max_pairs: int = CIRCUIT_PAIRS) -> int:
    """How many edge-level forward items :func:`path_patching` runs (for a progress bar)."""
    graph = EdgeGraph(model.spec)
    return sum(len(_masks(graph, l, h)) for l, h in senders) * sum(b.n for b in pair_batches(tt, max_pairs))


def path_patching(model: Model, tt: TokenizedTask, senders: list[tuple[int, int]], *,
                  max_pairs: int = CIRCUIT_PAIRS, min_gap: float = MIN_GAP,
                  progress: Callable[[int], None] | None = None, target: float = 0.0,
                  first_pairs: int = FIRST_PATH_PAIRS) -> PathPatchingResult:
    """Every path of every sender head, over the task's pairs (module docstring); batched by the reader's layer.

    ``target`` > 0: the first ``first_pairs`` pairs are patched first, and the others (up to ``max_pairs``) only
    when a quoted number's 95% CI is wider than ``target`` (:meth:`PathPatchingResult.headline_width`).
    """
    require(model, SWEEP, "path patching")
    spec = model.spec
    for l, h in senders:
        if not (0 <= l < spec.n_layers and 0 <= h < spec.n_heads):
            raise LogitlabError(f"no head L{l}H{h} in a model with {spec.n_layers} layers × {spec.n_heads} heads")
    batches = pair_batches(tt, max_pairs)
    if not batches:
        raise LogitlabError("path patching needs clean/corrupted pairs",
                            "give the task a patching: list, or templates with subjects of two classes")
    graph = EdgeGraph(spec)
    plan = [(si, m) for si, (l, h) in enumerate(senders) for m in _masks(graph, l, h)]
    n_available = sum(b.n for b in batches)
    fracs: list[Tensor] = []  # per batch: (item, pair) fractions of the gap
    gaps: list[Tensor] = []
    left, done, rounds = list(batches), 0, 0
    want = n_available if target <= 0 else min(first_pairs, n_available)
    while True:
        stage, left = _split(left, want - done)
        for b in stage:
            clean, corr = plain_metric(model, b, b.clean_tokens), plain_metric(model, b, b.corrupted_tokens)
            gaps.append(clean - corr)
            vals = torch.empty(len(plan), b.n)
            runs = recorded_runs(model, graph, b)
            for start in sorted({m[2] for _, m in plan}):  # one batch per reader layer: earlier ones unchanged
                idx = [i for i, (_, m) in enumerate(plan) if m[2] == start]
                patches = torch.stack([plan[i][1][3] for i in idx])
                vals[idx] = edge_patch_metric(model, graph, b, patches, base="corrupted", start=start,
                                              progress=progress, runs=runs)
            fracs.append((vals - corr) / (clean - corr))
        done, rounds = want, rounds + 1
        res = _result(spec, senders, plan, fracs, gaps, min_gap)
        if target <= 0:
            return res
        width = res.headline_width()
        if (width is not None and width <= target) or done >= n_available:
            break
        # As for activation patching: the pairs this width asks for (it shrinks as 1/√n), at most twice as many.
        grow = 2.0 if width is None or width != width else min(2.0, (width / target) ** 2)
        want = min(n_available, max(done + 1, math.ceil(done * grow)))
    if progress is not None and done < n_available:  # the pairs not needed count as done
        progress(len(plan) * (n_available - done))
    return replace(res, precision={"target": target, "achieved": width, "met": width is not None and width <= target,
                                   "n_pairs": done, "n_available": n_available, "rounds": rounds})


def _split(batches: list[PairBatch], n: int) -> tuple[list[PairBatch], list[PairBatch]]:
    """The first ``n`` pairs of ``batches`` and the rest, in order."""
    head: list[PairBatch] = []
    tail: list[PairBatch] = []
    left = n
    for b in batches:
        if left >= b.n:
            head.append(b)
        elif left <= 0:
            tail.append(b)
        else:
            cut = lambda lo, hi: PairBatch(b.label, b.clean_tokens[lo:hi], b.corrupted_tokens[lo:hi],  # noqa: E731
                                           b.correct[lo:hi], b.incorrect[lo:hi])
            head.append(cut(0, left))
            tail.append(cut(left, b.n))
        left -= b.n
    return head, tail


def _result(spec: Any, senders: list[tuple[int, int]], plan: list[Any], fracs: list[Tensor], gaps: list[Tensor],
            min_gap: float) -> PathPatchingResult:
    """The paired summaries of every pair patched so far."""
    L, H, K, S = spec.n_layers, spec.n_heads, spec.n_kv_heads, len(senders)
    gap = torch.cat(gaps)
    used = gap.abs() >= min_gap  # without a used pair every value is NaN (null in the results), n_pairs 0
    frac = torch.cat(fracs, dim=1)[:, used]  # (item, used pair)
    n = frac.shape[1]
    if not n:
        frac = torch.full((frac.shape[0], 1), float("nan"))
    shapes = {"q": (S, L, H), "k": (S, L, K), "v": (S, L, K), "mlp": (S, L), "direct": (S,), "node": (S,)}
    full = {kind: torch.full((*shape, frac.shape[1]), float("nan")) for kind, shape in shapes.items()}
    for i, (si, (kind, idx, _, _)) in enumerate(plan):
        full[kind][(si, *idx)] = frac[i]
    summaries = {kind: _paired_nan(x) for kind, x in full.items()}
    return PathPatchingResult(senders=list(senders), **summaries, kv_groups=H // K, n_pairs=n,
                              n_excluded=int((~used).sum()))


def _paired_nan(x: Tensor) -> Paired:
    """:func:`paired` over the last dim, NaN (mean, stderr, CI) where the reader is not after the sender."""
    missing = x.isnan().any(-1)
    p = paired(torch.nan_to_num(x))
    nan = torch.tensor(float("nan"))
    return Paired(torch.where(missing, nan, p.mean), torch.where(missing, nan, p.stderr),
                  torch.where(missing[..., None], nan, p.ci))
