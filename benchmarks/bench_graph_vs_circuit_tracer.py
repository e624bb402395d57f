"""circuit-tracer 0.5 and logitlab side by side on the built-in model: the same attribution graph, its time and memory.

For each prompt length, logitlab's ``attribute`` and circuit-tracer's ``attribute`` (nnsight backend, its own venv,
see compare_circuit_tracer.py) run on the same token ids, transcoders and logit targets, each in a fresh process
(logitlab first: its top logits become circuit-tracer's ``attribution_targets``). Each process reports:

* attribute: wall time of the ``attribute`` call alone ("attr s");
* end to end: from the parent's spawn of the process to ``attribute``'s return (interpreter, imports, loading the
  model and the transcoders, the graph; saving the arrays for the comparison comes after and is not counted);
* the process's CPU time for both ("attr CPU", "e2e CPU"): on a shared machine wall time grows with the other work,
  CPU time much less (with one torch thread it is the wall time of an idle machine, give or take memory contention);
* RSS after loading ("RSS ld"), peak RSS during loading ("pk ld") and peak RSS at ``attribute``'s return ("peak",
  read before anything is saved): /proc/self/status's VmRSS and VmHWM (``getrusage``'s ru_maxrss survives exec, so
  a child would inherit the parent's peak, which grows with the arrays it compares);
* the adjacency each returns (logitlab: rows × nodes; circuit-tracer: its square matrix over the selected features,
  errors, tokens and logits, after an intermediate (rows × all nodes) one).

The parent then aligns the two graphs (features by (layer, position, feature index), error and token nodes by
(layer,) position, logit targets by token id) and prints max |Δ| and max |Δ| / max |logitlab| of every block over
the rows both attributed and the columns both have. Under a row budget (``--max-feature-nodes``) both sides choose
their rows by influence on the logit targets in queues; logitlab's ``rank_every`` is set to circuit-tracer's queue
(``update_interval`` 4 × its batch size), so the chosen features should be the same (the overlap is printed). To
tell why they are not, circuit-tracer's ranking is replayed (float64) on logitlab's rows twice: as they are, and
with the token columns divided by the embedding scale as circuit-tracer has them (the influence normalises each row
by its sum of |edges|, token edges included); the replay prints how many of its picks are each side's rows.

Known difference (see docs/features.md): circuit-tracer 0.5's nnsight backend takes token nodes as raw embedding rows,
without Gemma's √d_model embedding scale, so its token columns are √640 ≈ 25.3 too small; the token blocks are
printed raw and with circuit-tracer's token columns multiplied by the scale.

Prompts: the 10-token "Mary is a great friend, isn’t" (BOS included); a length n > 10 takes the first n tokens
(BOS included) of the transcoders' training text (``logitlab.features.train.corpus_text()``), as
bench_graph_long.py does. circuit-tracer runs a forward pass on ``batch size`` copies of the prompt and keeps it for
its backward passes, so its memory grows as batch size × tokens: ``--ct-batch`` sets its batch size per length.

Usage (from the repository root):
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_graph_vs_circuit_tracer.py TRANSCODERS_DIR \
        [--lengths 10,100,300] [--max-feature-nodes 0,512,512] [--ct-batch 64,32,16] \
        [--threads 1] [--env /tmp/ct-env] [--work DIR]
``--max-feature-nodes`` 0 means no budget (every active feature gets a row on both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_circuit_tracer import PROMPT, copy_for_old_transformers, ensure_env  # noqa: E402

GB = 1e9

CT_CHILD = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
def vm(key):  # bytes of /proc/self/status's VmHWM (peak) or VmRSS (now) of this process
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024
import numpy as np, torch
torch.set_num_threads(spec["threads"])
from circuit_tracer import ReplacementModel, attribute
model = ReplacementModel.from_pretrained(spec["model_dir"], spec["tc_dir"], backend="nnsight",
                                         device=torch.device("cpu"), dtype=torch.float32)
rss_loaded, rss_now = vm("VmHWM"), vm("VmRSS")
t0, c0 = time.perf_counter(), time.process_time()
g = attribute(torch.tensor(spec["ids"]), model, attribution_targets=torch.tensor(spec["targets"]),
              batch_size=spec["batch_size"], max_feature_nodes=spec["max_feature_nodes"])
t1, c1 = time.perf_counter(), time.process_time()
end_to_end = time.time() - spec["spawned"]
rss_peak = vm("VmHWM")
A = g.adjacency_matrix
np.savez(spec["out"], adjacency=A.float().numpy(), features=g.active_features.numpy(),
         selected=g.selected_features.numpy(), activations=g.activation_values.float().numpy(),
         tokens=g.input_tokens.cpu().numpy(), logit_tokens=np.array([int(t.vocab_idx) for t in g.logit_targets]),
         n_layers=g.cfg.n_layers)
print(json.dumps({"attribute_s": t1 - t0, "end_to_end_s": end_to_end, "attribute_cpu_s": c1 - c0,
                  "end_to_end_cpu_s": c1, "rss_loaded": rss_loaded, "rss_after_load": rss_now,
                  "rss_peak": rss_peak, "adjacency_bytes": A.numel() * A.element_size(),
                  "n_features": int(g.active_features.shape[0]), "rows": int(g.selected_features.numel())}))
"""


def _vm(key: str) -> int:
    """Bytes of this process's ``VmHWM`` (peak RSS) or ``VmRSS`` (RSS now) in /proc/self/status. Not
    ``getrusage``'s ru_maxrss: Linux keeps that across exec, so a child would report its parent's peak if larger."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def _ll_child(spec: dict) -> dict:
    """logitlab's side (runs in a fresh process of this interpreter): load, attribute, save the arrays."""
    torch.set_num_threads(spec["threads"])
    import logitlab
    from logitlab.features.formats import load_dictionaries
    from logitlab.features.graph import attribute

    torch.set_grad_enabled(False)
    model = logitlab.load_model("builtin")
    dicts = load_dictionaries(spec["tc_dir"], model)
    ids = _prompt_ids(model.tokenizer, spec["n"])
    rss_loaded, rss_now = _vm("VmHWM"), _vm("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    g = attribute(model, ids, dicts, max_feature_nodes=spec["max_feature_nodes"],
                  rank_every=spec["rank_every"], freeze_massive=False)  # circuit-tracer freezes BOS alone
    t1, c1 = time.perf_counter(), time.process_time()
    end_to_end = time.time() - spec["spawned"]
    rss_peak = _vm("VmHWM")
    A = g.adjacency
    np.savez(spec["out"], adjacency=A.numpy(), rows=g.row_nodes.numpy(), features=g.features.numpy(),
             activations=g.activations.float().numpy(), tokens=np.array(g.tokens),
             logit_tokens=np.array(g.logit_tokens), logit_probs=g.logit_probs.numpy(), n_layers=g.n_layers,
             embed_scale=float(model.spec.embed_scale))
    return {"attribute_s": t1 - t0, "end_to_end_s": end_to_end, "attribute_cpu_s": c1 - c0, "end_to_end_cpu_s": c1,
            "rss_loaded": rss_loaded, "rss_after_load": rss_now, "rss_peak": rss_peak,
            "adjacency_bytes": A.numel() * A.element_size(), "n_features": g.n_features,
            "rows": int(g.attributed[:g.n_features].sum()), "targets": [int(t) for t in g.logit_tokens], "ids": ids,
            "batch_size": g.meta.get("batch_size"), "rank_every": g.meta.get("rank_every")}


def _spawn(cmd: list[str], spec: dict, env: dict | None = None) -> dict:
    spec = dict(spec, spawned=time.time())
    r = subprocess.run(cmd + [json.dumps(spec)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _block(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float, float]:
    if ours.numel() == 0:
        return float("nan"), float("nan"), 0.0
    d = float((ours - theirs).abs().max())
    scale = float(ours.abs().max())
    return d, d / max(scale, 1e-30), scale


def compare(ll: dict, ct: dict, queue: int) -> None:
    """Print the agreement of the two graphs over the rows both attributed and the columns both have; under a row
    budget, also which rows circuit-tracer's ranking (queues of ``queue`` features) picks from logitlab's rows."""
    L, T = int(ll["n_layers"]), len(ll["tokens"])
    assert ct["tokens"].tolist() == ll["tokens"].tolist(), (ct["tokens"].tolist(), ll["tokens"].tolist())
    assert int(ct["n_layers"]) == L
    assert ct["logit_tokens"].tolist() == ll["logit_tokens"].tolist()
    n_l = len(ll["logit_tokens"])
    feats_ll = [tuple(int(v) for v in r) for r in ll["features"]]
    feats_ct = [tuple(int(v) for v in r) for r in ct["features"]]
    n_f_ll, n_f_ct = len(feats_ll), len(feats_ct)
    sel_ct = [feats_ct[i] for i in ct["selected"].tolist()]  # circuit-tracer's rows (and feature columns)
    A_ll = torch.as_tensor(ll["adjacency"], dtype=torch.float64)  # (rows, n_nodes)
    A_ct = torch.as_tensor(ct["adjacency"], dtype=torch.float64)  # square over selected, errors, tokens, logits
    n_sel = len(sel_ct)
    n_ct_nodes = A_ct.shape[0]
    assert n_ct_nodes == n_sel + L * T + T + n_l, (n_ct_nodes, n_sel, L, T, n_l)

    set_ll, set_ct = set(feats_ll), set(feats_ct)
    node_ll = {f: i for i, f in enumerate(feats_ll)}
    row_of_node = {int(n): r for r, n in enumerate(ll["rows"].tolist())}
    rows_ll_feats = {feats_ll[n] for n in row_of_node if n < n_f_ll}
    col_ct = {f: i for i, f in enumerate(sel_ct)}
    print(f"   features: logitlab {n_f_ll}, circuit-tracer {n_f_ct}, common {len(set_ll & set_ct)}; only logitlab "
          f"{len(set_ll - set_ct)}, only circuit-tracer {len(set_ct - set_ll)}; position-0 features in "
          f"circuit-tracer {sum(1 for f in feats_ct if f[1] == 0)}")
    common_rows = [f for f in sel_ct if f in rows_ll_feats]
    print(f"   attributed feature rows: logitlab {len(rows_ll_feats)}, circuit-tracer {n_sel}, both {len(common_rows)}")
    act_ct_of = {f: float(a) for f, a in zip(feats_ct, ct["activations"])}
    common = [f for f in feats_ll if f in set_ct]
    a = torch.tensor([float(ll["activations"][node_ll[f]]) for f in common], dtype=torch.float64)
    b = torch.tensor([act_ct_of[f] for f in common], dtype=torch.float64)
    d, rel, _ = _block(a, b)
    print(f"   activations: max |Δ| {d:.2e}, rel {rel:.2e}; logit targets {ll['logit_tokens'].tolist()}")

    # rows: common attributed features, then the logit targets
    r_ll_f = torch.tensor([row_of_node[node_ll[f]] for f in common_rows], dtype=torch.long)
    r_ct_f = torch.tensor([col_ct[f] for f in common_rows], dtype=torch.long)
    n_rows_ll = A_ll.shape[0]
    r_ll_l = torch.arange(n_rows_ll - n_l, n_rows_ll)
    r_ct_l = torch.arange(n_ct_nodes - n_l, n_ct_nodes)
    # columns: features that are circuit-tracer columns (selected) and logitlab nodes; errors; tokens
    c_feats = [f for f in sel_ct if f in node_ll]
    c_ll_f = torch.tensor([node_ll[f] for f in c_feats], dtype=torch.long)
    c_ct_f = torch.tensor([col_ct[f] for f in c_feats], dtype=torch.long)
    c_ll_e, c_ct_e = torch.arange(n_f_ll, n_f_ll + L * T), torch.arange(n_sel, n_sel + L * T)
    c_ll_t, c_ct_t = torch.arange(n_f_ll + L * T, n_f_ll + L * T + T), torch.arange(n_sel + L * T, n_sel + L * T + T)
    scale = float(ll["embed_scale"])
    rows = {"feature": (r_ll_f, r_ct_f), "logit": (r_ll_l, r_ct_l)}
    cols = {"feature": (c_ll_f, c_ct_f), "error": (c_ll_e, c_ct_e), "token": (c_ll_t, c_ct_t)}
    print(f"   {'block':<20}{'max |Δ|':>11}{'rel':>11}{'max |ref|':>11}")
    for rn, (rl, rc) in rows.items():
        for cn, (cl, cc) in cols.items():
            x, y = A_ll[rl][:, cl], A_ct[rc][:, cc]
            d, rel, ref = _block(x, y)
            print(f"   {rn + '←' + cn:<20}{d:>11.2e}{rel:>11.2e}{ref:>11.2e}")
            if cn == "token" and scale != 1.0:
                d, rel, ref = _block(x, y * scale)
                print(f"   {'  ×√d_model':<20}{d:>11.2e}{rel:>11.2e}{ref:>11.2e}")
    if n_sel < n_f_ct and "logit_probs" in ll:
        sel_ct_nodes = {node_ll[f] for f in sel_ct}
        for name, div in (("as logitlab's", 1.0), ("÷ the embedding scale, as circuit-tracer's", scale)):
            picked, exact = _replay_choice(ll, n_sel, queue, div)
            print(f"   circuit-tracer's ranking replayed on logitlab's rows, token columns {name}: of its {n_sel} "
                  f"picks {len(picked & sel_ct_nodes)} are circuit-tracer's rows, {len(picked & set(row_of_node))} "
                  f"logitlab's{'' if exact else ' (approximate: a pick before the last queue has no row here)'}")


def _replay_choice(ll: dict, budget: int, queue: int, token_div: float) -> tuple[set[int], bool]:
    """The features circuit-tracer's ranking picks (queues of ``queue``, influence on the logit targets weighted by
    their probabilities, through the rows attributed so far, in float64) when it reads logitlab's rows, with the
    token columns divided by ``token_div``; and whether that replay is exact: False when a pick before the last
    queue has no row in logitlab's graph (the later queues then miss its row)."""
    A = torch.as_tensor(ll["adjacency"], dtype=torch.float64)
    n_f, L, T, n_l = len(ll["features"]), int(ll["n_layers"]), len(ll["tokens"]), len(ll["logit_tokens"])
    A[:, n_f + L * T:n_f + L * T + T] /= token_div
    A = A.abs_()
    A /= A.sum(1, keepdim=True).clamp(min=1e-10)
    nodes = torch.as_tensor(ll["rows"], dtype=torch.long)
    row_of = {int(n): r for r, n in enumerate(nodes.tolist())}
    w = torch.zeros(A.shape[1], dtype=torch.float64)
    w[-n_l:] = torch.as_tensor(ll["logit_probs"], dtype=torch.float64)
    active = [row_of[A.shape[1] - n_l + i] for i in range(n_l)]
    visited = torch.zeros(n_f, dtype=torch.bool)
    picked: set[int] = set()
    exact = True
    while len(picked) < budget:
        r = torch.tensor(active)
        cur, total = w, torch.zeros_like(w)
        for _ in range(1000):  # w·(Â + Â² + …) over the rows attributed so far
            p = cur[nodes[r]]
            if not p.any():
                break
            cur = p @ A[r]
            total += cur
        rank = torch.sort(total[:n_f], descending=True, stable=True).indices
        pending = rank[~visited[rank]][:min(queue, budget - len(picked))].tolist()
        visited[pending] = True
        picked.update(pending)
        exact = exact and (len(picked) == budget or all(i in row_of for i in pending))
        active += [row_of[i] for i in pending if i in row_of]
    return picked, exact


def _prompt_ids(tok, n: int) -> list[int]:
    """The 10-token pronoun prompt (n ≤ 10), else the first n tokens of the transcoders' training text (BOS first)."""
    from logitlab.features.train import corpus_text

    text = PROMPT if n <= 10 else corpus_text()[:40_000]
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    if n <= 10:
        return ids
    if len(ids) < n:
        raise SystemExit(f"the corpus excerpt has {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def _row(name: str, r: dict) -> str:
    return (f"   {name:<15}{r['attribute_s']:>10.1f}{r['end_to_end_s']:>10.1f}{r['attribute_cpu_s']:>10.1f}"
            f"{r['end_to_end_cpu_s']:>10.1f}{r.get('rss_after_load', float('nan')) / GB:>10.2f}"
            f"{r['rss_loaded'] / GB:>10.2f}"
            f"{r['rss_peak'] / GB:>10.2f}{r['adjacency_bytes'] / GB:>11.3f}{r['rows']:>8}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("transcoders", nargs="?", help="the built-in model's transcoders in circuit-tracer's format "
                                                   "(a folder with config.yaml, as logitlab train-transcoders writes)")
    ap.add_argument("--lengths", default="10,100,300")
    ap.add_argument("--max-feature-nodes", default="0,512,512", help="per length; 0: no budget")
    ap.add_argument("--ct-batch", default="64,32,16",
                    help="circuit-tracer's batch size per length (its own default, 512, runs its forward pass on 512 "
                         "copies of the prompt: batch × tokens × vocabulary logits)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both processes")
    ap.add_argument("--env", default="/tmp/ct-env", help="circuit-tracer's venv (built when missing)")
    ap.add_argument("--work", default=None, help="folder for the model copy and the arrays (default: temp)")
    ap.add_argument("--ll-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ll_child is not None:
        print(json.dumps(_ll_child(json.loads(args.ll_child))))
        return
    if args.transcoders is None:
        ap.error("give the transcoders' folder")

    from logitlab.model.sources import resolve_source

    lengths = [int(v) for v in args.lengths.split(",")]
    budgets = [int(v) for v in args.max_feature_nodes.split(",")]
    batches = [int(v) for v in args.ct_batch.split(",")]
    if not len(lengths) == len(budgets) == len(batches):
        raise SystemExit("--lengths, --max-feature-nodes and --ct-batch need one value per length")
    py = ensure_env(Path(args.env))
    tc_dir = str(Path(args.transcoders).resolve())
    load = os.getloadavg()
    print(f"transcoders {tc_dir}; torch threads {args.threads}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_ct = copy_for_old_transformers(Path(resolve_source("builtin")[0]), work / "builtin_ct")
        ct_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="",
                      OMP_NUM_THREADS=str(args.threads))
        ll_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        for n, budget, ct_batch in zip(lengths, budgets, batches):
            base = {"n": n, "tc_dir": tc_dir, "threads": args.threads, "max_feature_nodes": budget or None}
            ll = _spawn([sys.executable, __file__, "--ll-child"],
                        dict(base, out=str(work / f"ll_{n}.npz"), rank_every=4 * ct_batch if budget else None),
                        env=ll_env)
            ct = _spawn([str(py), "-c", CT_CHILD],
                        dict(base, out=str(work / f"ct_{n}.npz"), model_dir=str(model_ct), ids=ll["ids"],
                             targets=ll["targets"], batch_size=ct_batch), env=ct_env)
            print(f"\n== {len(ll['ids'])} tokens, {ll['n_features']:,} active features, budget "
                  f"{budget or 'none'}; logitlab batch {ll['batch_size']}, rank_every {ll['rank_every']}; "
                  f"circuit-tracer batch {ct_batch}; load average now {os.getloadavg()[0]:.2f}")
            print(f"   {'':<15}{'attr s':>10}{'e2e s':>10}{'attr CPU':>10}{'e2e CPU':>10}{'RSS ld GB':>10}"
                  f"{'pk ld GB':>10}{'peak GB':>10}{'adjac. GB':>11}{'rows':>8}")
            print(_row("logitlab", ll))
            print(_row("circuit-tracer", ct))
            print(f"   circuit-tracer / logitlab: attribute {ct['attribute_s'] / ll['attribute_s']:.2f}x, end to end "
                  f"{ct['end_to_end_s'] / ll['end_to_end_s']:.2f}x; CPU time: attribute "
                  f"{ct['attribute_cpu_s'] / ll['attribute_cpu_s']:.2f}x, end to end "
                  f"{ct['end_to_end_cpu_s'] / ll['end_to_end_cpu_s']:.2f}x; "
                  f"peak RSS {ct['rss_peak'] / ll['rss_peak']:.2f}x", flush=True)
            compare(dict(np.load(work / f"ll_{n}.npz")), dict(np.load(work / f"ct_{n}.npz")), 4 * ct_batch)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
