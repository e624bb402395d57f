"""The sweep engine: many interventions per forward pass, started where they act, scoring only the answers.

An intervention at layer ``l`` cannot change layers ``< l``, so each sweep item starts from the clean (or
corrupted) run's cached residual stream at its entry point (``pre``/``mid``/``post`` of layer ``l``) and only
the remaining layers are run. Items (intervention × prompt) are stacked on the batch dimension and processed
in memory-sized chunks. Only the answer logits are computed, plus the log-partition function where the loss
is needed. Tests check the engine against one TransformerLens hooked forward per intervention.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.model.runner import Runner

__all__ = ["SweepSettings", "SweepStats", "run_sweep", "sweep_flops", "available_memory", "auto_chunk"]


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
    chunk_size: int | None = None  # items per forward; overrides the memory estimate
    progress: Callable[[int], None] | None = None  # called with the number of items finished
    stats: SweepStats | None = None  # if given, sweeps add their work to it


def sweep_flops(runner: Runner, layer: int, stage: str, seq_len: int, n_incorrect: int, with_loss: bool) -> float:
    """Multiply-add FLOPs (×2) of one sweep item: the remaining layers, then the answer metrics."""
    s, T = runner.spec, seq_len
    L, D, dh = s.n_layers, s.d_model, s.d_head
    d_mlp = runner.w.W_in.shape[-1]
    mlp = 2 * D * d_mlp * (3 if runner.w.W_gate is not None else 2)  # per token
    qo = 2 * D * s.n_heads * dh * 2  # query and output projections, per token
    kv = 2 * D * 2 * s.n_kv_heads * dh  # key and value projections, per token
    mix = 2 * 2 * s.n_heads * T * dh  # scores and weighted values, per query (every key, as computed)
    start = layer if stage == "pre" else layer + 1
    n_full = max(0, L - 1 - start)  # blocks run at every position; the last block runs one query
    total = n_full * T * (qo + kv + mix + mlp)
    if start <= L - 1:
        total += T * kv + qo + mix + mlp
    if stage == "mid":
        total += mlp * (1 if layer == L - 1 else T)  # (parallel blocks never enter at "mid")
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


def auto_chunk(runner: Runner, seq_len: int, settings: SweepSettings) -> int:
    """Items per forward pass so that one chunk's activations fit the memory budget."""
    if settings.chunk_size:
        return max(1, settings.chunk_size)
    s = runner.spec
    d_mlp = runner.w.W_in.shape[-1]
    elem = torch.finfo(runner.dtype).bits // 8
    # Live tensors per item in one layer: residual copies, q/k/v, scores and pattern, MLP hidden (x3 for
    # gate/up/activation), plus the (item, vocab-chunk) block of the loss; doubled for temporaries.
    per_item = elem * (seq_len * (8 * s.d_model + 3 * s.n_heads * s.d_head + 3 * d_mlp)
                       + 2 * s.n_heads * seq_len * seq_len + 8192) * 2
    budget = settings.max_memory if settings.max_memory else available_memory(runner.device) // 2
    if budget < per_item:
        raise LogitlabError(
            f"a single sweep item needs about {per_item / 2**20:.1f} MiB but the memory budget is "
            f"{budget / 2**20:.1f} MiB", "free memory or raise --max-memory")
    return int(min(4096, budget // per_item))


def run_sweep(
    runner: Runner, n_items: int, layer: int, stage: str, make_chunk: Callable[[Tensor], Tensor],
    final_pos: Tensor, correct: Tensor, incorrect: Tensor, with_loss: bool, settings: SweepSettings,
) -> tuple[Tensor, Tensor | None]:
    """Score ``n_items`` residual streams entering at (``layer``, ``stage``).

    Args:
        make_chunk: item indices (n,) → entry residual streams (n, pos, d_model).
        final_pos, correct, incorrect: per item (n_items,), (n_items,), (n_items, k).
    Returns:
        Logit difference (n_items,) and, if ``with_loss``, −log p(correct) (n_items,).
    """
    diffs, losses = [], []
    t0 = time.perf_counter()
    chunk = None
    start = 0
    with torch.no_grad():
        while start < n_items:
            idx = torch.arange(start, min(n_items, start + (chunk or 1)), device=runner.device)
            x = make_chunk(idx)
            if chunk is None:
                chunk = auto_chunk(runner, x.shape[1], settings)
                idx = torch.arange(start, min(n_items, start + chunk), device=runner.device)
                x = make_chunk(idx)
            final = runner.run_from(layer, stage, x, final_pos[idx])  # (n, d_model) at each final position
            d, lo = runner.answer_metrics(final, correct[idx], incorrect[idx], with_loss)
            diffs.append(d.float())
            if lo is not None:
                losses.append(lo.float())
            start += len(idx)
            if settings.progress is not None:
                settings.progress(len(idx))
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    if settings.stats is not None:
        st = settings.stats
        st.items += n_items
        st.seconds += time.perf_counter() - t0
        st.flops += n_items * sweep_flops(runner, layer, stage, int(x.shape[1]), int(incorrect.shape[-1]), with_loss)
    return torch.cat(diffs), (torch.cat(losses) if with_loss else None)
