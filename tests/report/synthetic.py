"""Synthetic ``results.json`` dicts for the report tests, valid against :class:`logitlab.results.Results`.

The numbers are random but internally consistent (the layer attribution sums to
``dla.reconstructed_mean``, heads plus the attention bias sum to each layer's
``L_attn_out`` attribution, the logit lens accumulates the layer attribution, …),
and the strings are deliberately hostile (HTML/JS injection attempts, entities,
repeated tokens) so that escaping can be tested.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

import logitlab.registry as registry
from logitlab.analyses.ablation import AblationResult
from logitlab.analyses.attribution import DLAResult
from logitlab.analyses.heads import HeadAttributionResult
from logitlab.analyses.robustness import GroupLogitDiff, RobustnessResult, TemplateRobustness
from logitlab.results import SCHEMA_VERSION, AblationScores, Results
from logitlab.stats import paired

BOS = "<|endoftext|>"
HOSTILE_PROMPT_PART = "<script>alert(1)</script>"
#: Content tokens cycled to build prompts; note the repeated "’" and the hostile ones.
CONTENT_TOKENS = [
    "Mary",
    "’",
    "</script>",
    " <script>alert(1)</script>",
    " &amp;",
    "’",
    "</div>",
    " friend",
    " isn",
    "’",
    "t",
]
NAMES = ["Mary", "John", "Anna", "Tom & Jerry", "Lucy", "Peter", "Emma", "Paul"]


def _stderr(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sample standard error along ``axis`` (0 when there is a single sample)."""
    n = x.shape[axis]
    if n < 2:
        return np.zeros(np.delete(np.array(x.shape), axis))
    return x.std(axis=axis, ddof=1) / math.sqrt(n)


def _per_prompt(rng: np.random.Generator, means: np.ndarray, n: int, scale: float) -> np.ndarray:
    """Per-prompt values (..., n) whose mean over prompts is exactly ``means``: noise centred per row."""
    noise = rng.normal(0.0, scale, (*means.shape, n))
    return means[..., None] + noise - noise.mean(-1, keepdims=True)


def _ci(x: np.ndarray) -> list:
    """The battery's 95% bootstrap CI over the last dimension (:func:`logitlab.stats.paired`)."""
    return paired(torch.tensor(x, dtype=torch.float64)).ci.tolist()


def _group(label: str, idx: list[int], per_prompt: np.ndarray) -> GroupLogitDiff:
    p = paired(torch.tensor(per_prompt[idx], dtype=torch.float64)[None])
    return GroupLogitDiff(label, tuple(idx), float(p.mean[0]), float(p.stderr[0]),
                          (float(p.ci[0, 0]), float(p.ci[0, 1])))


def _one_pair(values: np.ndarray) -> dict[str, Any]:
    """The uncertainty fields of a patching section computed from one reference pair."""
    return {"stderr": np.zeros_like(values).tolist(), "ci": np.stack([values, values], -1).tolist(),
            "n_pairs": 1, "n_excluded": 0, "pairs": "reference", "pooled": None, "per_template": []}


def _tokens(i: int, n_pos: int) -> list[str]:
    """Token strings (BOS included) of prompt ``i``: ``n_pos`` tokens for even i, one more for odd."""
    length = n_pos + (i % 2)
    body = [CONTENT_TOKENS[k % len(CONTENT_TOKENS)] for k in range(length - 1)]
    if body:
        body[0] = NAMES[i % len(NAMES)]
    return [BOS, *body]


def _causal_pattern(rng: np.random.Generator, n: int) -> list[list[float]]:
    """A random causal attention pattern, rows summing to 1."""
    logits = rng.normal(0.0, 1.5, (n, n))
    mask = np.tril(np.ones((n, n), dtype=bool))
    logits = np.where(mask, logits, -np.inf)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.tolist()


def make_results(
    n_layers: int = 3,
    n_heads: int = 4,
    n_prompts: int = 6,
    n_pos: int = 7,
    seed: int = 0,
    *,
    post_norm: bool = True,
    unembed_bias: bool = True,
    learned_pos: bool = True,
) -> Results:
    """Build a random-but-consistent results dict of the current schema (``logitlab.results.Results``).

    Args:
        n_layers: Number of layers.
        n_heads: Query heads per layer.
        n_prompts: Number of task prompts.
        n_pos: Token count (BOS included) of the clean patching prompt.
        seed: RNG seed.
        post_norm: Whether the model has post-attention norms (``naive`` head attribution present).
        unembed_bias: Whether the model has an unembedding bias.
        learned_pos: Whether a ``pos_embed`` component appears in the layer attribution.

    Returns:
        The results dict.
    """
    if n_pos < 3:
        raise ValueError("n_pos must be at least 3")
    rng = np.random.default_rng(seed)
    L, H = n_layers, n_heads

    prompt_tokens = [_tokens(i, n_pos) for i in range(n_prompts)]
    prompts = ["".join(t[1:]) for t in prompt_tokens]
    answers = [[" she", " he"] if i % 2 == 0 else [" he", "</div>"] for i in range(n_prompts)]

    per_prompt = rng.normal(2.5, 1.0, n_prompts)
    per_prompt[-1] = -abs(per_prompt[-1]) * 0.3  # at least one wrong prompt
    loss = np.log1p(np.exp(-per_prompt))  # −log p(correct) if only the two answers had mass
    mean = float(per_prompt.mean())
    stderr = float(_stderr(per_prompt))

    b_u_c, b_u_i = (0.31, 0.19) if unembed_bias else (0.0, 0.0)
    bias_term = b_u_c - b_u_i
    reconstructed = mean - bias_term + 1e-7 * mean
    # The DLA check of the battery, on per-prompt values off by 1e-7·mean each.
    dla = DLAResult(torch.tensor(per_prompt - bias_term + 1e-7 * mean, dtype=torch.float64),
                    torch.full((n_prompts,), bias_term, dtype=torch.float64),
                    torch.tensor(per_prompt, dtype=torch.float64)).to_dict()

    heads = rng.normal(0.0, 0.3, (L, H))
    heads[L - 1, H - 1] += 1.5  # one strong head
    head_err = np.abs(rng.normal(0.05, 0.02, (L, H)))
    attn_bias = rng.normal(0.0, 0.02, L) if unembed_bias else np.zeros(L)
    mlp = rng.normal(0.0, 0.3, L)
    mlp[L // 2] += 1.0  # one strong MLP
    labels = ["embed"] + (["pos_embed"] if learned_pos else [])
    values: list[float] = [0.0] + ([float(rng.normal(0, 0.1))] if learned_pos else [])
    for layer in range(L):
        labels += [f"{layer}_attn_out", f"{layer}_mlp_out"]
        values += [float(heads[layer].sum() + attn_bias[layer]), float(mlp[layer])]
    values[0] = reconstructed - sum(values[1:])  # embed closes the sum exactly
    layer_err = np.abs(rng.normal(0.1, 0.03, len(values)))
    layer_ci = _ci(_per_prompt(rng, np.array(values), n_prompts, 0.2))

    lens_labels: list[str] = []
    lens_values: list[float] = []
    acc = sum(values[: 2 if learned_pos else 1])
    off = 2 if learned_pos else 1
    for layer in range(L):
        lens_labels.append(f"{layer}_pre")
        lens_values.append(acc)
        acc += values[off + 2 * layer]
        lens_labels.append(f"{layer}_mid")
        lens_values.append(acc)
        acc += values[off + 2 * layer + 1]
    lens_labels.append("final_post")
    lens_values.append(acc)
    lens_err = np.abs(rng.normal(0.15, 0.05, len(lens_values)))
    lens_ci = _ci(_per_prompt(rng, np.array(lens_values), n_prompts, 0.3))
    # Per-prompt head attributions around the means; the CI and the separation test are the battery's code.
    heads_pp = _per_prompt(rng, heads, n_prompts, 0.1)
    head_res = HeadAttributionResult(torch.tensor(heads_pp, dtype=torch.float64),
                                     torch.zeros(L, n_prompts, dtype=torch.float64), None)
    head_ci, head_top = _ci(heads_pp), head_res.top_separation()

    order = np.argsort(-np.abs(heads), axis=None)[: min(3, L * H)]
    attn_tokens = prompt_tokens[0]
    attn_heads = [
        {
            "layer": int(idx // H),
            "head": int(idx % H),
            "attribution": float(heads.flat[idx]),
            "pattern": _causal_pattern(rng, len(attn_tokens)),
        }
        for idx in order
    ]

    baseline_loss = 0.9

    def _ablation(shift: float) -> AblationScores:
        """One ablation kind; ``shift`` moves the logit differences."""
        ld = mean + rng.normal(shift, 0.3, (L, H))
        ld[L - 1, H - 1] = mean - 1.8 * (1 + shift)
        loss = baseline_loss + rng.normal(0.05, 0.1, (L, H))
        loss[L - 1, H - 1] = baseline_loss + 0.7
        # Per-prompt values: each prompt's own baseline moved by the head's effect, plus a little noise; the
        # summaries (means, paired stderr and CIs, the top head) come from the battery's own code.
        ld_pp = per_prompt[None, None, :] + (ld - mean)[..., None] + rng.normal(0.0, 0.05, (L, H, n_prompts))
        loss_pp = baseline_loss + (loss - baseline_loss)[..., None] + rng.normal(0.0, 0.02, (L, H, n_prompts))
        res = AblationResult("zero", torch.tensor(ld_pp, dtype=torch.float32),
                             torch.tensor(loss_pp, dtype=torch.float32), torch.tensor(per_prompt, dtype=torch.float32),
                             torch.full((n_prompts,), baseline_loss))
        return res.to_dict()  # type: ignore[return-value]

    zero, mean_ab = _ablation(0.0), _ablation(-0.5)
    robustness = None
    if n_prompts >= 2:  # two templates: the first half of the prompts and the second
        origin = [2 * i // n_prompts for i in range(n_prompts)]
        rows = []
        for t in (0, 1):
            idx = [i for i in range(n_prompts) if origin[i] == t]
            m = heads_pp[..., idx].mean(-1).flatten()
            d = int(np.abs(m).argmax())
            tops = []
            for kind, ab in (("zero", zero), ("mean", mean_ab)):
                a_m = np.array(ab["delta_logit_diff_per_prompt"])[..., idx].mean(-1).flatten()
                a = int(a_m.argmin())
                tops.append((kind, (a // H, a % H, float(a_m[a]))))
            rows.append(TemplateRobustness(t, _group(f"{{}} template <b>{t}</b>, isn’t", idx, per_prompt),
                                           (d // H, d % H, float(m[d])), tuple(tops)))
        subj = tuple((_group(NAMES[k % len(NAMES)], [i for i in range(n_prompts) if i % 2 == k], per_prompt),
                      "she" if k == 0 else "he") for k in (0, 1))
        robustness = RobustnessResult(tuple(rows), subj).to_dict()

    resid = rng.normal(0.0, 0.05, (L, n_pos))
    for layer in range(L):
        frac = layer / max(L - 1, 1)
        resid[layer, 1] += 1.0 - frac
        resid[layer, -1] += frac
    attn_p = rng.normal(0.0, 0.05, (L, n_pos))
    attn_p[:, -1] += np.linspace(0.0, 0.6, L)
    mlp_p = rng.normal(0.0, 0.05, (L, n_pos))
    mlp_p[0, 1] += 0.8

    top_k = 5
    predictions = []
    for i in range(min(2, n_prompts)):
        correct, incorrect = answers[i]
        toks = [correct, incorrect, "</div>", " <b>bold</b>", " &lt;"]
        logits = sorted(rng.normal(10.0, 2.0, top_k).tolist(), reverse=True)
        z = np.exp(np.array(logits) - max(logits))
        probs = (z / z.sum() * 0.8).tolist()
        predictions.append(
            {
                "prompt": prompts[i],
                "tokens": prompt_tokens[i],
                "top": [
                    {"token": t, "logit": float(lg), "prob": float(p)}
                    for t, lg, p in zip(toks, logits, probs)
                ],
                "answer": correct,
                "answer_rank": 0,
                "answer_prob": float(probs[0]),
            }
        )

    model = {
        "name": "synthetic/<b>tiny</b>-model & co",
        "architecture": "gemma3_text" if post_norm else "gpt2",
        "n_layers": L,
        "n_heads": H,
        "n_kv_heads": H,
        "d_model": 64,
        "d_head": 16,
        "d_vocab": 1000,
        "normalization": "RMS" if post_norm else "LN",
        "post_attention_norm": post_norm,
        "parallel_attn_mlp": False,
        "dtype": "float32",
        "device": "cpu",
    }
    task_name = "pronouns <i>synthetic</i>"
    out: Results = {
        "schema_version": SCHEMA_VERSION,
        "logitlab_version": "0.1.0",
        "config": {
            "model": model["name"],
            "task": task_name,
            "device": "cpu",
            "dtype": "float32",
            "top_k": top_k,
            "n_attention_heads": len(attn_heads),
            "attention_prompt": 0,
            "n_predictions": len(predictions),
            "max_memory": None,
            "patching_pairs": 12,
            "transcoders": "",
            "feature_prompts": 16,
            "feature_top": 20,
            "feature_check": 5,
            "exact": False,
            "screen_top": 8,
            "screen_sample": 8,
            "patching_target": 0.1,
            "analyses": ["attention", "ablation", "patching", "atp", "path_patching", "robustness"],
            "circuit": {"pairs": 16, "ig_steps": 5, "n_random": 20, "threshold": 0.8, "n_senders": 4, "path_pairs": 8},
        },
        "model": model,
        "task": {
            "name": task_name,
            "prompts": prompts,
            "answers": answers,
            "prompt_tokens": prompt_tokens,
            "patching_pairs": [
                {
                    "clean": prompts[0],
                    "corrupted": prompts[1 % n_prompts],
                    "correct": answers[0][0],
                    "incorrect": answers[0][1],
                }
            ],
        },
        "predictions": predictions,
        "logit_diff": {
            "per_prompt": per_prompt.tolist(),
            "mean": mean,
            "stderr": stderr,
            "ci": _ci(per_prompt[None])[0],
            "prob_ratio": np.exp(per_prompt).tolist(),
            "prob_ratio_of_mean": math.exp(mean),
            "accuracy": float((per_prompt > 0).mean()),
            "loss_per_prompt": loss.tolist(),
            "loss_mean": float(loss.mean()),
        },
        "dla": {**dla, "reconstructed_mean": reconstructed, "bias_term": bias_term, "model_mean": mean},
        "logit_lens": {"labels": lens_labels, "values": lens_values, "stderr": lens_err.tolist(), "ci": lens_ci},
        "layer_attribution": {"labels": labels, "values": values, "stderr": layer_err.tolist(), "ci": layer_ci},
        "head_attribution": heads.tolist(),
        "head_attribution_detail": {
            "stderr": head_err.tolist(),
            "ci": head_ci,
            "top": head_top,  # type: ignore[typeddict-item]
            "attn_bias": attn_bias.tolist(),
            "naive": (heads * rng.normal(1.3, 0.2, (L, H))).tolist() if post_norm else None,
        },
        "attention": {"prompt_index": 0, "tokens": attn_tokens, "heads": attn_heads},
        "head_ablation": {
            "zero": zero,
            "mean": mean_ab,
            "baseline_logit_diff": mean,
            "baseline_loss": baseline_loss,
        },
        # One explicit patching pair (templates that generate no pair): `values` are the reference pair's,
        # with a degenerate CI [v, v]; nothing pooled.
        "resid_patching": {
            "tokens": prompt_tokens[0],
            "values": resid.tolist(),
            "clean_logit_diff": mean,
            "corrupted_logit_diff": -0.8 * mean,
            **_one_pair(resid),
        },
        "attn_patching": {"tokens": prompt_tokens[0], "values": attn_p.tolist(), **_one_pair(attn_p)},
        "mlp_patching": {"tokens": prompt_tokens[0], "values": mlp_p.tolist(), **_one_pair(mlp_p)},
        "head_patching": {"values": (head_p := rng.normal(0.0, 0.2, (L, H))).tolist(), **_one_pair(head_p)},
        "unembed_bias": {
            "present": unembed_bias,
            "correct": answers[0][0],
            "incorrect": answers[0][1],
            "b_U_correct": b_u_c,
            "b_U_incorrect": b_u_i,
            "difference": bias_term,
            "prob_ratio": math.exp(bias_term),
            "note": "b_U[correct] − b_U[incorrect] <alone>"
            if unembed_bias
            else "This model has no unembedding bias.",
            # the task's two answer pairs (even prompts: " she" vs " he", odd: " he" vs "</div>")
            "pairs": [{"correct": a[0], "incorrect": a[1], "b_U_correct": c, "b_U_incorrect": i, "difference": c - i,
                       "n_prompts": sum(1 for b in answers if b == a)}
                      for a, (c, i) in zip(answers[:2], [(b_u_c, b_u_i), (b_u_i, -0.05 if unembed_bias else 0.0)])],
        },
    }
    if robustness is not None:
        out["robustness"] = robustness  # type: ignore[typeddict-item]
    return out


# ---- the circuit sections (attribution_patching, path_patching, circuit) ----------------------------------
# Not yet types of logitlab.results: these dicts follow the layouts of logitlab.analyses.atp.AtPResult.to_dict()
# and of the path-patching and EAP-IG analyses, and are not validated here.

CIRCUIT_KEYS = ("attribution_patching", "path_patching", "circuit")
#: A hostile label: a sender name and an edge's node name that must be shown as text.
HOSTILE_LABEL = "L0H1<img src=x onerror=alert(1)>"


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.clip((a * b).sum() / den, -1, 1)) if den > 0 else None


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


def _atp_part(atp: np.ndarray, exact: np.ndarray, labels: list[str], **extra: Any) -> dict[str, Any]:
    """One AtP kind with its comparison to exact patching (the analysis's statistics, in numpy)."""
    a, e = atp.flatten(), exact.flatten()
    k = min(10, a.size)
    top = lambda x: set(np.argsort(-np.abs(x), kind="stable")[:k].tolist())  # noqa: E731
    worst = np.argsort(-np.abs(a - e), kind="stable")[:5]
    return {**extra, "atp": atp.tolist(), "exact": exact.tolist(), "pearson": _pearson(a, e),
            "spearman": _pearson(_ranks(a), _ranks(e)), "top_k": k, "top_k_overlap": len(top(a) & top(e)) / k,
            "worst": [{"label": labels[i], "atp": float(a[i]), "exact": float(e[i])} for i in worst]}


def _attribution_patching(r: Results, rng: np.random.Generator, n_pairs: int) -> dict[str, Any]:
    """AtP next to the results' exact patching: close on heads and the residual stream, poor on MLP outputs."""
    out: dict[str, Any] = {"method": "atp", "n_pairs": n_pairs, "n_excluded": 2, "min_gap": 1.0}
    exact = np.array(r["head_patching"]["values"])
    L, H = exact.shape
    out["heads"] = _atp_part(exact + rng.normal(0, 0.02, exact.shape), exact,
                             [f"L{l}H{h}" for l in range(L) for h in range(H)], pairs="all", n_pairs=n_pairs)
    for kind, noise in (("resid", 0.03), ("attn", 0.05), ("mlp", 0.6)):
        ex = np.array(r[f"{kind}_patching"]["values"])  # type: ignore[literal-required]
        tokens = list(r[f"{kind}_patching"]["tokens"])  # type: ignore[literal-required]
        labels = [f"L{l} pos {p} {tokens[p]!r}" for l in range(L) for p in range(ex.shape[1])]
        out[kind] = _atp_part(ex + rng.normal(0, noise, ex.shape), ex, labels, pairs="reference", tokens=tokens,
                              n_pairs=n_pairs)
    return out


def _ci_around(v: np.ndarray, half: np.ndarray) -> np.ndarray:
    return np.stack([v - half, v + half], -1)


def _with_nulls(x: np.ndarray, valid: np.ndarray) -> list:
    """``x`` as nested lists with None where ``valid`` is False (``valid`` broadcast over x's leading dims)."""
    def conv(a: Any, m: Any) -> Any:
        if isinstance(m, (bool, np.bool_)):
            return a if m else None
        return [conv(ai, mi) for ai, mi in zip(a, m)]
    return conv(x.tolist(), valid.tolist())


def _path_patching(L: int, H: int, K: int, rng: np.random.Generator, n_pairs: int, n_senders: int,
                   hostile: bool) -> dict[str, Any]:
    """Path patching from ``n_senders`` heads of the earlier layers; sender 0 has one clearly largest path
    (the value input of a last-layer head), sender 1 two paths that are not separated."""
    g = H // K
    heads = [(l, h) for l in range(max(L - 1, 1)) for h in range(H)]
    senders = [heads[int(i)] for i in rng.choice(len(heads), min(n_senders, len(heads)), replace=False)]
    senders.sort()
    S = len(senders)
    lay = np.arange(L)
    after = np.array([lay > l for l, _ in senders])  # (S, L): receivers of q/k/v
    mlp_ok = np.array([lay >= l for l, _ in senders])  # the sender's own layer's MLP comes after it
    q = rng.normal(0, 0.02, (S, L, H))
    k = rng.normal(0, 0.02, (S, L, K))
    v = rng.normal(0, 0.02, (S, L, K))
    mlp = rng.normal(0, 0.02, (S, L))
    direct = rng.normal(0.05, 0.03, S)
    half = 0.03
    if L > 1:
        v[0, L - 1, 0] = 0.45  # sender 0: clearly through the last layer's value input
        if S > 1:
            q[1, L - 1, H - 1], direct[1] = 0.20, 0.18  # sender 1: two tied paths
    q_ci, k_ci, v_ci = (_ci_around(x, np.full(x.shape, half)) for x in (q, k, v))
    node = np.array([max(q[s][after[s]].max(initial=0), v[s][after[s]].max(initial=0), direct[s]) + 0.1
                     for s in range(S)])  # the whole head: a little more than its largest path
    labels = [f"L{l}H{h}" for l, h in senders]
    if hostile and S > 2:
        labels[2] = HOSTILE_LABEL
    return {
        "n_pairs": n_pairs, "n_excluded": 2, "senders": labels, "sender_heads": [[l, h] for l, h in senders],
        "q": _with_nulls(q, np.broadcast_to(after[:, :, None], q.shape)),
        "q_ci": _with_nulls(q_ci, np.broadcast_to(after[:, :, None], q_ci.shape[:-1])),  # a null CI, not [null, null]
        "k": _with_nulls(k, np.broadcast_to(after[:, :, None], k.shape)),
        "k_ci": _with_nulls(k_ci, np.broadcast_to(after[:, :, None], k_ci.shape[:-1])),  # a null CI, not [null, null]
        "v": _with_nulls(v, np.broadcast_to(after[:, :, None], v.shape)),
        "v_ci": _with_nulls(v_ci, np.broadcast_to(after[:, :, None], v_ci.shape[:-1])),  # a null CI, not [null, null]
        "mlp": _with_nulls(mlp, mlp_ok), "mlp_ci": _with_nulls(_ci_around(mlp, np.full(mlp.shape, half)),
                                                              mlp_ok),
        "direct": direct.tolist(), "direct_ci": _ci_around(direct, np.full(S, half)).tolist(),
        "node": node.tolist(), "node_ci": _ci_around(node, np.full(S, 0.05)).tolist(), "kv_groups": g,
    }


def _circuit(L: int, H: int, K: int, rng: np.random.Generator, n_pairs: int, chosen: bool,
             hostile: bool) -> dict[str, Any]:
    """EAP-IG edges of the full graph (top 1000 kept) with a planted path input → L0H0 → L{L-1}H0 (value) → logits,
    and a faithfulness curve that reaches the threshold (``chosen``) or stays below it."""
    g = H // K
    nodes = ["input"] + [n for l in range(L) for n in [*(f"L{l}H{h}" for h in range(H)), f"M{l}"]] + ["logits"]
    kv = lambda l, h: f"L{l}G{h // g}" if g > 1 else f"L{l}H{h}"  # noqa: E731
    edges = []

    def add(s: str, r: str, inp: str) -> None:
        edges.append({"sender": s, "receiver": r, "input": inp})

    senders = [("input", -1, False)] + [(n, int(n[1:].split("H")[0]), n.startswith("M")) for n in nodes[1:-1]]
    for s, sl, is_mlp in senders:  # a head's output reaches the later heads, its own layer's MLP on, the logits
        for l in range(sl + 1, L):
            for h in range(H):
                add(s, f"L{l}H{h}", "q")
            for kh in range(K):
                for inp in ("k", "v"):
                    add(s, kv(l, kh * g), inp)
        for l in range(sl + 1 if is_mlp or s == "input" else sl, L):
            add(s, f"M{l}", "mlp")
        add(s, "logits", "logits")
    for e in edges:
        e["score"] = float(rng.normal(0, 0.01))
    planted = {("input", "L0H0", "q"): 0.12, ("L0H0", kv(L - 1, 0), "v"): 0.25, (f"L{L - 1}H0", "logits", "logits"): 0.31}
    if L == 1:
        planted = {("input", "L0H0", "q"): 0.12, ("L0H0", "logits", "logits"): 0.31}
    for e in edges:
        e["score"] = planted.get((e["sender"], e["receiver"], e["input"]), e["score"])
        half = 0.02 if (e["sender"], e["receiver"], e["input"]) in planted else 0.015
        e["score_ci"] = [e["score"] - half, e["score"] + half]
    if hostile:
        edges.append({"sender": HOSTILE_LABEL, "receiver": "logits", "input": "logits", "score": 0.001,
                      "score_ci": [-0.01, 0.012]})
    total = len(edges)
    edges.sort(key=lambda e: -abs(e["score"]))
    edges = edges[:1000]
    grid = sorted({n for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if n < total} | {total})
    top = 0.95 if chosen else 0.7
    rec = np.array([top * (1 - math.exp(-n / 8)) for n in grid])
    rec[-1] = 1.0 if chosen else 0.75
    rnd = np.array([0.9 * n / total for n in grid])
    rec_ci, rnd_ci = _ci_around(rec, np.full(len(grid), 0.05)), _ci_around(rnd, np.full(len(grid), 0.04))
    i = next((j for j, x in enumerate(rec) if x >= 0.8), None) if chosen else None
    return {
        "method": "eap-ig", "ig_steps": 5, "n_pairs": n_pairs, "n_excluded": 2, "n_edges_total": total,
        "nodes": nodes, "edges": edges,
        "faithfulness": {"n_edges": grid, "recovered": rec.tolist(), "recovered_ci": rec_ci.tolist(),
                         "random_mean": rnd.tolist(), "random_ci": rnd_ci.tolist(), "n_random": 20, "random_pairs": 8,
                         "random_pairs_available": 8},
        "chosen": {"n_edges": grid[i] if i is not None else None,
                   "recovered": float(rec[i]) if i is not None else None,
                   "recovered_ci": rec_ci[i].tolist() if i is not None else None, "threshold": 0.8,
                   "random_mean": float(rnd[i]) if i is not None else None,
                   "random_ci": rnd_ci[i].tolist() if i is not None else None},
        "full": 1.0, "empty": 0.0,
    }


def with_circuit(results: Results, *, seed: int = 0, keys: tuple[str, ...] = CIRCUIT_KEYS, n_kv_heads: int | None = None,
                 n_senders: int = 5, chosen: bool = True, hostile: bool = True) -> dict[str, Any]:
    """A copy of ``results`` with the circuit sections added (sized from ``results["model"]``).

    Args:
        results: From :func:`make_results`.
        seed: RNG seed.
        keys: Which of :data:`CIRCUIT_KEYS` to add.
        n_kv_heads: Key/value heads (grouped-query attention when below ``n_heads``; must divide it).
        n_senders: Path-patching senders.
        chosen: Whether a circuit reaches the faithfulness threshold.
        hostile: Put :data:`HOSTILE_LABEL` into a sender name and an edge.

    Returns:
        The new dict (``results`` is not changed).
    """
    import copy  # noqa: PLC0415

    out: dict[str, Any] = copy.deepcopy(dict(results))
    rng = np.random.default_rng(seed)
    L, H = results["model"]["n_layers"], results["model"]["n_heads"]
    K = n_kv_heads or H
    if H % K:
        raise ValueError(f"n_kv_heads={K} does not divide n_heads={H}")
    out["model"]["n_kv_heads"] = K
    n_pairs = 12
    if "attribution_patching" in keys:
        out["attribution_patching"] = _attribution_patching(results, rng, n_pairs)
    if "path_patching" in keys:
        out["path_patching"] = _path_patching(L, H, K, rng, n_pairs, n_senders, hostile)
    if "circuit" in keys:
        out["circuit"] = _circuit(L, H, K, rng, n_pairs, chosen, hostile)
    ran = out["config"]["analyses"]  # the analyses writing the added keys ran (as the battery would record)
    ran += [a.name for a in registry.analyses() if not a.always and set(a.sections) & set(keys) and a.name not in ran]
    return out


def with_features(results: Results, *, seed: int = 0, n_prompts: int = 8, k: int = 5) -> dict[str, Any]:
    """A copy of ``results`` with a ``features`` section (top features and the check against the real model)."""
    import copy as _copy

    from logitlab.features.analysis import CHECK_MEASURES
    from logitlab.stats import paired
    g = torch.Generator().manual_seed(seed)
    out = _copy.deepcopy(dict(results))
    n_layers = int(results["model"]["n_layers"])

    def stat(lo: float, hi: float) -> dict[str, Any]:
        vals = (lo + (hi - lo) * torch.rand(n_prompts, generator=g, dtype=torch.float64)).tolist()
        s = paired(torch.tensor(vals, dtype=torch.float64)[None])
        return {"per_prompt": vals, "n": n_prompts, "mean": float(s.mean[0]), "ci": s.ci[0].double().tolist()}

    top = [{"layer": int(torch.randint(0, n_layers, (1,), generator=g)), "feature": 7 * i, "mean": 0.1 / (i + 1),
            "ci": [0.05 / (i + 1), 0.15 / (i + 1)], "direct": 0.01 * (i - 2), "n_active": n_prompts} for i in range(5)]
    out["features"] = {"transcoders": "synthetic", "n_prompts": n_prompts, "replacement": [0.7] * n_prompts,
                       "completeness": [0.9] * n_prompts, "max_check": 1e-6, "top": top,
                       "check": {"k": k, "linear_model_error": 2e-6,
                                 "measures": {m: {"spearman": stat(-0.2, 0.6), "sign_agreement": stat(0.4, 0.9)}
                                              for m in CHECK_MEASURES}}}
    return out
