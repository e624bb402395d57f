"""The sweep engine: many interventions per forward pass, started where they act, scoring only the answers.

An intervention at layer ``l`` cannot change layers ``< l``, so each sweep item enters the forward pass at its
own point (``pre``/``mid``/``post`` of layer ``l``) with the clean (or corrupted) run's residual stream there,
edited. Items are stacked on the batch dimension and the batch grows as it goes down the layers: items that
enter at layer ``l`` join the ones already running there, so a whole sweep (every head of every layer, or
every layer × position) is a few large matrix products per layer instead of many small ones. The last layer
computes only each item's final position. Only the answer logits are computed, plus the log-partition
function where the loss is needed, in one blocked pass over the vocabulary for all items at the end. Items are
processed in memory-sized chunks. Tests check the engine against one TransformerLens hooked forward per
intervention.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.model.runner import Runner

__all__ = ["Entry", "SweepSettings", "SweepStats", "run_sweep", "sweep_flops", "available_memory", "auto_chunk"]

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


@dataclass(frozen=True)
class SweepSettings:
    """How sweeps are chunked: ``max_memory`` in bytes (None = half of the available memory)."""

    max_memory: int | None = None
    chunk_size: int | None = None  # items per chunk; overrides the memory estimate
    progress: Callable[[int], None] | None = None  # called with the number of items finished
    stats: SweepStats | None = None  # if given, sweeps add their work to it


@dataclass(frozen=True)
class Entry:
    """A group of sweep items that enter the forward pass at one point.

    ``make(idx)`` returns the residual streams (len(idx), pos, d_model) of items ``idx`` (indices into this
    group) at the entry point: ``stage`` ``"pre"`` (resid_pre of ``layer``: the block runs next), ``"mid"``
    (resid_mid of ``layer``: its MLP runs next; sequential blocks only) or ``"post"`` (resid_post of ``layer``).
    ``final_pos``, ``correct`` (n,) and ``incorrect`` (n, k) say where and what each item is scored on.

    Items whose first ``prefix`` positions cannot differ from a known run (patching at position p leaves
    positions < p as they were) skip them: ``prefix_kv(layer, idx)`` gives those positions' keys and values
    (n, prefix, K, d_head) at every layer after the entry point (see :meth:`Runner.keys_values`).
    """

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
    """Multiply-add FLOPs (×2) of one sweep item: the remaining layers, then the answer metrics.

    Positions before ``prefix`` are not computed (their keys and values come from a cache).
    """
    s, T = runner.spec, seq_len
    L, D, dh = s.n_layers, s.d_model, s.d_head
    n = T - prefix  # positions computed
    d_mlp = runner.w.W_in.shape[-1]
    mlp = 2 * D * d_mlp * (3 if runner.w.W_gate is not None else 2)  # per token
    qo = 2 * D * s.n_heads * dh * 2  # query and output projections, per token
    kv = 2 * D * 2 * s.n_kv_heads * dh  # key and value projections, per token
    mix = 2 * 2 * s.n_heads * T * dh  # scores and weighted values, per query (every key, as computed)
    start = layer if stage == "pre" else layer + 1
    n_full = max(0, L - 1 - start)  # blocks run at every position; the last block runs one query
    total = n_full * n * (qo + kv + mix + mlp)
    if start <= L - 1:
        total += n * kv + qo + mix + mlp
    if stage == "mid":
        total += mlp * (1 if layer == L - 1 else n)  # (parallel blocks never enter at "mid")
    total += 2 * D * (1 + n_incorrect) + (2 * D * s.d_vocab if with_loss else 0)
    return float(total)


def available_memory(device: torch.device) -> int:
    """Bytes free for a sweep on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)


#: Rows (items × positions) per chunk on CPU beyond which larger chunks stop helping: the matrix products are
#: already at full speed and bigger activations only fall out of the cache. On GPUs the memory budget decides.
CPU_CHUNK_ROWS = 1024


def auto_chunk(runner: Runner, seq_len: int, settings: SweepSettings) -> int:
    """Items per chunk so that one chunk's activations fit the memory budget."""
    if settings.chunk_size:
        return max(1, settings.chunk_size)
    s = runner.spec
    d_mlp = runner.w.W_in.shape[-1]
    elem = torch.finfo(runner.dtype).bits // 8
    # Live tensors per item in one layer: residual copies, q/k/v, scores and pattern, MLP hidden (x3 for
    # gate/up/activation); doubled for temporaries.
    per_item = elem * (seq_len * (8 * s.d_model + 3 * s.n_heads * s.d_head + 3 * d_mlp)
                       + 2 * s.n_heads * seq_len * seq_len) * 2
    budget = settings.max_memory if settings.max_memory else available_memory(runner.device) // 2
    if budget < per_item:
        raise LogitlabError(
            f"a single sweep item needs about {per_item / 2**20:.1f} MiB but the memory budget is "
            f"{budget / 2**20:.1f} MiB", "free memory or raise --max-memory")
    cap = 4096 if runner.device.type == "cuda" else max(1, CPU_CHUNK_ROWS // seq_len)
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
    parallel = runner.spec.parallel
    dev = runner.device
    P = parts[0][0].prefix
    x: Tensor | None = None  # (active items, pos ≥ P, d_model), or (active, 1, d_model) within the last layer
    fp = torch.zeros(0, dtype=torch.long, device=dev)
    # Each item's unit of progress is spread over the layers it runs (at least one).
    share = [1.0 / max(1, L - pt[0]) for _, _, pt in parts]

    def join(x: Tensor | None, fp: Tensor, point: tuple[int, int], last: bool) -> tuple[Tensor | None, Tensor]:
        for e, idx, pt in parts:
            if pt != point:
                continue
            new = e.make(idx)[:, P:]
            efp = e.final_pos[idx].to(dev)
            if last:  # inside the last layer only the final position is carried
                new = new[torch.arange(len(idx), device=dev), efp - P][:, None]
            x = new if x is None else torch.cat([x, new])
            fp = torch.cat([fp, efp])
        return x, fp

    def prefix_kv(layer: int) -> tuple[Tensor, Tensor] | None:
        # Keys and values of the skipped positions for the items running attention at ``layer`` (in order).
        if not P:
            return None
        kvs = [e.prefix_kv(layer, idx) for e, idx, pt in parts if pt <= (layer, 0)]  # type: ignore[misc]
        return torch.cat([k for k, _ in kvs]), torch.cat([v for _, v in kvs])

    first = parts[0][2][0]
    for layer in range(first, L):
        last = layer == L - 1
        x, fp = join(x, fp, (layer, 0), False)
        if x is not None:
            z, _ = runner.attention(layer, x, fp if last else None, need_pattern=False, prefix_kv=prefix_kv(layer))
            attn_out, _ = runner.post_attention(layer, runner.heads_to_attn_pre(layer, z))
            if last:
                x = x[torch.arange(x.shape[0], device=dev), fp - P][:, None]
            if parallel:
                x = x + attn_out + runner.mlp(layer, x)
            else:
                x = x + attn_out
        if not parallel:
            x, fp = join(x, fp, (layer, 1), last)
            if x is not None:
                x = x + runner.mlp(layer, x)
        advance(sum(len(idx) * sh for (_, idx, pt), sh in zip(parts, share) if pt[0] <= layer))
    # Items entering after the last layer: the final residual stream is their input.
    x, fp = join(x, fp, (L, 0), True)
    rest = sum(len(idx) for _, idx, pt in parts if pt[0] >= L)
    if rest:
        advance(float(rest))
    assert x is not None
    return x[:, 0]


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
              settings: SweepSettings) -> list[tuple[Tensor, Tensor | None]]:
    """Score every item of every entry: logit difference and, if ``with_loss``, −log p(correct).

    Items from all entries share forward passes (chunked to the memory budget); the answer metrics are
    computed once for all items at the end. Returns, per entry, (logit diff (n,), loss (n,) or None).
    """
    L = runner.spec.n_layers
    for e in entries:
        if e.stage not in ("pre", "mid", "post") or not 0 <= e.layer < L:
            raise ValueError(f"bad entry point ({e.layer}, {e.stage!r})")
        if e.stage == "mid" and runner.spec.parallel:
            raise ValueError("parallel blocks have no 'mid' entry; re-enter at 'post' (see Runner.after_attention)")
        if e.prefix and e.n and (e.prefix_kv is None or int(e.final_pos.min()) < e.prefix):
            raise ValueError("an entry with a prefix needs prefix_kv and final positions after the prefix")
    # Chunks never mix prefixes; within one prefix, items are in entry order (the batch grows down the layers).
    order = sorted(range(len(entries)), key=lambda i: (entries[i].prefix, _entry_point(entries[i], L)))
    entries_sorted = [entries[i] for i in order]
    points = [_entry_point(e, L) for e in entries_sorted]
    n_total = sum(e.n for e in entries_sorted)
    if n_total == 0:
        return [(torch.zeros(0), torch.zeros(0) if with_loss else None) for _ in entries]
    t0 = time.perf_counter()
    advance = _WholeItems(settings.progress)
    first = next(e for e in entries_sorted if e.n)
    seq_len = int(first.make(torch.arange(1, device=runner.device)).shape[1])
    chunk = auto_chunk(runner, seq_len, settings)
    # Layers take (1 − f) of each item's progress and the vocabulary pass f, by their share of the FLOPs.
    f = 0.0
    if with_loss:
        f = 2 * runner.spec.d_model * runner.spec.d_vocab / sweep_flops(runner, first.layer, first.stage, seq_len,
                                                                          first.incorrect.shape[-1], True)
    finals = []
    with torch.no_grad():
        queue = [(e, pt, 0) for e, pt in zip(entries_sorted, points) if e.n]
        while queue:
            parts, room = [], chunk
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
    out: list[tuple[Tensor, Tensor | None]] = [None] * len(entries)  # type: ignore[list-item]
    start = 0
    for i, e in zip(order, entries_sorted):
        sl = slice(start, start + e.n)
        out[i] = (diff[sl].float(), None if loss is None else loss[sl].float())
        start += e.n
    return out
