"""Benchmark: how the battery's time, FLOPs and peak memory grow with the number of prompts and their length.

The battery here is zero- and mean-ablation of every head (logit difference and loss) and all patching of the
task's own pair, plus the always-run analyses (``--analyses ablation,patching --patching-pairs 0``).
Each configuration runs in its own process (so its peak resident memory is its own) and prints one row:
prompts, tokens per prompt, battery seconds, sweep TFLOP and the rate they ran at, peak RSS and what the
battery added to the RSS after loading the model.

* prompt count: the first N prompts of ``pronouns-large`` (template-major), N = 20 … 520;
* prompt length: each built-in ``pronouns`` prompt led by its subject ("Mary had a long day. "), then a neutral
  filler text, then the prompt, 10 … 200 tokens: prompts (and a pair's two sides) differ from the second token
  on, so nothing but BOS is shared (the worst case for logitlab's shortcuts);
* shared-length (``--shared-lengths``): the same filler before every prompt unchanged, a context all prompts
  and both sides of a pair share: ablation runs it once per head, patching does not sweep it.

Usage: python benchmarks/bench_scaling.py [--model builtin] [--counts 20,65,130,260,520]
       [--lengths 10,25,50,100,200] [--shared-lengths 10,25,50,100,200] [--device cpu]
Run it alone: two torch processes on two cores slow each other many times over.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

FILLER = "The weather was calm that morning, and the streets of the old town were still quiet. "


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def scaled_task(m, kind: str, size: int):  # noqa: ANN001, ANN201
    """The task of one configuration: the first ``size`` prompts of ``pronouns-large`` (``kind`` "count"), or the
    ``pronouns`` prompts at about ``size`` tokens (``kind`` "length": nothing shared but BOS; "shared-length": a
    filler every prompt shares)."""
    import logitlab
    from logitlab.task import Task, tokenize_task
    if kind == "count":
        big = logitlab.load_task("pronouns-large")
        n = min(size, len(big.prompts))
        task = Task(name=f"pronouns-large[:{n}]", prompts=big.prompts[:n], correct=big.correct[:n],
                    incorrect=big.incorrect[:n], patch_pairs=big.patch_pairs, prepend_bos=big.prepend_bos,
                    templates=big.templates, prompt_template=big.prompt_template[:n],
                    prompt_subject=big.prompt_subject[:n], prompt_class=big.prompt_class[:n])
    else:
        base = logitlab.load_task("pronouns")
        base_len = len(tokenize_task(base, m.tokenizer).tokens[0])
        filler = FILLER * max(0, round((size - base_len) / len(m.tokenizer(FILLER, add_special_tokens=False)["input_ids"])))
        if kind == "shared-length":
            # One filler before every prompt: a context all prompts (and both sides of a pair) share, which
            # logitlab runs once per head for ablation and does not sweep for patching.
            def lead(prompt: str) -> str:
                return filler + prompt
        else:
            # The subject first, then the filler: every prompt differs from its second token on, and so does a
            # pair's clean and corrupted prompt (the worst case: nothing is shared but BOS).
            def lead(prompt: str) -> str:
                return f"{prompt.split()[0]} had a long day. " + filler + prompt
        pairs = tuple(type(p)(lead(p.clean), lead(p.corrupted), p.correct, p.incorrect) for p in base.patch_pairs)
        task = Task(name=f"pronouns+filler({size}, {kind})", prompts=tuple(lead(p) for p in base.prompts),
                    correct=base.correct, incorrect=base.incorrect, patch_pairs=pairs, prepend_bos=base.prepend_bos,
                    templates=base.templates, prompt_template=base.prompt_template,
                    prompt_subject=base.prompt_subject, prompt_class=base.prompt_class)
    return task


def child(model_name: str, kind: str, size: int, device: str) -> None:
    """One configuration, in this process; prints its row as JSON."""
    import torch

    import logitlab
    from logitlab.battery import RunConfig, run_battery
    from logitlab.sweep import SweepStats
    from logitlab.task import tokenize_task
    torch.set_grad_enabled(False)
    logitlab.keep_freed_memory()
    m = logitlab.load_model(model_name, device=device)
    after_load = _rss_gb()
    task = scaled_task(m, kind, size)
    tt = tokenize_task(task, m.tokenizer)
    stats = SweepStats()
    t0 = time.perf_counter()
    # The sweeps that scale with prompts × length: zero- and mean-ablation of every head (logit difference and loss)
    # and all patching of the task's own pair (the loops' analyses of bench_battery.py).
    run_battery(m, task, RunConfig(model=model_name, device=device, patching_pairs=0, analyses=("ablation", "patching")),
                stats=stats)
    secs = time.perf_counter() - t0
    print(json.dumps({"prompts": tt.n_prompts, "tokens": int(tt.final_pos.max()) + 1, "battery_s": secs,
                      "tflop": stats.flops / 1e12, "gflops": stats.flops_per_second / 1e9,
                      "peak_rss_gb": _rss_gb(), "battery_rss_gb": _rss_gb() - after_load}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--counts", default="20,65,130,260,520")
    ap.add_argument("--lengths", default="10,25,50,100,200", help="prompts that differ from their second token on")
    ap.add_argument("--shared-lengths", default="", help="prompts behind one shared filler, e.g. 10,25,50,100,200")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.child[0], int(args.child[1]), args.device)
        return
    print(f"{'kind':>13} {'prompts':>8} {'tokens':>7} {'battery s':>10} {'TFLOP':>7} {'GFLOP/s':>8} {'peak RSS GiB':>13} "
          f"{'battery RSS GiB':>16}")
    for kind, sizes in (("count", args.counts), ("length", args.lengths), ("shared-length", args.shared_lengths)):
        for size in (int(s) for s in sizes.split(",") if s):
            cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--child", kind, str(size)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{kind} {size}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{kind:>13} {r['prompts']:>8} {r['tokens']:>7} {r['battery_s']:>10.1f} {r['tflop']:>7.2f} {r['gflops']:>8.0f} "
                  f"{r['peak_rss_gb']:>13.2f} {r['battery_rss_gb']:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
