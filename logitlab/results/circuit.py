"""The types of results.json's circuit sections: attribution patching, path patching and the EAP-IG circuit.

Written by :mod:`logitlab.analyses.atp`, :mod:`logitlab.analyses.path_patching` and
:mod:`logitlab.analyses.circuit`; documented like the other sections (field docstrings → docs/results.md).
"""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict

from logitlab.results._base import MaybeCube, MaybeMatrix, Matrix, Pair, section

__all__ = ["AtPMiss", "AtPKind", "AttributionPatching", "PathPatching", "CircuitEdge", "Faithfulness",
           "CircuitChoice", "Circuit"]


@section
class AtPMiss(TypedDict):
    """One of the components where AtP and exact patching differ most."""

    label: str
    """the component, e.g. `L9H2` or `L3 pos 5 ' is'`"""
    atp: float
    """AtP's estimate (fraction of the gap)"""
    exact: float
    """exact patching's value (fraction of the gap)"""


@section
class AtPKind(TypedDict):
    """AtP for one kind of component, next to exact patching of the same pairs."""

    pairs: str
    """which pairs the means are over: `all` (heads), `reference` or `pooled`"""
    tokens: NotRequired[list[str]]
    """position labels (position kinds only)"""
    n_pairs: int
    """pairs in the means"""
    atp: Matrix
    """[L][H or pos] mean AtP estimate, as a fraction of each pair's clean − corrupted gap ([] without a used pair)"""
    exact: NotRequired[MaybeMatrix]
    """[L][H or pos] exact activation patching of the same pairs, same units; null where activation patching's
    screen left the cell to this estimate (the comparison statistics then use the exact cells only)"""
    pearson: NotRequired[float | None]
    """Pearson r of AtP against exact over the components (null if undefined)"""
    spearman: NotRequired[float | None]
    """Spearman r (Pearson of average ranks; null if undefined)"""
    top_k: NotRequired[int]
    """k of the top-k overlap: min(10, number of components)"""
    top_k_overlap: NotRequired[float | None]
    """share of the top-k components by |exact| that are also in AtP's top k"""
    worst: NotRequired[list[AtPMiss]]
    """the 5 components with the largest |AtP − exact|"""


@section
class AttributionPatching(TypedDict):
    """Attribution patching (AtP): (a_clean − a_corr) · ∂m/∂a at the corrupted run, for every component at once."""

    method: Literal["atp"]
    """the estimate (AtP*'s QK fix and GradDrop are not applied)"""
    n_pairs: int
    """pairs whose gap is at least `min_gap`, over every set"""
    n_excluded: int
    """pairs below the gap"""
    min_gap: float
    """the gap threshold in logits"""
    heads: AtPKind
    """each head's z (all positions)"""
    resid: AtPKind
    """resid_pre per layer × position"""
    attn: AtPKind
    """attention output per layer × position"""
    mlp: AtPKind
    """MLP output per layer × position"""


@section
class PathPatching(TypedDict):
    """Exact path patching from the top heads: fraction of the clean − corrupted gap restored when only one path of the
    sender carries the clean value into the corrupted run (mean over pairs; null where the reader is not after the sender)."""

    n_pairs: int
    """pairs whose gap is at least 1 logit"""
    precision: NotRequired[dict[str, Any] | None]
    """with a precision target (`config.patching_target`): `target`, `achieved` (the widest 95% CI half-width of
    each sender's whole-head value and largest path), `met`, `n_pairs` patched, `n_available` (`path_pairs`),
    `rounds`; null: every pair patched"""
    n_excluded: int
    """pairs below the gap"""
    senders: list[str]
    """the sender heads, e.g. `L9H2` (top heads by zero-ablation and by direct logit attribution)"""
    sender_heads: list[list[int]]
    """[S] (layer, head) of each sender"""
    kv_groups: int
    """query heads per KV head (above 1: `k`/`v` have one column per KV head, read by its whole group)"""
    q: MaybeCube
    """[S][L][H] through each later head's query input"""
    q_ci: list[list[list[Pair | None]]]
    """[S][L][H] 95% bootstrap CI"""
    k: MaybeCube
    """[S][L][K] through each later KV head's key input"""
    k_ci: list[list[list[Pair | None]]]
    """[S][L][K] 95% bootstrap CI"""
    v: MaybeCube
    """[S][L][K] through each later KV head's value input"""
    v_ci: list[list[list[Pair | None]]]
    """[S][L][K] 95% bootstrap CI"""
    mlp: MaybeMatrix
    """[S][L] through each MLP that reads the sender"""
    mlp_ci: list[list[Pair | None]]
    """[S][L] 95% bootstrap CI"""
    direct: list[float | None]
    """[S] the direct path: the sender's write into the logits' input only"""
    direct_ci: list[Pair | None]
    """[S] 95% bootstrap CI"""
    node: list[float | None]
    """[S] every path at once (= activation patching of the head's z)"""
    node_ci: list[Pair | None]
    """[S] 95% bootstrap CI"""


@section
class CircuitEdge(TypedDict):
    """One scored edge of the graph."""

    sender: str
    """`input`, `L{l}H{h}` or `M{l}`"""
    receiver: str
    """`L{l}H{h}`, `L{l}G{k}` (a grouped KV head), `M{l}` or `logits`"""
    input: Literal["q", "k", "v", "mlp", "logits"]
    """which input of the receiver"""
    score: float
    """EAP-IG score, mean over pairs (logit-difference units; the input's edges sum to the gap as `ig_steps` grows)"""
    score_ci: Pair
    """95% bootstrap CI over pairs"""


@section
class Faithfulness(TypedDict):
    """Recovered fraction of the gap when only the top-n edges keep the clean values (the others corrupted)."""

    n_edges: list[int]
    """circuit sizes (log grid; the last is the whole graph)"""
    recovered: list[float]
    """mean over pairs of (m − m_corr) / (m_clean − m_corr), per size"""
    recovered_ci: list[Pair]
    """95% bootstrap CI over pairs, per size"""
    random_mean: list[float]
    """mean recovery of random circuits of each size"""
    random_ci: list[Pair]
    """2.5% and 97.5% quantiles of the random circuits' mean recovery"""
    n_random: int
    """random circuits per size"""
    random_pairs: int
    """pairs the random circuits ran on: the first used ones, until more would not move the band (pair noise in a
    circuit's mean ≤ 0.25 × the spread between circuits, or ≤ 0.01)"""
    random_pairs_available: int
    """pairs the random circuits could have run on (at most 8)"""


@section
class CircuitChoice(TypedDict):
    """The circuit: the smallest size whose mean recovery reaches the threshold (nulls if none does)."""

    n_edges: int | None
    """its number of edges"""
    threshold: float
    """the recovery it must reach"""
    recovered: float | None
    """its mean recovery"""
    recovered_ci: Pair | None
    """its 95% CI over pairs"""
    random_mean: float | None
    """random circuits of its size: mean recovery"""
    random_ci: Pair | None
    """random circuits of its size: 2.5% and 97.5% quantiles"""


@section
class Circuit(TypedDict):
    """EAP-IG circuit discovery over the task's clean/corrupted pairs, with its faithfulness curve."""

    method: Literal["eap-ig"]
    """edge attribution patching with integrated gradients over the input embedding"""
    ig_steps: int
    """integration steps"""
    n_pairs: int
    """pairs whose gap is at least 1 logit"""
    n_excluded: int
    """pairs below the gap"""
    n_edges_total: int
    """edges in the graph"""
    nodes: list[str]
    """`input`, every head `L{l}H{h}`, every MLP `M{l}`, `logits`"""
    edges: list[CircuitEdge]
    """the top edges by |score| (at most 1,000, or the chosen circuit's size if larger)"""
    faithfulness: Faithfulness
    chosen: CircuitChoice
    full: float
    """recovery of the whole graph (1 up to rounding: a check of the edge-level forward)"""
    empty: float
    """recovery of the empty graph (0 up to rounding)"""
