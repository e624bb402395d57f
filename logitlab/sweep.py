"""The sweep engine: many interventions per forward pass, started where they act, scoring only the answers.

An intervention at layer ``l`` cannot change layers ``< l``, so each sweep item enters the forward pass at its
own point (``pre``/``mid``/``post`` of layer ``l``) with the clean (or corrupted) run's residual stream there,
edited. Items are stacked on the batch dimension and the batch grows as it goes down the layers: items that
enter at layer ``l`` join the ones already running there, so a whole sweep (every head of every layer, or
every layer × position) is a few large matrix products per layer instead of many small ones. The last layer
computes only each item's final position. Only the answer logits are computed, plus the log-partition
function where the loss is needed, in one blocked pass over the vocabulary for all items at the end. Items are
processed in memory-sized chunks. What runs per layer is :meth:`Runner.layer`, the same block code as every
other path; this module only schedules which items join where. Results come back keyed by each entry's
``key`` (what the entry is, e.g. ``("resid_pre", layer, position)``). Tests check the engine against one
TransformerLens hooked forward per intervention.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.model.device import available_memory
from logitlab.model.runner import Runner

__all__ = ["Entry", "SweepResult", "SweepSettings", "SweepStats", "run_sweep", "sweep_flops", "available_memory",
           "auto_chunk"]

_STAGE_ORDER = {"pre": 0, "mid": 1}


@dataclass
class SweepStats:
    """Work done by sweeps (mutable accumulator): items, floating-point operations, seconds."""

    items: int = 0
    flops: float = 0.0
    seconds: float = 0.0

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds if self.seconds > 0 else 0.0


class SweepResult(NamedTuple):
    """One entry's scores, per item: logit difference (n,) and −log p(correct) (n,) if the loss was asked for."""

    logit_diff: Tensor
    loss: Tensor | None


@dataclass(frozen=True)
class SweepSettings:
    """How sweeps are chunked: ``max_memory`` in bytes (None = half of the available memory)."""

    max_memory: int | None = None
    chunk_size: int | None = None  # items per chunk; overrides the memory estimate
    progress: Callable[[int], None] | None = None  # called with the number of items finished
    stats: SweepStats | None = None  # if given, sweeps add their work to it


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A group of sweep items that enter the forward pass at one point.

    ``key`` names the group (unique within a sweep; results are returned under it). ``make(idx)`` returns the residual streams (len(idx), pos, d_model) of items ``idx`` (indices into this
    group) at the entry point: ``stage`` ``"pre"`` (resid_pre of ``layer``: the block runs next), ``"mid"``
    (resid_mid of ``layer``: its MLP runs next; sequential blocks only) or ``"post"`` (resid_post of ``layer``).
    ``final_pos``, ``correct`` (n,) and ``incorrect`` (n, k) say where and what each item is scored on.

    Items whose first ``prefix`` positions cannot differ from a known run (patching at position p leaves
    positions < p as they were) skip them: ``prefix_kv(layer, idx)`` gives those positions' keys and values
    (n, prefix, K, d_head) at every layer after the entry point (see :meth:`Runner.keys_values`).
    """

    key: Hashable
    layer: int
    stage: str
    make: Callable[[Tensor], Tensor]
    final_pos: Tensor
    correct: Tensor
    incorrect: Tensor
    prefix: int = 0
    prefix_kv: Callable[[int, Tensor], tuple[Tensor, Tensor]] | None = None

    @property
    def n(self) -> int:
        return len(self.final_pos)


def sweep_flops(runner: Runner, layer: int, stage: str, seq_len: int, n_incorrect: int, with_loss: bool,
                prefix: int = 0) -> float:
    """FLOPs of one sweep item: the remaining blocks (counted on :meth:`Runner.layer` itself), then the answers.

    Positions before ``prefix`` are not computed (their keys and values come from a cache); the last block
    computes the final query only.
    """
    L, D = runner.spec.n_layers, runner.spec.d_model
    start = layer + 1 if stage == "post" else layer
    total = 0.0
    if stage == "mid":  # the rest of this layer: its MLP
        total += runner.layer_flops("mid", seq_len, prefix, last_only=layer == L - 1, layer=layer)
        start = layer + 1
    for l in range(start, L):
        total += runner.layer_flops("pre", seq_len, prefix, last_only=l == L - 1, layer=l)
    total += 2 * D * (1 + n_incorrect) + (2 * D * runner.spec.d_vocab if with_loss else 0)
    return total


#: Rows (items × positions that run) per chunk on CPU beyond which larger chunks stop helping: the matrix products
#: are already at full speed and bigger activations only fall out of the cache. On GPUs the memory budget decides.
CPU_CHUNK_ROWS = 1024


def auto_chunk(runner: Runner, seq_len: int, settings: SweepSettings, prefix: int = 0) -> int:
    """Items per chunk so that one chunk's activations fit the memory budget: ``max_memory``, else half of what
    is free on the runner's device now (on CUDA the device's free memory, not the host's).

    Items skipping their first ``prefix`` positions run ``seq_len − prefix`` rows each and attend to the skipped
    positions' keys and values (gathered per item, then joined with their own): the chunk counts those rows, so
    that items behind a long shared context still fill the matrix products.
    """
    if settings.chunk_size:
        return max(1, settings.chunk_size)
    s = runner.spec
    d_mlp = runner.w.W_in.shape[-1]
    elem = torch.finfo(runner.dtype).bits // 8
    wide = max(elem, 4)  # norms and the attention softmax run in float32 whatever the model's dtype
    mlp = 3 * d_mlp  # MLP hidden units per token (x3 for gate/up/activation)
    if s.moe is not None:  # a sparse block computes every expert: E hidden layers and E outputs per token
        mlp = max(mlp, s.moe.n_experts * (3 * s.moe.d_expert + s.d_model))
    # Live tensors per item in one layer: residual copies, q/k/v, the MLP's hidden units in the model's dtype; a
    # norm's input and output, scores and pattern (and a router's probabilities) in float32; doubled for temporaries.
    rows = max(1, seq_len - prefix)
    per_item = (elem * rows * (6 * s.d_model + 3 * s.n_heads * s.d_head + mlp)
                + elem * 4 * seq_len * s.n_kv_heads * s.d_head  # keys and values of every position, twice
                + wide * (2 * rows * s.d_model + 2 * s.n_heads * rows * seq_len
                          + (2 * rows * s.moe.n_experts if s.moe is not None else 0))) * 2
    budget = settings.max_memory if settings.max_memory else available_memory(runner.device) // 2
    if budget < per_item:
        raise LogitlabError(
            f"a single sweep item needs about {per_item / 2**20:.1f} MiB but the memory budget is "
            f"{budget / 2**20:.1f} MiB", "free memory or raise --max-memory")
    cap = 4096 if runner.device.type == "cuda" else max(1, CPU_CHUNK_ROWS // rows)
    return int(min(cap, budget // per_item))


def _entry_point(e: Entry, n_layers: int) -> tuple[int, int]:
    """Sort key of an entry point: (layer, 0 for pre / 1 for mid); ``post`` of l is ``pre`` of l + 1."""
    if e.stage == "post":
        return (e.layer + 1, 0)
    return (e.layer, _STAGE_ORDER[e.stage])


def _run_chunk(runner: Runner, parts: list[tuple[Entry, Tensor, tuple[int, int]]],
               advance: Callable[[float], None]) -> Tensor:
    """Run one chunk of items (``parts``: entry, its item indices, its entry point; in entry order).

    Every part shares one ``prefix``. Returns each item's final residual stream at its final position,
    (n, d_model), in the order of ``parts``.
    """
    L = runner.spec.n_layers
    dev = runner.device
    P = parts[0][0].prefix
    # Each item's unit of progress is spread over the layers it runs (at least one).
    share = [1.0 / max(1, L - pt[0]) for _, _, pt in parts]

    def join(layer: int, point: str) -> tuple[Tensor, Tensor] | None:
        # The items entering at (layer, point), positions ≥ P, in part order (the batch grows in that order).
        at = (layer, _STAGE_ORDER[point])
        new = [(e.make(idx)[:, P:], e.final_pos[idx].to(dev)) for e, idx, pt in parts if pt == at]
        if not new:
            return None
        return torch.cat([x for x, _ in new]), torch.cat([f for _, f in new])

    def prefix_kv(layer: int) -> tuple[Tensor, Tensor]:
        # Keys and values of the skipped positions for the items running attention at ``layer`` (in order).
        kvs = [e.prefix_kv(layer, idx) for e, idx, pt in parts if pt <= (layer, 0)]  # type: ignore[misc]
        return torch.cat([k for k, _ in kvs]), torch.cat([v for _, v in kvs])

    x: Tensor | None = None  # (active items, pos ≥ P, d_model), or (active, 1, d_model) after the last layer
    fp: Tensor | None = None
    for layer in range(parts[0][2][0], L):
        x, fp = runner.layer(layer, x, fp, last_only=layer == L - 1, prefix=P, prefix_kv=prefix_kv if P else None,
                             join=join)
        advance(sum(len(idx) * sh for (_, idx, pt), sh in zip(parts, share) if pt[0] <= layer))
    # Items entering after the last layer: the final residual stream at their final position is their input.
    late = join(L, "pre")
    if late is not None:
        tail = late[0][torch.arange(late[0].shape[0], device=dev), late[1] - P]  # (n, D)
        advance(float(tail.shape[0]))
        return tail if x is None else torch.cat([x[:, 0], tail])
    assert x is not None
    return x[:, 0]


def _vocab_share(runner: Runner, e: Entry, seq_len: int) -> float:
    """Rough share of the vocabulary pass in one item's work: 2·d_model·vocab against 2·weights·positions per block."""
    L = runner.spec.n_layers
    per_block = sum(w[0].numel() for w in (runner._W_qkv, runner._W_O, runner._W_in, runner._W_gate, runner._W_out)
                    if w is not None)
    blocks = L - (e.layer + 1 if e.stage == "post" else e.layer)
    vocab = runner.spec.d_model * runner.spec.d_vocab
    return vocab / (vocab + per_block * max(0, blocks) * (seq_len - e.prefix))


class _WholeItems:
    """Turns fractional progress (an item's share of each layer) into whole items for the caller's callback."""

    def __init__(self, callback: Callable[[float], None] | None) -> None:
        self.callback, self.done, self.reported = callback, 0.0, 0

    def __call__(self, n: float) -> None:
        self.done += n
        whole = int(self.done + 1e-6)
        if whole > self.reported and self.callback is not None:
            self.callback(whole - self.reported)
        self.reported = max(self.reported, whole)

    def finish(self, total: int) -> None:
        if total > self.reported and self.callback is not None:
            self.callback(total - self.reported)
        self.reported = total


def run_sweep(runner: Runner, entries: Sequence[Entry], with_loss: bool,
              settings: SweepSettings) -> dict[Hashable, SweepResult]:
    """Score every item of every entry: logit difference and, if ``with_loss``, −log p(correct).

    Items from all entries share forward passes (chunked to the memory budget); the answer metrics are
    computed once for all items at the end. Returns each entry's :class:`SweepResult` under its ``key``.
    """
    L = runner.spec.n_layers
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"two sweep entries share the key {dup!r}")
    for e in entries:
        runner.check_entry(e.layer, e.stage)
        if e.prefix and e.n and (e.prefix_kv is None or int(e.final_pos.min()) < e.prefix):
            raise ValueError("an entry with a prefix needs prefix_kv and final positions after the prefix")
    # Chunks never mix prefixes; within one prefix, items are in entry order (the batch grows down the layers).
    order = sorted(range(len(entries)), key=lambda i: (entries[i].prefix, _entry_point(entries[i], L)))
    entries_sorted = [entries[i] for i in order]
    points = [_entry_point(e, L) for e in entries_sorted]
    n_total = sum(e.n for e in entries_sorted)
    if n_total == 0:
        return {e.key: SweepResult(torch.zeros(0), torch.zeros(0) if with_loss else None) for e in entries}
    t0 = time.perf_counter()
    advance = _WholeItems(settings.progress)
    first = next(e for e in entries_sorted if e.n)
    seq_len = int(first.make(torch.arange(1, device=runner.device)).shape[1])
    chunks = {p: auto_chunk(runner, seq_len, settings, p) for p in {e.prefix for e in entries_sorted if e.n}}
    # Layers take (1 − f) of each item's progress and the vocabulary pass f, by their rough share of the work
    # (for the progress bar only: the exact count, sweep_flops, runs the block on meta tensors and its first
    # call costs most of a second).
    f = _vocab_share(runner, first, seq_len) if with_loss else 0.0
    finals = []
    with torch.no_grad():
        queue = [(e, pt, 0) for e, pt in zip(entries_sorted, points) if e.n]
        while queue:
            parts, room = [], chunks[queue[0][0].prefix]
            while queue and room and (not parts or queue[0][0].prefix == parts[0][0].prefix):
                e, pt, start = queue[0]
                stop = min(e.n, start + room)
                parts.append((e, torch.arange(start, stop, device=runner.device), pt))
                room -= stop - start
                if stop == e.n:
                    queue.pop(0)
                else:
                    queue[0] = (e, pt, stop)
            finals.append(_run_chunk(runner, parts, lambda n: advance(n * (1 - f))))
        final = torch.cat(finals)
        cat = lambda name: torch.cat([getattr(e, name).to(runner.device) for e in entries_sorted])  # noqa: E731
        diff, loss = runner.answer_metrics(final, cat("correct"), cat("incorrect"), with_loss,
                                           progress=(lambda n: advance(n * f)) if with_loss else None)
    advance.finish(n_total)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    if settings.stats is not None:
        st = settings.stats
        st.items += n_total
        st.seconds += time.perf_counter() - t0
        st.flops += sum(e.n * sweep_flops(runner, e.layer, e.stage, seq_len, int(e.incorrect.shape[-1]), with_loss,
                                          e.prefix)
                        for e in entries_sorted)
    out: dict[Hashable, SweepResult] = {}
    start = 0
    for e in entries_sorted:
        sl = slice(start, start + e.n)
        out[e.key] = SweepResult(diff[sl].float(), None if loss is None else loss[sl].float())
        start += e.n
    return {k: out[k] for k in keys}  # in the caller's order
