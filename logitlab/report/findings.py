"""Key findings: short sentences generated from the numbers in ``results.json``.

Each :class:`Finding` links to the figure it is read from. A sentence is only
emitted when the numbers support it (e.g. no "the information moves" unless some
position crosses the patching threshold at both ends of the move).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from logitlab.results import Results

from ._util import finite, fmt, fmt_pct, fmt_ratio, head_name, is_matrix, quoted
from .figures import FIGURES, lookup

logger = logging.getLogger(__name__)

#: Normalised patching value above which a (layer, position) "carries" the information.
PATCH_THRESHOLD = 0.5
#: Relative error under which the DLA reconstruction check passes.
DLA_TOLERANCE = 1e-4
MAX_FINDINGS = 8


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


def _logit_diff(results: Results) -> Finding | None:
    """Mean logit difference, accuracy and probability ratio."""
    ld = results.get("logit_diff")
    if not ld or not finite(ld.get("mean")):
        return None
    n = len(ld.get("per_prompt") or [])
    mean = float(ld["mean"])
    ratio = ld.get("prob_ratio_of_mean", math.exp(mean) if mean < 700 else math.inf)
    acc = float(ld.get("accuracy", math.nan))
    se = ld.get("stderr")
    # Claim a preference only when the mean is two standard errors away from 0.
    if finite(se) and abs(mean) <= 2 * float(se):
        prefers = "shows no clear preference between the answers"
    else:
        prefers = "prefers the correct answer" if mean > 0 else "prefers the incorrect answer"
    text = (
        f"Over {n} prompts the model {prefers}: mean logit difference {fmt(mean)} "
        f"± {fmt(ld.get('stderr'))} (stderr), {fmt_pct(acc)} of prompts correct, "
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


def _layer_attribution(results: Results) -> Finding | None:
    """Which components carry most of the direct logit difference, and their share."""
    la = results.get("layer_attribution")
    if not la or not la.get("values"):
        return None
    labels = [str(s) for s in la["labels"]]
    vals = [float(v) for v in la["values"]]
    total_abs = sum(abs(v) for v in vals)
    if total_abs <= 0:
        return None
    order = sorted(range(len(vals)), key=lambda i: -abs(vals[i]))
    top: list[int] = []
    for i in order:
        top.append(i)
        if sum(abs(vals[j]) for j in top) >= 0.6 * total_abs or len(top) == 3:
            break
    share = sum(abs(vals[j]) for j in top) / total_abs
    pos = [j for j in top if vals[j] > 0]
    neg = [j for j in top if vals[j] < 0]

    def names(idx: list[int]) -> str:
        """``"a (+1.00), b (+0.50) and c (−0.20)"`` for component indices."""
        items = [f"{labels[j]} ({fmt(vals[j], signed=True)})" for j in idx]
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    if pos:
        text = f"Direct logit attribution: the logit difference is carried mostly by {names(pos)}"
        if neg:
            text += f", while {names(neg)} {'pushes' if len(neg) == 1 else 'push'} against it"
    else:
        text = f"Direct logit attribution: the largest components, {names(neg)}, push against " \
               "the correct answer"
    text += (f"; {'this is' if len(top) == 1 else 'together these are'} {fmt_pct(share)} of "
             f"the summed |attribution| over {len(vals)} components (which sum to "
             f"{fmt(sum(vals))}).")
    return Finding(text, "layer_attribution")


def _dla_check(results: Results) -> Finding | None:
    """Whether the direct logit attribution reconstructs the model's logit difference."""
    dla = results.get("dla")
    if not dla or not finite(dla.get("relative_error")):
        return None
    err = float(dla["relative_error"])
    verdict = "passes" if err <= DLA_TOLERANCE else "fails"
    return Finding(
        f"The attribution is exact up to relative error {err:.1e} ({verdict} the "
        f"{DLA_TOLERANCE:.0e} check): components {fmt(dla.get('reconstructed_mean'))} + bias "
        f"{fmt(dla.get('bias_term'))} vs the model's {fmt(dla.get('model_mean'))}.",
        "layer_attribution",
    )


def _heads(results: Results) -> Finding | None:
    """The top heads by |attribution| and their share of the heads' total."""
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
    text = (
        f"The heads with the largest direct effect are {names}: {fmt_pct(share)} of the summed "
        f"|attribution| over all {len(flat)} heads (their net effect {fmt(net_top, signed=True)}; "
        f"all heads together {fmt(net_all, signed=True)})."
    )
    return Finding(text, "head_attribution")


def _resid_patching(results: Results) -> Finding | None:
    """Where residual-stream patching shows the information sitting, and whether it moves."""
    rp = results.get("resid_patching")
    if not rp or not is_matrix(rp.get("values")):
        return None
    z = [[float(v) for v in row] for row in rp["values"]]
    n_pos = max(len(r) for r in z)
    tokens = list(rp.get("tokens") or []) + ["?"] * n_pos
    final = n_pos - 1
    final_layers = [layer for layer, row in enumerate(z) if len(row) == n_pos
                    and row[final] > PATCH_THRESHOLD]
    other: dict[int, list[int]] = {}
    for layer, row in enumerate(z):
        for pos, v in enumerate(row[:final]):
            if v > PATCH_THRESHOLD:
                other.setdefault(pos, []).append(layer)
    if not final_layers and not other:
        return None
    thr = f"more than {PATCH_THRESHOLD:g} of the clean logit difference"

    def where(pos: int) -> str:
        """A position as quoted token plus index."""
        return f"{quoted(tokens[pos])} (position {pos})"

    if other:
        src = max(other, key=lambda p: (len(other[p]), max(z[layer][p] for layer in other[p])))
        src_layers = other[src]
    if other and final_layers:
        moves = min(src_layers) < min(final_layers) and max(src_layers) < max(final_layers)
        text = (
            f"Residual-stream patching restores {thr} at {where(src)} in "
            f"{_layers_phrase(src_layers)} and at the final position {where(final)} in "
            f"{_layers_phrase(final_layers)}"
        )
        if moves:
            text += (f": the information moves from {quoted(tokens[src])} to the final "
                     f"position between layer {max(src_layers)} and layer {min(final_layers)}.")
        else:
            text += "."
    elif other:
        text = (f"Residual-stream patching restores {thr} at {where(src)} in "
                f"{_layers_phrase(src_layers)}, but at no layer's final position.")
    else:
        text = (f"Residual-stream patching restores {thr} only at the final position "
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
    """What the unembedding bias alone contributes, or that there is none."""
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
                f"from the bias alone).")
    else:
        text = f"The unembedding bias does not distinguish {c} from {i} (difference 0)."
    return Finding(text, "unembed_bias")


_RULES: tuple[Callable[[Results], Finding | None], ...] = (
    _logit_diff,
    _layer_attribution,
    _heads,
    _resid_patching,
    _ablation,
    _logit_lens,
    _unembed_bias,
    _dla_check,
)


def key_findings(results: Results) -> list[Finding]:
    """Generate 4–8 key-finding sentences from the numbers (fewer when analyses are missing).

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
