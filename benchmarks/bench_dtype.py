"""The error bfloat16 introduces: the whole battery in float32 and in bfloat16, side by side in one process.

Prints each run's wall time and, per result, the max abs difference between the two (and the scale of the
float32 values), so a user can judge whether ``--dtype bfloat16`` is good enough for their question.

Usage: python benchmarks/bench_dtype.py [--model builtin] [--task pronouns]
"""

from __future__ import annotations

import argparse
import time

import torch

torch.set_grad_enabled(False)


def _flat(x: object) -> list[float]:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return [float(x)]
    if isinstance(x, list):
        return [v for item in x for v in _flat(item)]
    return []


def main() -> None:
    import logitlab
    from logitlab.battery import RunConfig, run_battery

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--task", default="pronouns")
    args = ap.parse_args()
    task = logitlab.load_task(args.task)
    res, times = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = logitlab.load_model(args.model, dtype=dtype)
        t = time.perf_counter()
        res[dtype] = run_battery(model, task, RunConfig(model=args.model, task=args.task, dtype=dtype))
        times[dtype] = time.perf_counter() - t
        del model
    print(f"battery float32 {times['float32']:.1f} s, bfloat16 {times['bfloat16']:.1f} s")
    print(f"{'result':34s} {'max abs diff':>12s} {'max |fp32|':>10s}")
    a, b = res["float32"], res["bfloat16"]
    rows = [("logit_diff.per_prompt", a["logit_diff"]["per_prompt"], b["logit_diff"]["per_prompt"]),
            ("dla.reconstructed_mean", a["dla"]["reconstructed_mean"], b["dla"]["reconstructed_mean"]),
            ("logit_lens.values", a["logit_lens"]["values"], b["logit_lens"]["values"]),
            ("layer_attribution.values", a["layer_attribution"]["values"], b["layer_attribution"]["values"]),
            ("head_attribution", a["head_attribution"], b["head_attribution"])]
    for kind in ("zero", "mean"):
        for metric in ("logit_diff", "loss"):
            rows.append((f"head_ablation.{kind}.{metric}", a["head_ablation"][kind][metric], b["head_ablation"][kind][metric]))
    for key in ("resid_patching", "attn_patching", "mlp_patching", "head_patching"):
        if key in a:
            rows.append((f"{key}.values", a[key]["values"], b[key]["values"]))
    for name, x, y in rows:
        fx, fy = _flat(x), _flat(y)
        diff = max(abs(p - q) for p, q in zip(fx, fy))
        print(f"{name:34s} {diff:12.4f} {max(abs(v) for v in fx):10.3f}")


if __name__ == "__main__":
    main()
