"""Benchmark: logitlab's sweeps against the best batched ways to write them in nnsight and in TransformerLens.

The same analyses on the same model and task, side by side in one process:

* zero- and mean-ablation of every query head (logit difference and loss at each prompt's final position);
* activation patching clean → corrupted of resid_pre, attn_out, mlp_out per (layer, position) and of each head.

Peers, written the way their skilled users write them:

(n) **nnsight** on the Hugging Face model: one trace per layer, the batch expanded over the interventions of
    that layer (every head × every prompt for ablation — zero and mean in the same trace —, every (kind,
    position) × pair for patching), each row group edited at its own module (``o_proj`` input for a head,
    the decoder layer's input for resid_pre, the post-attention/post-MLP output for attn_out/mlp_out), and
    ``logits_to_keep=1`` so only the final position is unembedded.
(t) **TransformerLens** (4.x ``TransformerBridge``, compatibility mode): one ``run_with_hooks`` per layer over the
    same expanded batch, hooks editing their row groups, ``stop_at_layer`` so the full-vocabulary logits are
    computed at the final position only (``ln_final`` + ``unembed`` there).
(l) **logitlab**: ``head_ablation`` (zero, mean) and ``activation_patching``; and the whole battery.

Every peer's numbers are checked against logitlab's (max abs difference printed; ≤ 1e-4 expected).

Usage: python benchmarks/bench_peers.py [--model builtin] [--task pronouns] [--skip-tl] [--skip-nnsight]
(nnsight is not a logitlab dependency: ``pip install nnsight`` to include it.)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

torch.set_grad_enabled(False)


def _metrics(logits: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit difference (correct − mean of the row's own incorrect answers) and −log p(correct), float32."""
    from logitlab.answers import columns, mean_incorrect
    logits = logits.float()
    rows = torch.arange(logits.shape[0])
    diff = logits[rows, correct] - mean_incorrect(logits.gather(1, columns(incorrect)), incorrect)
    return diff, torch.logsumexp(logits, -1) - logits[rows, correct]


def _modules(lm: object, layer: int) -> dict[str, object]:
    """The nnsight-visible modules whose inputs/outputs are TransformerLens's hook points, for this layer."""
    block = lm.model.layers[layer]  # type: ignore[attr-defined]
    post_norms = hasattr(block, "post_feedforward_layernorm")
    return {"z": block.self_attn.o_proj, "resid_pre": block,
            "attn_out": block.post_attention_layernorm if post_norms else block.self_attn,
            "mlp_out": block.post_feedforward_layernorm if post_norms else block.mlp}


# ---- nnsight -------------------------------------------------------------------------------------------------
def nnsight_ablation(lm, tokens, correct, incorrect, L, H, dh):  # noqa: ANN001, ANN201
    """Zero and mean ablation of every head; one trace per layer over 2·H·B rows. Returns (2, L, H, B) × 2."""
    B = tokens.shape[0]
    z_clean: list = []  # filled inside the trace (a trace passes back saved values through outer objects)
    with lm.trace(tokens):
        for l in range(L):
            z_clean.append(lm.model.layers[l].self_attn.o_proj.input.save())
    means = [z.mean(0) for z in z_clean]  # (T, H·dh) per layer
    out_d = torch.zeros(2, L, H, B)
    out_l = torch.zeros_like(out_d)
    rep = tokens.repeat(2 * H, 1)
    for l in range(L):
        with lm.trace(rep, logits_to_keep=1):
            x = lm.model.layers[l].self_attn.o_proj.input
            for k in range(2):
                for h in range(H):
                    g = (k * H + h) * B
                    x[g:g + B, :, h * dh:(h + 1) * dh] = 0.0 if k == 0 else means[l][:, h * dh:(h + 1) * dh]
            logits = lm.output.logits.save()
        d, lo = _metrics(logits[:, -1], correct.repeat(2 * H), incorrect.repeat(2 * H, 1))
        out_d[:, l] = d.view(2, H, B)
        out_l[:, l] = lo.view(2, H, B)
    return out_d, out_l


def nnsight_logit_diff(lm, tokens, correct, incorrect):  # noqa: ANN001, ANN201
    """Each row's logit difference at the last position, unpatched (a pair's clean or corrupted end)."""
    with lm.trace(tokens, logits_to_keep=1):
        logits = lm.output.logits.save()
    return _metrics(logits[:, -1], correct, incorrect)[0]


def nnsight_patching(lm, hf, clean, corrupted, correct, incorrect, L, H, dh, per_pair=False):  # noqa: ANN001, ANN201
    """Patching of resid_pre/attn_out/mlp_out per position and of each head: one trace per layer.

    Returns the patched logit difference, mean over the pairs ((L, T) and (L, H) for heads), or per pair
    ((L, T, n), (L, H, n)) with ``per_pair``."""
    n, T = clean.shape
    kinds = ("resid_pre", "attn_out", "mlp_out")
    saved: dict = {}
    with lm.trace(clean):
        # (in execution order within each layer: a trace reads modules as the forward pass reaches them)
        for l in range(L):
            for k in ("resid_pre", "z", "attn_out", "mlp_out"):
                mod = _modules(lm, l)[k]
                saved[(k, l)] = (mod.input if k in ("resid_pre", "z") else mod.output).save()
    cl = {key: (v[0] if isinstance(v, tuple) else v) for key, v in saved.items()}
    groups = 3 * T + H
    rep = corrupted.repeat(groups, 1)
    extra = (n,) if per_pair else ()
    out = {k: torch.zeros(L, T, *extra) for k in kinds}
    out["z"] = torch.zeros(L, H, *extra)
    for l in range(L):
        mods = _modules(lm, l)
        with lm.trace(rep, logits_to_keep=1):
            x = mods["resid_pre"].input
            for p in range(T):
                x[p * n:(p + 1) * n, p] = cl[("resid_pre", l)][:, p]
            zz = mods["z"].input  # o_proj runs before the attention output's norm
            for h in range(H):
                g = (3 * T + h) * n
                zz[g:g + n, :, h * dh:(h + 1) * dh] = cl[("z", l)][:, :, h * dh:(h + 1) * dh]
            a = mods["attn_out"].output
            a = a[0] if isinstance(a, tuple) else a
            for p in range(T):
                g = (T + p) * n
                a[g:g + n, p] = cl[("attn_out", l)][:, p]
            m = mods["mlp_out"].output
            for p in range(T):
                g = (2 * T + p) * n
                m[g:g + n, p] = cl[("mlp_out", l)][:, p]
            logits = lm.output.logits.save()
        d, _ = _metrics(logits[:, -1], correct.repeat(groups), incorrect.repeat(groups, 1))
        d = d.view(groups, n) if per_pair else d.view(groups, n).mean(-1)
        for i, k in enumerate(kinds):
            out[k][l] = d[i * T:(i + 1) * T]
        out["z"][l] = d[3 * T:]
    return out


# ---- TransformerLens ---------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the final-norm hook: the final position's normalised residual is all the metrics need."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.x = x


def _tl_final(bridge, tokens, hooks, L):  # noqa: ANN001, ANN201
    """Full logits at the last position: the blocks with hooks, then the unembedding of the last position only.

    (``stop_at_layer`` cannot stop after the last block, so the final norm's hook hands the last position out
    and stops the forward pass before the full-vocabulary unembedding of every position.)
    """
    def grab(x, hook):  # noqa: ANN001, ANN202
        raise _Stop(x[:, -1:].clone())
    try:
        bridge.run_with_hooks(tokens, fwd_hooks=[*hooks, ("ln_final.hook_normalized", grab)])
    except _Stop as stop:
        return bridge.unembed(stop.x)[:, 0]
    raise RuntimeError("the final-norm hook did not run")


def tl_ablation(bridge, tokens, correct, incorrect, L, H):  # noqa: ANN001, ANN201
    B = tokens.shape[0]
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_z"))
    out_d = torch.zeros(2, L, H, B)
    out_l = torch.zeros_like(out_d)
    rep = tokens.repeat(2 * H, 1)
    for l in range(L):
        mean = cache[f"blocks.{l}.attn.hook_z"].mean(0)  # (T, H, dh)

        def hook(z, hook, mean=mean):  # noqa: ANN001, ANN202
            for k in range(2):
                for h in range(H):
                    g = (k * H + h) * B
                    z[g:g + B, :, h] = 0.0 if k == 0 else mean[:, h]
            return z
        logits = _tl_final(bridge, rep, [(f"blocks.{l}.attn.hook_z", hook)], L)
        d, lo = _metrics(logits, correct.repeat(2 * H), incorrect.repeat(2 * H, 1))
        out_d[:, l], out_l[:, l] = d.view(2, H, B), lo.view(2, H, B)
    return out_d, out_l


def tl_logit_diff(bridge, tokens, correct, incorrect, L):  # noqa: ANN001, ANN201
    """Each row's logit difference at the last position, unpatched (a pair's clean or corrupted end)."""
    return _metrics(_tl_final(bridge, tokens, [], L), correct, incorrect)[0]


def tl_patching(bridge, clean, corrupted, correct, incorrect, L, H, per_pair=False):  # noqa: ANN001, ANN201
    """As :func:`nnsight_patching`, with one ``run_with_hooks`` per layer."""
    n, T = clean.shape
    kinds = ("resid_pre", "attn_out", "mlp_out")
    _, cache = bridge.run_with_cache(clean)
    groups = 3 * T + H
    rep = corrupted.repeat(groups, 1)
    extra = (n,) if per_pair else ()
    out = {k: torch.zeros(L, T, *extra) for k in kinds}
    out["z"] = torch.zeros(L, H, *extra)
    for l in range(L):
        def pos_hook(i):  # noqa: ANN001, ANN202
            def hook(x, hook):  # noqa: ANN001, ANN202
                for p in range(T):
                    g = (i * T + p) * n
                    x[g:g + n, p] = cache[hook.name][:, p]
                return x
            return hook

        def z_hook(z, hook):  # noqa: ANN001, ANN202
            for h in range(H):
                g = (3 * T + h) * n
                z[g:g + n, :, h] = cache[hook.name][:, :, h]
            return z
        hooks = [(f"blocks.{l}.hook_{k}", pos_hook(i)) for i, k in enumerate(kinds)]
        hooks.append((f"blocks.{l}.attn.hook_z", z_hook))
        logits = _tl_final(bridge, rep, hooks, L)
        d, _ = _metrics(logits, correct.repeat(groups), incorrect.repeat(groups, 1))
        d = d.view(groups, n) if per_pair else d.view(groups, n).mean(-1)
        for i, k in enumerate(kinds):
            out[k][l] = d[i * T:(i + 1) * T]
        out["z"][l] = d[3 * T:]
    return out


def _timed(fn):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--task", default="pronouns")
    ap.add_argument("--skip-tl", action="store_true")
    ap.add_argument("--skip-nnsight", action="store_true")
    args = ap.parse_args()
    import logitlab
    from logitlab.analyses import activation_patching, clean_run, head_ablation
    from logitlab.battery import RunConfig, run_battery
    logitlab.keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    m = logitlab.load_model(args.model)
    task = logitlab.load_task(args.task)
    t = logitlab.tokenize_task(task, m.tokenizer)
    if len(set(t.final_pos.tolist())) != 1:
        raise SystemExit("the peers read the last position: use a task whose prompts share one length")
    L, H, dh = m.spec.n_layers, m.spec.n_heads, m.spec.d_head
    tokens, correct, incorrect = t.tokens, t.correct_ids, t.incorrect_ids
    clean, corr = t.clean_tokens, t.corrupted_tokens
    pc, pi = t.pair_correct_ids, t.pair_incorrect_ids

    def ours():  # noqa: ANN202
        run = clean_run(m, t)
        z, me = head_ablation(run, "zero"), head_ablation(run, "mean")
        return z, me, activation_patching(m, t, generated=False)  # the task's pair, as the peers patch
    (z_ab, m_ab, patch), t_ours = _timed(ours)
    # The battery with the same analyses (as bench_battery.py's (b)): the sweeps above plus the always-run ones.
    _, t_battery = _timed(lambda: run_battery(m, task, RunConfig(patching_pairs=0, analyses=("ablation", "patching"))))
    ref_d = torch.stack([z_ab.logit_diff, m_ab.logit_diff])
    ref_l = torch.stack([z_ab.loss, m_ab.loss])
    raw = patch.raw_reference() if hasattr(patch, "raw_reference") else {
        "resid_pre": patch.resid, "attn_out": patch.attn, "mlp_out": patch.mlp, "z": patch.heads}
    print(f"(l) logitlab: ablation (zero+mean, logit diff+loss) + all patching: {t_ours:.1f} s; "
          f"battery with these analyses (--analyses ablation,patching --patching-pairs 0): {t_battery:.1f} s")

    def check(name: str, d, lo, p) -> float:  # noqa: ANN001
        worst = max((d - ref_d).abs().max().item(), (lo - ref_l).abs().max().item(),
                    *((p[k] - raw[k]).abs().max().item() for k in raw))
        print(f"    {name}: max abs difference to logitlab {worst:.1e}")
        return worst

    if not args.skip_nnsight:
        try:
            from nnsight import LanguageModel
        except ImportError:
            print("(n) nnsight: not installed (pip install nnsight), skipped")
            args.skip_nnsight = True
    if not args.skip_nnsight:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        hf = AutoModelForCausalLM.from_pretrained(m.source, dtype=torch.float32).eval()
        lm = LanguageModel(hf, tokenizer=AutoTokenizer.from_pretrained(m.source))
        (nd, nl), ta = _timed(lambda: nnsight_ablation(lm, tokens, correct, incorrect, L, H, dh))
        npatch, tp = _timed(lambda: nnsight_patching(lm, hf, clean, corr, pc, pi, L, H, dh))
        print(f"(n) nnsight batched: ablation {ta:.1f} s + patching {tp:.1f} s = {ta + tp:.1f} s "
              f"→ logitlab {(ta + tp) / t_ours:.1f}× faster on the same analyses")
        check("nnsight", nd, nl, npatch)
    if not args.skip_tl:
        bridge = m.bridge
        (td, tl_), ta = _timed(lambda: tl_ablation(bridge, tokens, correct, incorrect, L, H))
        tpatch, tp = _timed(lambda: tl_patching(bridge, clean, corr, pc, pi, L, H))
        print(f"(t) TransformerLens batched: ablation {ta:.1f} s + patching {tp:.1f} s = {ta + tp:.1f} s "
              f"→ logitlab {(ta + tp) / t_ours:.1f}× faster on the same analyses")
        check("TransformerLens", td, tl_, tpatch)


if __name__ == "__main__":
    main()
