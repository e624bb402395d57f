"""Circuit discovery on the built-in model: EAP-IG edge scores plus the faithfulness curve, against exact edge patching.

Prints the time of EAP-IG (``--ig-steps``, default 5) and of the faithfulness curve (top-n circuits on a log grid,
20 random circuits per size), and the cost of scoring every edge exactly instead (one edge-level forward per
edge and pair, each patching that edge alone from the corrupted run into the clean one): measured on a sample of
edges and extrapolated to the whole graph. Also the time of one ordinary forward pass of the same pairs.

    python benchmarks/bench_circuit.py [--model builtin] [--task pronouns] [--sample 256]
"""

from __future__ import annotations

import argparse
import time

import torch

import logitlab
from logitlab.analyses.circuit import CIRCUIT_PAIRS, plain_metric, eap_ig_circuit, edge_patch_metric, pair_batches
from logitlab.model.graph import EdgeGraph


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--task", default="pronouns")
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--sample", type=int, default=256, help="edges patched exactly to extrapolate from")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch threads: {torch.get_num_threads()}")
    model = logitlab.load_model(args.model)
    tt = logitlab.tokenize_task(logitlab.load_task(args.task), model.tokenizer)
    batches = pair_batches(tt, CIRCUIT_PAIRS)
    n_pairs = sum(b.n for b in batches)
    graph = EdgeGraph(model.spec)
    print(f"{graph.n_edges} edges, {n_pairs} pairs")

    t = time.perf_counter()
    for b in batches:
        plain_metric(model, b, b.clean_tokens)
    fwd = time.perf_counter() - t
    print(f"one ordinary forward pass of the {n_pairs} clean prompts: {fwd:.2f} s")

    phases: dict[str, float] = {}

    def progress(desc: str, total: int):  # noqa: ANN202
        start = time.perf_counter()
        phases[desc] = 0.0

        def adv(_n: int) -> None:
            phases[desc] = time.perf_counter() - start
        return adv

    t = time.perf_counter()
    res = eap_ig_circuit(model, tt, steps=args.ig_steps, progress=progress)
    total = time.perf_counter() - t
    for desc, s in phases.items():
        print(f"  {desc}: {s:.1f} s")
    print(f"EAP-IG ({args.ig_steps} steps) + faithfulness curve: {total:.1f} s; chosen circuit {res.chosen_n} edges")

    # Exact edge patching: every edge alone, clean run with that edge from the corrupted run.
    g = torch.Generator().manual_seed(0)
    sample = graph.edge_index[torch.randperm(graph.n_edges, generator=g)[: args.sample]]
    patches = torch.zeros(len(sample), graph.n_receivers, graph.n_senders)
    patches[torch.arange(len(sample)), sample[:, 0], sample[:, 1]] = 1.0
    b = max(batches, key=lambda x: x.n)
    t = time.perf_counter()
    edge_patch_metric(model, graph, b, patches)
    per_item = (time.perf_counter() - t) / (len(sample) * b.n)
    exact = per_item * graph.n_edges * n_pairs
    print(f"exact edge patching: {per_item * 1e3:.1f} ms per (edge, pair) -> {exact:.0f} s for all "
          f"{graph.n_edges} edges × {n_pairs} pairs (extrapolated from {len(sample)} edges × {b.n} pairs) "
          f"= {exact / phases.get('circuit: edge scores', total):.0f}× EAP-IG's edge scores")


if __name__ == "__main__":
    main()
