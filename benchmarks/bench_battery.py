"""Benchmark: logitlab's battery against the one-forward-per-intervention method, side by side in one process.

(a) The method as TransformerLens users write it, on the TransformerBridge: ``run_with_hooks`` in loops with
full-vocabulary logits, the logit-difference and loss ablation sweeps as two separate loops, and
TransformerLens's own ``patching`` functions for activation patching.
(b) logitlab's battery (``run_battery``: the same analyses, batched sweeps).

Prints each wall time, the ratio, the max abs difference between the two methods' numbers, the FLOP/s the
sweeps reach against this machine's fp32 matmul FLOP/s measured in the same run, the cached model-load time
and the end-to-end time of ``logitlab run``.

Usage: python benchmarks/bench_battery.py [--model builtin] [--task pronouns] [--skip-e2e] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import contextlib
import os
import subprocess
import sys
import tempfile
import time

import torch

torch.set_grad_enabled(False)


def matmul_flops(n: int = 2048, reps: int = 6, device: str = "cpu") -> dict[str, float]:
    """Best fp32 matmul FLOP/s over a few square products: torch's default BLAS, and oneDNN (which logitlab's
    runner uses for float32 on CPU when available); on CUDA, torch.mm (n = 8192)."""
    cuda = device.startswith("cuda")
    n = 8192 if cuda else n
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    bt = b.T.contiguous()
    fns = {("cuBLAS (torch.mm)" if cuda else "BLAS (torch.mm)"): lambda: a @ b}
    if not cuda and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        fns["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rates = {}
    for name, fn in fns.items():
        fn()
        sync()
        best = 0.0
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            sync()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
        rates[name] = best
    return rates


def loop_method(model, tt) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The reference analysis, one hooked forward per intervention."""
    dev = model.runner.device
    out = loop_ablation(model, tt)
    patched = loop_patching(model.bridge, tt.clean_tokens.to(dev), tt.corrupted_tokens.to(dev),
                            tt.pair_correct_ids.to(dev), tt.pair_incorrect_ids[:, 0].to(dev))
    return {**out, **{f"patch_{name}": v for name, v in patched.items()}}


def loop_ablation(model, tt) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Zero- and mean-ablation of every head, logit difference and loss as separate loops of one hooked forward
    per head (with the clean run's cheap read-outs, as the reference notebook computes them first): ``baseline``,
    ``{zero,mean}_{logit_diff,loss}`` (L, H), each the mean over prompts."""
    bridge = model.bridge
    spec = model.spec
    dev = model.runner.device
    tokens, fp = tt.tokens.to(dev), tt.final_pos.to(dev)
    rows = torch.arange(tokens.shape[0], device=dev)
    correct, incorrect = tt.correct_ids.to(dev), tt.incorrect_ids[:, 0].to(dev)
    # Prompt + correct answer, for the loss at the answer token.
    with_answer = torch.cat([tokens, tokens[:, :1]], dim=1)
    with_answer[rows, fp + 1] = correct

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        final = logits[rows, fp]
        return (final[rows, correct] - final[rows, incorrect]).mean()

    def answer_loss(logits: torch.Tensor) -> torch.Tensor:
        return -logits[rows, fp].log_softmax(-1)[rows, correct].mean()

    out: dict[str, torch.Tensor] = {}
    logits, cache = bridge.run_with_cache(tokens)
    out["baseline"] = logit_diff(logits)
    # The cheap analyses (read off the cache) as in the reference notebook.
    stack, _ = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    stack, _ = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    z_all = torch.stack([cache[f"blocks.{l}.attn.hook_z"] for l in range(spec.n_layers)])  # (L, B, T, H, dh)
    means = z_all.mean(1)  # (L, T, H, dh): all prompts share one length in the built-in task
    # The answer position of prompt + answer never influences the prompt's final position (causal): pad with 0.
    means = torch.cat([means, torch.zeros_like(means[:, :1])], dim=1)
    for kind in ("zero", "mean"):
        for metric_name, inputs, metric in (("logit_diff", tokens, logit_diff), ("loss", with_answer, answer_loss)):
            res = torch.zeros(spec.n_layers, spec.n_heads)
            for layer in range(spec.n_layers):
                for h in range(spec.n_heads):
                    def hook(z, hook, h=h, layer=layer):  # noqa: ANN001, ANN202
                        z[:, :, h] = 0.0 if kind == "zero" else means[layer, : z.shape[1], h]
                        return z
                    logits = bridge.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
                    res[layer, h] = metric(logits)
            out[f"{kind}_{metric_name}"] = res
    return out


def loop_patching(bridge, clean_t, corr_t, pc, pi,  # noqa: ANN001
                  min_gap: float | None = None) -> dict[str, torch.Tensor]:
    """resid/attn/mlp patching per (layer, position) and head patching (all positions) of one set of pairs of
    one token length, with TransformerLens's ``patching`` functions (one hooked forward per cell, the pairs
    batched). ``pi``: one incorrect answer per pair.

    The metric is the mean over the pairs of the final position's logit difference; with ``min_gap``, the mean
    over the pairs whose |clean − corrupted| ≥ ``min_gap`` of each one's (patched − corrupted)/(clean −
    corrupted), as logitlab normalises (NaN everywhere when no pair is left)."""
    from transformer_lens import patching

    prow = torch.arange(clean_t.shape[0], device=clean_t.device)

    def diff(logits: torch.Tensor) -> torch.Tensor:
        return logits[prow, -1, pc] - logits[prow, -1, pi]

    _, clean_cache = bridge.run_with_cache(clean_t)
    fns = (("resid", patching.get_act_patch_resid_pre), ("attn", patching.get_act_patch_attn_out),
           ("mlp", patching.get_act_patch_mlp_out), ("heads", patching.get_act_patch_attn_head_out_all_pos))
    if min_gap is None:
        def pair_metric(logits: torch.Tensor) -> torch.Tensor:
            return diff(logits).mean()
    else:
        clean_d, corr_d = diff(bridge(clean_t)), diff(bridge(corr_t))
        gap = clean_d - corr_d
        used = gap.abs() >= min_gap
        if not bool(used.any()):
            L, H, T = bridge.cfg.n_layers, bridge.cfg.n_heads, clean_t.shape[1]
            nan = float("nan")
            return {"resid": torch.full((L, T), nan), "attn": torch.full((L, T), nan),
                    "mlp": torch.full((L, T), nan), "heads": torch.full((L, H), nan)}

        def pair_metric(logits: torch.Tensor) -> torch.Tensor:
            return ((diff(logits) - corr_d) / gap)[used].mean()
    out = {}
    for name, fn in fns:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # its per-call progress bars
            out[name] = fn(bridge, corr_t, clean_cache, pair_metric)
    return out


#: What the loop method (a) computes besides the clean run: zero- and mean-ablation (logit difference and loss),
#: resid/attn/mlp/head patching of the task's own pair.
SAME_AS_LOOPS = ("ablation", "patching")


def main() -> None:
    import logitlab
    from logitlab._alloc import keep_freed_memory
    from logitlab.analyses import activation_patching, clean_run, head_ablation
    from logitlab.battery import RunConfig, run_battery
    from logitlab.sweep import SweepStats

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--task", default="pronouns")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    dev = args.device
    print(f"torch threads: {torch.get_num_threads()}, device {dev}")
    keep_freed_memory()  # as the command line does (for both methods)
    rates = matmul_flops(device=dev)
    for name, rate in rates.items():
        print(f"fp32 matmul, {name}: {rate / 1e9:.0f} GFLOP/s")
    mm = max(rates.values())

    t = time.perf_counter()
    model = logitlab.load_model(args.model, device=dev)
    load_s = time.perf_counter() - t
    print(f"model load (cache warm after the first run): {load_s:.1f} s")
    task = logitlab.load_task(args.task)
    tt = logitlab.tokenize_task(task, model.tokenizer)
    model.bridge  # boot outside the timings  # noqa: B018

    stats = SweepStats()
    t = time.perf_counter()
    # The analyses the loop method (a) runs, on the task's own pair, plus the cheap always-run ones.
    config = RunConfig(model=args.model, task=args.task, device=dev, patching_pairs=0, analyses=SAME_AS_LOOPS)
    results = run_battery(model, task, config, stats=stats)
    ours_s = time.perf_counter() - t
    print(f"logitlab battery: {ours_s:.2f} s", flush=True)
    blas_s = math.nan
    if dev == "cpu":
        # The same battery with the runner's products on torch's default BLAS: how much is the library, how
        # much the method.
        os.environ["LOGITLAB_ONEDNN"] = "0"
        blas_model = logitlab.load_model(args.model)
        t = time.perf_counter()
        run_battery(blas_model, task, RunConfig(model=args.model, task=args.task, patching_pairs=0, analyses=SAME_AS_LOOPS))
        blas_s = time.perf_counter() - t
        del os.environ["LOGITLAB_ONEDNN"], blas_model
        print(f"logitlab battery on the default BLAS: {blas_s:.2f} s", flush=True)
    t = time.perf_counter()
    ref = loop_method(model, tt)
    loop_s = time.perf_counter() - t

    run = clean_run(model, tt)
    diffs = {}
    for kind in ("zero", "mean"):
        ab = head_ablation(run, kind)
        diffs[f"{kind}-ablation logit diff"] = (ab.logit_diff.mean(-1) - ref[f"{kind}_logit_diff"].cpu()).abs().max()
        diffs[f"{kind}-ablation loss"] = (ab.loss.mean(-1) - ref[f"{kind}_loss"]).abs().max()
    p = activation_patching(model, tt, generated=False)  # the reference pair, as the loop method patches
    for name, mine in (("resid", p.resid), ("attn", p.attn), ("mlp", p.mlp), ("heads", p.heads)):
        diffs[f"{name} patching"] = (mine - ref[f"patch_{name}"].cpu()).abs().max()

    print("\nmethod                                   wall time")
    print(f"(a) one forward per intervention (TL)    {loop_s:8.2f} s")
    print(f"(b) logitlab battery                     {ours_s:8.2f} s")
    print(f"(b') logitlab battery, default BLAS      {blas_s:8.2f} s")
    print(f"ratio (a)/(b)                            {loop_s / ours_s:8.1f} x")
    print(f"ratio (a)/(b')                           {loop_s / blas_s:8.1f} x")
    print("\nmax abs difference (a) vs (b):")
    for k, v in diffs.items():
        print(f"  {k:28s} {float(v):.2e}")
    print(f"\nsweeps: {stats.items} items, {stats.flops / 1e12:.2f} TFLOP in {stats.seconds:.2f} s = "
          f"{stats.flops_per_second / 1e9:.0f} GFLOP/s = {stats.flops_per_second / mm:.0%} of the best fp32 matmul")
    print(f"battery mean logit diff {results['logit_diff']['mean']:.4f}")
    if not args.skip_e2e:
        # Untimed: a fresh process loads the model once, so the timed commands read warm files (the loop method's
        # memory use can evict the cached weights from the page cache; a cold read took ~50 s here).
        subprocess.run([sys.executable, "-c", f"import logitlab; logitlab.load_model({args.model!r}, device={dev!r})"],
                       check=True, capture_output=True)
        for label, extra in (("the loops' analyses (--analyses ablation,patching --patching-pairs 0)",
                              ["--analyses", "ablation,patching", "--patching-pairs", "0"]),
                             ("the default battery", [])):
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "logitlab", "run", "--model", args.model, "--task", args.task,
                       "--out", out, "--force", "--device", dev, *extra]
                t = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                e2e = time.perf_counter() - t
                print(f"`logitlab run` end to end, {label} (interpreter, load, battery, results, report): {e2e:.1f} s"
                      f" = (a) / {loop_s / e2e:.1f}")


if __name__ == "__main__":
    main()
