"""Benchmark: attribution patching of every component against one forward pass of the same prompts.

AtP of a set of pairs costs a cached forward of the clean prompts, one of the corrupted prompts and a
forward + backward of the corrupted prompts (:func:`logitlab.analyses.atp._estimate`); this prints its wall
time and CPU time, its parts, and plain forwards of the corrupted prompt: the final position's logits (the
baseline: one model call scoring the answer), logits at every position, and the cached forward; then the ratio
AtP / baseline ("forward equivalents"). The pairs: the task's reference pairs (the
built-in ``pronouns``: Mary → John).

Usage: python benchmarks/bench_atp.py [--model builtin] [--task pronouns] [--repeats 5]
Run it alone: two torch processes on two cores slow each other many times over (on a busy machine,
``OMP_NUM_THREADS=1`` gives steadier numbers). Measured (built-in model, CPU, one thread, machine shared):
forward 190–210 ms, cached forward 116–152 ms, grad_run 252–285 ms, AtP 480–515 ms: 2.3–2.7 forwards,
3.2–4.4 cached forwards (two runs).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

torch.set_grad_enabled(False)


def _time(f: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Fastest wall time and fastest CPU time of ``f`` over ``repeats`` calls, after one warm-up call.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    f()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        f()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def main() -> None:
    import logitlab
    from logitlab.analyses.pairset import first_order as _estimate

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--task", default="pronouns")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = logitlab.load_model(args.model)
    tt = logitlab.tokenize_task(logitlab.load_task(args.task), model.tokenizer)
    if tt.clean_tokens is None:
        raise SystemExit(f"task {args.task!r} has no reference pairs")
    r = model.runner
    clean, corr, c, i = tt.clean_tokens, tt.corrupted_tokens, tt.pair_correct_ids, tt.pair_incorrect_ids
    n, T = clean.shape
    fp = torch.full((n,), T - 1)
    rows = [
        ("forward (final-position logits)", lambda: r.last_logits(corr, fp)),
        ("forward (logits at every position)", lambda: r.logits(corr)),
        ("cached forward (run_with_cache)", lambda: r.run_with_cache(corr)),
        ("forward + backward (grad_run)", lambda: r.grad_run(corr, fp, c, i)),
        ("AtP, every component", lambda: _estimate(r, clean, corr, c, i)),
    ]
    times = {name: _time(f, args.repeats) for name, f in rows}
    base = times["forward (final-position logits)"]
    print(f"{args.model}, task {args.task}: {n} pair(s) of {T} tokens, {model.spec.n_layers} layers × "
          f"{model.spec.n_heads} heads, {r.dtype}, {torch.get_num_threads()} threads, fastest of {args.repeats}")
    print(f"{'':36s} {'wall ms':>9s} {'cpu ms':>9s} {'forwards (wall, cpu)':>22s}")
    for name, (w, c) in times.items():
        print(f"{name:36s} {w * 1e3:9.1f} {c * 1e3:9.1f} {w / base[0]:11.2f} {c / base[1]:10.2f}")
    w, c = times["AtP, every component"]
    print(f"ratio AtP / forward: {w / base[0]:.2f} (wall), {c / base[1]:.2f} (cpu)")
    # The baseline computes the final position's logits over the whole vocabulary (262k rows for Gemma 3),
    # which neither AtP nor the cached forward does; against the cached forward the ratio is higher.
    cw, cc = times["cached forward (run_with_cache)"]
    print(f"ratio AtP / cached forward: {w / cw:.2f} (wall), {c / cc:.2f} (cpu)")


if __name__ == "__main__":
    main()
