"""Key findings: short sentences generated from the numbers in ``results.json``.

Each :class:`Finding` links to the figure it is read from. A sentence is only
emitted when the numbers support it (e.g. no "the information moves" unless some
position crosses the patching threshold at both ends of the move), and it never
claims more than they do:

* a preference for an answer only when the mean's 95% CI excludes 0;
* "mostly" / "carried by" only when the named components hold more than half of the
  summed |attribution|, with that share stated;
* "the largest" / "most" only when the paired 95% CI of the difference to the
  runner-up excludes 0 (computed by the analyses: ``head_attribution_detail.top``,
  ``head_ablation.<kind>.top_drop``; the report never recomputes);
* the "accuracy" is what it measures: the share of prompts on which the correct
  answer's logit beats the (mean) incorrect one's;
* patching as a fraction of the clean − corrupted gap with its 95% CI; "the information
  moves from X to Y between layer a and layer b" only when both ends restore more than
  half of the gap with the CI's lower bound above it, over layer ranges that do not overlap;
* attribution patching, path patching and the circuit: see :mod:`logitlab.report.circuit`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from logitlab.results import Results

from ._util import finite, fmt, fmt_pct, fmt_ratio, head_name, is_matrix, quoted
from .circuit import CIRCUIT_RULES
from .figures import FIGURES, lookup

logger = logging.getLogger(__name__)

#: Normalised patching value above which a (layer, position) "carries" the information.
PATCH_THRESHOLD = 0.5
#: Max per-prompt relative error (|error| / max(1, |logit diff|)) under which the DLA check passes.
DLA_TOLERANCE = 1e-4
#: The same for a run in bfloat16: its activations carry ~3 significant digits (relative step 2^-8), and the
#: components' sum then differs from the model's logit difference by a few 1e-3 (measured ≤ 1e-2 on tiny models).
DLA_TOLERANCE_BF16 = 3e-2


def dla_tolerance(results: Results) -> float:
    """The reconstruction check's tolerance for the run's dtype."""
    return DLA_TOLERANCE_BF16 if results.get("config", {}).get("dtype") == "bfloat16" else DLA_TOLERANCE
#: Share of the summed |attribution| above which named components "carry" the logit difference.
CARRY_SHARE = 0.5
#: Nine rules of the core analyses, four of the circuit sections (circuit.py).
MAX_FINDINGS = 13


@dataclass(frozen=True)
class Finding:
    """One key-finding sentence and the id of the figure it comes from."""

    text: str
    figure_id: str


def _ranges(layers: Sequence[int]) -> str:
    """Compress sorted layer indices into ``"0–2, 5"``."""
    parts: list[str] = []
    items = sorted(set(layers))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}–{items[j]}")
        i = j + 1
    return ", ".join(parts)


def _layers_phrase(layers: Sequence[int]) -> str:
    """``"layer 3"`` or ``"layers 0–2"``."""
    return ("layer " if len(set(layers)) == 1 else "layers ") + _ranges(layers)


def _ci(x: object) -> tuple[float, float] | None:
    """A finite (low, high) pair, or None."""
    if isinstance(x, (list, tuple)) and len(x) == 2 and finite(x[0]) and finite(x[1]):
        return float(x[0]), float(x[1])
    return None


def _ci_text(ci: tuple[float, float], signed: bool = False) -> str:
    return f"[{fmt(ci[0], signed=signed)}, {fmt(ci[1], signed=signed)}]"


def _several_incorrect(results: Results) -> bool:
    """Whether some prompt has several incorrect answers (joined by " / ")."""
    return any(" / " in str(a[1]) for a in (results.get("task") or {}).get("answers") or [] if len(a) > 1)


def _logit_diff(results: Results) -> Finding | None:
    """Mean logit difference with its CI, the share of prompts it is positive on, and the probability ratio."""
    ld = results.get("logit_diff")
    if not ld or not finite(ld.get("mean")):
        return None
    n = len(ld.get("per_prompt") or [])
    mean = float(ld["mean"])
    ratio = ld.get("prob_ratio_of_mean", math.exp(mean) if mean < 700 else math.inf)
    acc = float(ld.get("accuracy", math.nan))
    se = ld.get("stderr")
    ci = _ci(ld.get("ci"))
    # Claim a preference only when the 95% CI excludes 0 (without a CI: two standard errors from 0).
    if ci is not None:
        sign = 1 if ci[0] > 0 else (-1 if ci[1] < 0 else 0)
    elif finite(se):
        sign = 0 if abs(mean) <= 2 * float(se) else (1 if mean > 0 else -1)
    else:
        sign = 0
    prefers = {1: "prefers the correct answer", -1: "prefers the incorrect answer",
               0: "shows no clear preference between the answers"}[sign]
    ci_txt = f", 95% CI {_ci_text(ci)}" if ci is not None else ""
    other = "the mean incorrect one" if _several_incorrect(results) else "the incorrect one"
    text = (
        f"Over {n} prompts the model {prefers}: mean logit difference {fmt(mean)} "
        f"± {fmt(se)} (stderr){ci_txt}; the correct answer beats {other} on {fmt_pct(acc)} of prompts; "
        f"p(correct)/p(incorrect) = {fmt_ratio(ratio)} at the mean (over the geometric mean of the incorrect "
        f"answers' probabilities where a prompt has several)."
    )
    return Finding(text, "logit_diff")


def _logit_lens(results: Results) -> Finding | None:
    """Where the accumulated residual stream first reaches half the final logit difference."""
    lens = results.get("logit_lens")
    if not lens or not lens.get("values"):
        return None
    vals = [float(v) for v in lens["values"]]
    labels = [str(s) for s in lens["labels"]]
    final = vals[-1]
    if not (math.isfinite(final) and final > 0):
        return None
    first = next((i for i, v in enumerate(vals) if v >= 0.5 * final), len(vals) - 1)
    return Finding(
        f"Logit lens: the accumulated residual stream first reaches half of its final logit "
        f"difference ({fmt(final)}) at {labels[first]} (position {first + 1} of {len(vals)}).",
        "logit_lens",
    )


def _names(labels: Sequence[str], vals: Sequence[float], idx: Sequence[int]) -> str:
    """``"a (+1.00), b (+0.50) and c (−0.20)"`` for component indices."""
    items = [f"{labels[j]} ({fmt(vals[j], signed=True)})" for j in idx]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _layer_attribution(results: Results) -> Finding | None:
    """Which components carry the direct logit difference, only when they hold most of it (share stated)."""
    la = results.get("layer_attribution")
    if not la or not la.get("values"):
        return None
    labels = [str(s) for s in la["labels"]]
    vals = [float(v) for v in la["values"]]
    total_abs = sum(abs(v) for v in vals)
    if total_abs <= 0:
        return None
    share = lambda idx: sum(abs(vals[j]) for j in idx) / total_abs  # noqa: E731
    n, total = len(vals), fmt(sum(vals))
    tail = f" of the summed |attribution| over {n} components (which sum to {total})"
    # The fewest (≤ 3) components pushing towards the correct answer that hold more than half of it.
    pos = sorted((j for j in range(n) if vals[j] > 0), key=lambda j: -vals[j])
    carriers = next((pos[:k] for k in range(1, min(3, len(pos)) + 1) if share(pos[:k]) > CARRY_SHARE), None)
    if carriers is not None:
        text = (f"Direct logit attribution: the logit difference is carried mostly by "
                f"{_names(labels, vals, carriers)}, {fmt_pct(share(carriers))}{tail}")
        # Name a component pushing against it when it is among the three largest |values|.
        top3 = sorted(range(n), key=lambda i: -abs(vals[i]))[:3]
        neg = [j for j in top3 if vals[j] < 0]
        if neg:
            text += (f"; {_names(labels, vals, neg)} {'pushes' if len(neg) == 1 else 'push'} against it "
                     f"({fmt_pct(share(neg))})")
        return Finding(text + ".", "layer_attribution")
    top3 = sorted(range(n), key=lambda i: -abs(vals[i]))[:3]
    neg = [j for j in top3 if vals[j] < 0]
    against = (f" ({_names(labels, vals, neg)} {'pushes' if len(neg) == 1 else 'push'} against the correct "
               "answer)" if neg else "")
    text = (f"Direct logit attribution: no three components carry most of the logit difference; the three "
            f"with the highest |mean|, {_names(labels, vals, top3)}, hold {fmt_pct(share(top3))}{tail}{against}.")
    return Finding(text, "layer_attribution")


def _dla_check(results: Results) -> Finding | None:
    """Whether the direct logit attribution reconstructs every prompt's logit difference."""
    dla = results.get("dla")
    if not dla or not finite(dla.get("relative_error")):
        return None
    err = float(dla["relative_error"])
    tol = dla_tolerance(results)
    verdict = "passes" if err <= tol else "fails"
    abs_txt = (f", max |error| {float(dla['max_abs_error']):.1e} logits" if finite(dla.get("max_abs_error"))
               else "")
    return Finding(
        f"The attribution reconstructs each prompt's logit difference up to relative error {err:.1e} "
        f"(the max over prompts of |error| / max(1, |logit diff|){abs_txt}; {verdict} the "
        f"{tol:.0e} check{' for bfloat16' if tol != DLA_TOLERANCE else ''}): on the mean, components {fmt(dla.get('reconstructed_mean'))} + bias "
        f"{fmt(dla.get('bias_term'))} vs the model's {fmt(dla.get('model_mean'))}.",
        "layer_attribution",
    )


def _heads(results: Results) -> Finding | None:
    """The top heads by |mean attribution| and their share; "largest" only when the top head is separated."""
    z = results.get("head_attribution")
    if not is_matrix(z):
        return None
    flat = [(float(v), layer, h) for layer, row in enumerate(z) for h, v in enumerate(row)]
    total_abs = sum(abs(v) for v, _, _ in flat)
    if total_abs <= 0:
        return None
    flat.sort(key=lambda t: -abs(t[0]))
    top = flat[: min(3, len(flat))]
    share = sum(abs(v) for v, _, _ in top) / total_abs
    names = ", ".join(f"{head_name(layer, h)} ({fmt(v, signed=True)})" for v, layer, h in top)
    net_top = sum(v for v, _, _ in top)
    net_all = sum(v for v, _, _ in flat)
    summary = (f"{fmt_pct(share)} of the summed |attribution| over all {len(flat)} heads (their net effect "
               f"{fmt(net_top, signed=True)}; all heads together {fmt(net_all, signed=True)})")
    sep = (results.get("head_attribution_detail") or {}).get("top")
    lead = f"The heads ranked highest by |mean direct effect| are {names}"
    if sep and (sep["layer"], sep["head"]) == (top[0][1], top[0][2]) and len(flat) > 1:
        name, ru = head_name(sep["layer"], sep["head"]), head_name(*sep["runner_up"])
        ci, d_ci = _ci(sep.get("ci")), _ci(sep.get("difference_ci"))
        value = fmt(sep["value"], signed=True) + (f" {_ci_text(ci, signed=True)}" if ci else "")
        if d_ci is not None and d_ci[0] > 0 and not sep.get("tied"):
            text = (f"{name} has the largest direct effect, {value} (95% CI over prompts), larger in size by "
                    f"{fmt(sep['difference'])} {_ci_text(d_ci)} than the runner-up {ru} (paired 95% CI); the heads ranked "
                    f"highest by |mean direct effect| are {names}")
        else:
            tied = [head_name(int(a), int(b)) for a, b in sep.get("tied") or [sep["runner_up"]]]
            more = f" and {len(tied) - 4} more" if len(tied) > 4 else ""
            d_txt = f" (difference to {ru}: {fmt(sep['difference'])} {_ci_text(d_ci)})" if d_ci else ""
            text = (f"{lead}; {name} ({value}, 95% CI) is not separated at 95% from {', '.join(tied[:4])}{more}"
                    f"{d_txt}, so no single head is the largest")
        return Finding(f"{text}: {summary}.", "head_attribution")
    return Finding(f"{lead}: {summary}.", "head_attribution")


def _patching_set(rp: dict) -> dict:
    """The set of pairs a patching finding reads: the pooled templates when they hold more pairs than `values`."""
    pooled = rp.get("pooled")
    if isinstance(pooled, dict) and is_matrix(pooled.get("values")) and \
            int(pooled.get("n_pairs") or 0) > int(rp.get("n_pairs") or 1):
        return pooled
    return rp


def _resid_patching(results: Results) -> Finding | None:
    """Where residual-stream patching shows the information sitting, and whether it moves.

    A (layer, position) carries the information when more than :data:`PATCH_THRESHOLD` of the clean − corrupted
    gap is restored: with several pairs, the 95% CI's lower bound must be above it. "The information moves from
    X to the final position between layer a and layer b" needs both ends to carry it over layer ranges that do
    not overlap (X's all before the final position's); otherwise the sentence only says where it is restored.
    """
    rp = results.get("resid_patching")
    if not rp:
        return None
    ps = _patching_set(rp)  # type: ignore[arg-type]
    if not is_matrix(ps.get("values")):
        return None
    z = [[float(v) for v in row] for row in ps["values"]]
    n_pos = max(len(r) for r in z)
    tokens = list(ps.get("tokens") or []) + ["?"] * n_pos
    n = ps.get("n_pairs")
    ci = ps.get("ci")
    with_ci = isinstance(n, int) and n >= 2 and isinstance(ci, list) and len(ci) == len(z) and all(
        isinstance(row, list) and len(row) == len(zr) for row, zr in zip(ci, z))

    def low(layer: int, pos: int) -> float:
        c = _ci(ci[layer][pos]) if with_ci else None
        return c[0] if c is not None else z[layer][pos]

    final = n_pos - 1
    final_layers = [layer for layer, row in enumerate(z) if len(row) == n_pos and low(layer, final) > PATCH_THRESHOLD]
    other: dict[int, list[int]] = {}
    for layer, row in enumerate(z):
        for pos in range(min(len(row), final)):
            if low(layer, pos) > PATCH_THRESHOLD:
                other.setdefault(pos, []).append(layer)

    def where(pos: int) -> str:
        """A position as quoted token plus index (pooled templates: the role alone, indices differ)."""
        return quoted(tokens[pos]) if ps is not rp else f"{quoted(tokens[pos])} (position {pos})"

    def value(pos: int, layers: Sequence[int]) -> str:
        """The largest value at ``pos`` over ``layers``, with its CI."""
        layer = max(layers, key=lambda l: z[l][pos])
        c = _ci(ci[layer][pos]) if with_ci else None
        return fmt(z[layer][pos]) + (f" [{fmt(c[0])}, {fmt(c[1])}]" if c is not None else "")

    excluded = int(ps.get("n_excluded") or 0)
    if isinstance(n, int):
        over = f"{n} pair{'' if n == 1 else 's'}" + (f", {excluded} excluded for a gap < 1 logit" if excluded else "")
        over += "; 95% CI" if with_ci else ""
        pooled = ", templates pooled" if ps is not rp else ""
        head = f"Residual-stream patching ({over}{pooled}) restores"
    else:
        head = "Residual-stream patching restores"
    gap = "of the clean − corrupted gap"
    if not final_layers and not other:
        best = max(((v, layer, pos) for layer, row in enumerate(z) for pos, v in enumerate(row)), default=None)
        if best is None or best[0] <= PATCH_THRESHOLD or not with_ci:
            return None
        _, layer, pos = best
        return Finding(f"{head} at most {value(pos, [layer])} {gap} (at {where(pos)}, layer {layer}): no position "
                       f"is restored above {PATCH_THRESHOLD:g} at 95% confidence.", "resid_patching")
    if other:
        src = max(other, key=lambda p: (len(other[p]), max(z[layer][p] for layer in other[p])))
        src_layers = other[src]
    if other and final_layers:
        moves = max(src_layers) < min(final_layers)  # the two layer ranges do not overlap, the source first
        text = (f"{head} {value(src, src_layers)} {gap} at {where(src)} in {_layers_phrase(src_layers)} and "
                f"{value(final, final_layers)} at the final position {where(final)} in {_layers_phrase(final_layers)}")
        if moves:
            text += (f": the information moves from {quoted(tokens[src])} to the final "
                     f"position between layer {max(src_layers)} and layer {min(final_layers)}.")
        else:
            text += " (the layer ranges overlap: no clean hand-over)."
    elif other:
        text = (f"{head} {value(src, src_layers)} {gap} at {where(src)} in "
                f"{_layers_phrase(src_layers)}, but at no layer's final position.")
    else:
        text = (f"{head} {value(final, final_layers)} {gap} only at the final position "
                f"{where(final)}, in {_layers_phrase(final_layers)}.")
    return Finding(text, "resid_patching")


def _ablation(results: Results) -> Finding | None:
    """The head ablation that lowers the logit difference (and raises the loss) most."""
    ab = results.get("head_ablation")
    if not ab or not finite(ab.get("baseline_logit_diff")):
        return None
    base_ld = float(ab["baseline_logit_diff"])
    base_loss = float(ab.get("baseline_loss", math.nan))
    drops: list[tuple[float, str, int, int]] = []
    rises: list[tuple[float, str, int, int]] = []
    for kind in ("zero", "mean"):
        part = ab.get(kind)
        if not part or not is_matrix(part.get("logit_diff")):
            continue
        for layer, row in enumerate(part["logit_diff"]):
            for h, v in enumerate(row):
                drops.append((base_ld - float(v), kind, layer, h))
        if is_matrix(part.get("loss")) and math.isfinite(base_loss):
            for layer, row in enumerate(part["loss"]):
                for h, v in enumerate(row):
                    if finite(v):
                        rises.append((float(v) - base_loss, kind, layer, h))
    if not drops:
        return None
    drop, kind, layer, h = max(drops)
    if drop <= 0:
        return Finding(
            f"No single head ablation lowers the logit difference below its baseline "
            f"{fmt(base_ld)}: the task does not depend on any one head alone.",
            f"head_ablation_{drops[0][1]}_logit_diff",
        )
    top = ab[kind].get("top_drop")  # type: ignore[literal-required]
    if top and (top["layer"], top["head"]) == (layer, h):
        lo, hi = top["ci"]
        if hi >= 0:
            return Finding(
                f"No single head ablation lowers the logit difference beyond its 95% CI: the largest drop, "
                f"{kind}-ablating {head_name(layer, h)}, is {fmt(top['delta'], signed=True)} "
                f"[{fmt(lo, signed=True)}, {fmt(hi, signed=True)}] (paired over prompts).",
                f"head_ablation_{kind}_logit_diff")
        if top["tied"]:
            tied = [head_name(int(a), int(b)) for a, b in top["tied"]]
            verb = (f"gives the largest mean drop, but it is not separated at 95% from {', '.join(tied[:4])}"
                    f"{f' and {len(tied) - 4} more' if len(tied) > 4 else ''}")
        else:
            ru = head_name(*top["runner_up"])
            d_lo, d_hi = top["difference_ci"]
            verb = (f"hurts most (by {fmt(top['difference'])} [{fmt(d_lo)}, {fmt(d_hi)}] more than the runner-up "
                    f"{ru}, paired 95% CI)")
        text = (f"{kind.capitalize()}-ablating {head_name(layer, h)} {verb}: the logit difference changes by "
                f"{fmt(top['delta'], signed=True)} [{fmt(lo, signed=True)}, {fmt(hi, signed=True)}] "
                f"from {fmt(base_ld)} (mean of per-prompt changes, 95% bootstrap CI)")
    else:
        text = (
            f"{kind.capitalize()}-ablating {head_name(layer, h)} hurts most: the logit difference "
            f"falls from {fmt(base_ld)} to {fmt(base_ld - drop)} ({fmt(-drop, signed=True)})"
        )
    same = [r for r in rises if r[1:] == (kind, layer, h)]
    if same and math.isfinite(same[0][0]):
        text += f" and the loss changes by {fmt(same[0][0], signed=True)} nats"
    best_rise = max(rises) if rises else None
    if best_rise and best_rise[0] > 0 and best_rise[1:] != (kind, layer, h):
        r, rk, rl, rh = best_rise
        text += (f"; the largest loss increase ({fmt(r, signed=True)} nats) comes from "
                 f"{rk}-ablating {head_name(rl, rh)}")
    return Finding(text + ".", f"head_ablation_{kind}_logit_diff")


def _unembed_bias(results: Results) -> Finding | None:
    """What the unembedding bias alone contributes for each answer pair of the task, or that there is none."""
    ub = results.get("unembed_bias")
    if not ub:
        return None
    if not ub.get("present"):
        return Finding(
            "The model has no unembedding bias, so the whole logit difference comes from "
            "the residual stream.",
            "unembed_bias",
        )
    diff = float(ub.get("difference", math.nan))
    c, i = quoted(ub.get("correct", "?")), quoted(ub.get("incorrect", "?"))
    if finite(diff) and diff != 0:
        favoured, other = (c, i) if diff > 0 else (i, c)
        text = (f"The unembedding bias alone favours {favoured} over {other} by "
                f"{fmt(abs(diff))} logits (p({c})/p({i}) = {fmt_ratio(ub.get('prob_ratio'))} "
                f"from the bias alone)")
    else:
        text = f"The unembedding bias does not distinguish {c} from {i} (difference 0)"
    pairs = [p for p in ub.get("pairs") or [] if finite(p.get("difference"))]
    if len(pairs) > 1:
        lo = min(pairs, key=lambda p: float(p["difference"]))
        hi = max(pairs, key=lambda p: float(p["difference"]))
        pair = lambda p: f"{quoted(p['correct'])} vs {quoted(p['incorrect'])}"  # noqa: E731
        text += (f"; over the task's {len(pairs)} answer pairs its share of the logit difference ranges from "
                 f"{fmt(lo['difference'], signed=True)} ({pair(lo)}) to {fmt(hi['difference'], signed=True)} "
                 f"({pair(hi)})")
    return Finding(text + ".", "unembed_bias")


def _robustness(results: Results) -> Finding | None:
    """Whether the top heads, and the logit difference, hold across templates."""
    rob = results.get("robustness")
    if not rob or len(rob.get("templates") or []) < 2:
        return None
    rows = rob["templates"]
    kh = rob["key_heads"]

    def agreement(a: dict, what: str) -> str:
        if a["agree"]:
            return f"{head_name(*a['head'])} is the top {what} in {a['count']} of {a['n_templates']} templates"
        parts = [f"{head_name(*h['head'])} in {len(h['templates'])}" for h in a["heads"][:4]]
        if len(a["heads"]) > 4:
            parts.append(f"{len(a['heads']) - 4} other heads in the rest")
        listed = ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"the top {what} differs across templates: {listed} of {a['n_templates']} templates"

    parts = [agreement(kh["dla"], "DLA head")]
    if "zero" in kh["ablation"]:
        parts.append(agreement(kh["ablation"]["zero"], "head by zero-ablation"))
    lo, hi = min(rows, key=lambda r: r["mean"]), max(rows, key=lambda r: r["mean"])
    n_pos = sum(1 for r in rows if r["ci"][0] > 0)
    text = (f"{parts[0][0].upper()}{parts[0][1:]}" + "".join(f"; {p}" for p in parts[1:])
            + f". The mean logit difference per template ranges from {fmt(lo['mean'])} {_ci_text(lo['ci'])} "
              f"(template {lo['index']}) to {fmt(hi['mean'])} {_ci_text(hi['ci'])} (template {hi['index']}); "
              f"its 95% CI lies above 0 in {n_pos} of {len(rows)} templates.")
    return Finding(text, "robustness")


_RULES: tuple[Callable[[Results], Finding | None], ...] = (
    _logit_diff,
    _layer_attribution,
    _heads,
    _resid_patching,
    _ablation,
    *CIRCUIT_RULES,
    _robustness,
    _logit_lens,
    _unembed_bias,
    _dla_check,
)


def key_findings(results: Results) -> list[Finding]:
    """Generate 4–13 key-finding sentences from the numbers (fewer when analyses are missing).

    Args:
        results: A ``results.json`` dict (schema version 1).

    Returns:
        Findings in report order, each linked to the id of its figure.
    """
    available = {fid for fid, (key, _) in FIGURES.items() if lookup(results, key) is not None}
    out: list[Finding] = []
    for rule in _RULES:
        try:
            f = rule(results)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            logger.warning("Skipping finding %s: malformed results (%s)", rule.__name__, exc)
            continue
        if f is not None and f.figure_id in available:
            out.append(f)
    return out[:MAX_FINDINGS]
