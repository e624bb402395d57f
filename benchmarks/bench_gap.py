"""Benchmark: where the sweeps' time goes, and so where the gap between their FLOP rate and the machine's fp32
matmul rate comes from.

Runs the loops' sweeps (zero- and mean-ablation of every head with logit difference and loss, and all patching of
the task's own pair) under torch's profiler and splits the operators' own CPU time into

* matrix products (oneDNN's linear, mm/bmm/addmm/matmul): the work the FLOP count is mostly made of;
* attention (scaled_dot_product_attention and its kernels);
* the log-partition function over the vocabulary (logsumexp, exp, max: the loss's read-out besides its product);
* norms and other element-wise work (RMSNorm/LayerNorm arithmetic, GELU, rotary, adds, multiplications);
* data movement (copy, cat, index, gather, scatter, contiguous, clone, narrow/slice views);
* everything else;

and prints each share, then the rate the matrix products reach on their own (the FLOPs of those products,
counted from the recorded shapes, over their time) next to the machine's fp32 matmul rate measured in the same
run. The whole sweep rate is lower than the products' rate by the time spent outside products; the products'
rate is lower than the square-matrix rate by the shapes (thin products, few rows per layer at the last layers).

The profiler adds its own overhead per operator call (larger for many small calls), so the shares are read as
proportions, and the timed run without the profiler is printed beside them.

``--shared-length N``: the ``pronouns`` prompts behind one filler every prompt shares, about N tokens in all
(``bench_scaling.py``'s shared-length configuration), to see where the time goes with a long shared context.

Usage: python benchmarks/bench_gap.py [--model builtin] [--task pronouns] [--shared-length N]
Run it alone: two torch processes on two cores slow each other many times over.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

torch.set_grad_enabled(False)

PRODUCTS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear",
            "aten::matmul", "aten::mkldnn_linear", "aten::_mkldnn_linear")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::_softmax", "aten::softmax")
LOGPART = ("aten::logsumexp", "aten::exp", "aten::exp_", "aten::amax", "aten::max", "aten::log")
MOVES = ("aten::copy_", "aten::cat", "aten::index", "aten::index_select", "aten::gather", "aten::scatter",
         "aten::contiguous", "aten::clone", "aten::index_put_", "aten::_index_put_impl_", "aten::stack",
         "aten::masked_fill", "aten::fill_", "aten::zero_", "aten::zeros", "aten::empty", "aten::empty_strided",
         "aten::repeat_interleave", "aten::expand", "aten::as_strided", "aten::narrow", "aten::slice",
         "aten::select", "aten::view", "aten::reshape", "aten::permute", "aten::transpose", "aten::unsqueeze",
         "aten::split", "aten::chunk", "aten::flatten", "aten::t", "aten::_unsafe_view", "aten::resize_")
ELEMENTWISE = ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::rsqrt", "aten::pow", "aten::mean",
               "aten::var", "aten::sum", "aten::gelu", "aten::silu", "aten::tanh", "aten::neg", "aten::sqrt",
               "aten::layer_norm", "aten::native_layer_norm", "aten::rms_norm", "aten::addcmul", "aten::sigmoid",
               "aten::cos", "aten::sin", "aten::where", "aten::lerp", "aten::square", "aten::_fused_rms_norm")


def _category(name: str) -> str:
    base = name.rstrip("_") if name.startswith("aten::") else name
    if name in PRODUCTS:
        return "matrix products"
    if any(k in name for k in ATTENTION):
        return "attention"
    if name in LOGPART or base in LOGPART:
        return "log-partition (loss read-out)"
    if name in MOVES or base in MOVES:
        return "data movement"
    if name in ELEMENTWISE or base in ELEMENTWISE:
        return "norms and element-wise"
    return "other"


def _product_flops(name: str, shapes: list) -> float:  # noqa: ANN001
    """FLOPs of one recorded product call from its input shapes (0 where the shapes are not recorded)."""
    try:
        if name in ("mkldnn::_linear_pointwise", "aten::linear", "aten::mkldnn_linear", "aten::_mkldnn_linear"):
            x, w = shapes[0], shapes[1]
            return 2.0 * math.prod(x[:-1]) * x[-1] * w[0]
        if name in ("aten::mm", "aten::addmm"):
            a, b = (shapes[1], shapes[2]) if name == "aten::addmm" else (shapes[0], shapes[1])
            return 2.0 * a[0] * a[1] * b[1]
        if name in ("aten::bmm", "aten::baddbmm"):
            a, b = (shapes[1], shapes[2]) if name == "aten::baddbmm" else (shapes[0], shapes[1])
            return 2.0 * a[0] * a[1] * a[2] * b[2]
    except (IndexError, TypeError):
        return 0.0
    return 0.0


def sweeps(model, tt, stats) -> None:  # noqa: ANN001
    """The loops' sweeps: zero- and mean-ablation (logit difference and loss), all patching of the task's pair."""
    from logitlab.analyses import activation_patching, clean_run, head_ablation
    from logitlab.sweep import SweepSettings
    settings = SweepSettings(stats=stats)
    run = clean_run(model, tt)
    for kind in ("zero", "mean"):
        head_ablation(run, kind, settings)
    activation_patching(model, tt, settings, generated=False)


def main() -> None:
    import logitlab
    from logitlab._alloc import keep_freed_memory
    from logitlab.sweep import SweepStats
    from bench_battery import matmul_flops  # same folder

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--task", default="pronouns")
    ap.add_argument("--shared-length", type=int, default=0, help="pronouns behind a shared filler of ~N tokens")
    args = ap.parse_args()
    keep_freed_memory()
    rates = matmul_flops()
    mm = max(rates.values())
    model = logitlab.load_model(args.model)
    if args.shared_length:
        from bench_scaling import scaled_task  # same folder
        task = scaled_task(model, "shared-length", args.shared_length)
    else:
        task = logitlab.load_task(args.task)
    tt = logitlab.tokenize_task(task, model.tokenizer)
    print(f"task {task.name}: {tt.n_prompts} prompts of {int(tt.final_pos.max()) + 1} tokens")

    plain = SweepStats()
    t = time.perf_counter()
    sweeps(model, tt, plain)
    plain_s = time.perf_counter() - t

    # Shapes (for the products' own FLOP count) only for short prompts: at long ones the profiler's records of every
    # distinct shape outgrow the memory (24 GB at 172 tokens).
    shapes = not args.shared_length
    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        profiled = SweepStats()
        t = time.perf_counter()
        sweeps(model, tt, profiled)
        prof_s = time.perf_counter() - t

    own: dict[str, float] = defaultdict(float)  # category -> self CPU seconds
    product_flops = product_s = 0.0
    for ev in prof.key_averages(group_by_input_shape=shapes):
        secs = ev.self_cpu_time_total / 1e6
        cat = _category(ev.key)
        own[cat] += secs
        if cat == "matrix products":
            product_s += secs
            product_flops += ev.count * _product_flops(ev.key, ev.input_shapes) if shapes else 0.0
    total = sum(own.values())

    for name, rate in rates.items():
        print(f"fp32 matmul (2048² products), {name}: {rate / 1e9:.0f} GFLOP/s")
    print(f"sweeps without the profiler: {plain_s:.2f} s, {plain.flops / 1e12:.2f} TFLOP (logitlab's count) = "
          f"{plain.flops_per_second / 1e9:.0f} GFLOP/s = {plain.flops_per_second / mm:.0%} of the matmul rate")
    print(f"sweeps under the profiler:   {prof_s:.2f} s (operators' own CPU time {total:.2f} s, summed over threads' "
          "calls as the profiler records them)")
    print("\nwhere the operators' own time goes:")
    for cat, secs in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:32s} {secs:8.2f} s  {secs / total:6.1%}")
    if product_s > 0 and not shapes:
        print(f"\nmatrix products alone: {plain.flops / 1e12:.2f} TFLOP (logitlab's count) in {product_s:.2f} s = "
              f"{plain.flops / product_s / 1e9:.0f} GFLOP/s = {plain.flops / product_s / mm:.0%} of the matmul rate")
    if product_s > 0 and shapes:
        print(f"\nmatrix products alone: {product_flops / 1e12:.2f} TFLOP in {product_s:.2f} s = "
              f"{product_flops / product_s / 1e9:.0f} GFLOP/s = {product_flops / product_s / mm:.0%} of the matmul rate "
              f"({product_flops / plain.flops:.0%} of logitlab's FLOP count)")
    print("\nthe 15 operators with the most own time:")
    by_op: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        by_op[ev.key] += ev.self_cpu_time_total / 1e6
    for key, secs in sorted(by_op.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {key:48s} {secs:8.2f} s  {secs / total:6.1%}  [{_category(key)}]")


if __name__ == "__main__":
    main()
