"""Attribution graphs on long prompts: nodes, rows, time and peak memory per prompt length, with a row budget.

Each length runs in a fresh subprocess (its own peak RSS, read with ``resource.getrusage`` at its end, and its RSS
after loading the model and the transcoders, so the graph's share shows). Prompts are the first n tokens (BOS
included) of the transcoders' training text (``logitlab.features.train.corpus_text()``); logit targets are the
top logits (up to 95%, at most 10). Next to each measurement: the dense adjacency circuit-tracer 0.5 would hold for
the same nodes ((min(7500, features) + logits) × nodes × 4 bytes: its default ``max_feature_nodes``) and the
unbounded one (nodes² × 4 bytes).

Usage (from the repository root; the machine's other work changes the times, not the memory):
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_graph_long.py [TRANSCODERS_DIR] \
        [--lengths 10,100,300,1000] [--max-feature-nodes 512]
TRANSCODERS_DIR defaults to ``logitlab train-transcoders``' default cache folder for the built-in model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GB = 1e9


def _child(folder: str, n: int, budget: int, model_name: str) -> dict:
    import torch

    import logitlab
    from logitlab.features.formats import load_dictionaries
    from logitlab.features.graph import attribute
    from logitlab.features.prune import check_graph, prune_graph
    from logitlab.features.train import corpus_text

    torch.set_grad_enabled(False)
    model = logitlab.load_model(model_name)
    dicts = load_dictionaries(folder, model)
    tok = model.tokenizer
    ids = tok(corpus_text()[:40_000], add_special_tokens=False)["input_ids"]
    ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids
    if len(ids) < n:
        raise SystemExit(f"the corpus excerpt has {len(ids)} tokens, fewer than {n}")
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    g = attribute(model, ids[:n], dicts, max_feature_nodes=budget)
    t1 = time.perf_counter()
    pruned = prune_graph(g)
    scores = g.scores()
    check = check_graph(g)
    t2 = time.perf_counter()
    # (a bool tensor's .sum() makes an int64 copy: 8 bytes per entry of edge_mask; count_nonzero does not)
    return {"tokens": n, "features": g.n_features, "nodes": g.n_nodes, "rows": int(g.adjacency.shape[0]),
            "logits": g.n_logits, "batch_size": g.meta["batch_size"], "rank_every": g.meta.get("rank_every"),
            "attribute_s": t1 - t0, "prune_scores_s": t2 - t1, "kept_nodes": int(pruned.node_mask.sum()),
            "kept_edges": int(pruned.edge_mask.count_nonzero()), "replacement": scores[0], "completeness": scores[1],
            "check": max(check.values()), "rss_loaded": rss_loaded,
            "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "adjacency_bytes": g.adjacency.numel() * g.adjacency.element_size()}


def _default_folder(model_name: str) -> str:
    import logitlab
    from logitlab.features.train import TrainConfig, default_out
    return str(default_out(logitlab.load_model(model_name), TrainConfig()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("transcoders", nargs="?", default=None)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--lengths", default="10,100,300,1000")
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    folder = args.transcoders or _default_folder(args.model)
    if args.child is not None:
        print(json.dumps(_child(folder, args.child, args.max_feature_nodes, args.model)))
        return
    print(f"transcoders: {folder}; max_feature_nodes {args.max_feature_nodes}", flush=True)
    head = ("tokens", "features", "nodes", "rows", "attribute s", "prune+scores s", "RSS loaded GB",
            "peak RSS GB", "adjacency GB", "circuit-tracer GB", "n² GB", "check")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    for n in [int(v) for v in args.lengths.split(",")]:
        cmd = [sys.executable, __file__, folder, "--model", args.model, "--child", str(n),
               "--max-feature-nodes", str(args.max_feature_nodes)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"| {n} | failed: {out.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ct = (min(7500, r["features"]) + r["logits"]) * r["nodes"] * 4
        row = (n, f"{r['features']:,}", f"{r['nodes']:,}", r["rows"], f"{r['attribute_s']:.1f}",
               f"{r['prune_scores_s']:.1f}", f"{r['rss_loaded'] / GB:.2f}", f"{r['rss_peak'] / GB:.2f}",
               f"{r['adjacency_bytes'] / GB:.3f}", f"{ct / GB:.2f}", f"{r['nodes'] ** 2 * 4 / GB:,.1f}",
               f"{r['check']:.1e}")
        print("| " + " | ".join(str(v) for v in row) + " |", flush=True)
        print(f"    {json.dumps(r)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
