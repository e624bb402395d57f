"""The DLA reconstruction check: do the components plus the bias reproduce every prompt's logit difference?"""

from __future__ import annotations

import math
from collections.abc import Sequence

from logitlab.results import Results

from .._util import finite, fmt, pre_cap
from ..markup import Figures, missing, note, table
from ..registry import Finding, Rule, Section, register

#: Max per-prompt relative error (|error| / max(1, |logit diff|)) under which the DLA check passes.
DLA_TOLERANCE = 1e-4


#: The same for a run in bfloat16: its activations carry ~3 significant digits (relative step 2^-8), and the
#: components' sum then differs from the model's logit difference by a few 1e-3 (measured ≤ 1e-2 on tiny models).
DLA_TOLERANCE_BF16 = 3e-2


def dla_tolerance(results: Results) -> float:
    """The reconstruction check's tolerance for the run's dtype."""
    return DLA_TOLERANCE_BF16 if results.get("config", {}).get("dtype") == "bfloat16" else DLA_TOLERANCE


def section_dla_check(results: Results, figures: Figures,
                      findings: Sequence[Finding]) -> str:
    """DLA reconstruction table with a pass/fail badge."""
    dla = results.get("dla")
    if not dla:
        return missing("DLA reconstruction check")
    err = dla.get("relative_error")
    tol = dla_tolerance(results)
    ok = finite(err) and float(err) <= tol
    badge = (f'<span class="badge {"pass" if ok else "fail"}">'
             f'{"PASS" if ok else "FAIL"}</span>')
    recon = dla.get("reconstructed_mean")
    bias = dla.get("bias_term")
    total = float(recon) + float(bias) if finite(recon) and finite(bias) else math.nan
    max_abs = dla.get("max_abs_error")
    capped = "final_logit_softcap" in dla
    rows = [
        ["reconstructed mean (components)", fmt(recon)],
        ["bias term (b_U + final-norm bias)", fmt(bias)],
        ["reconstructed + bias", fmt(total)],
        ["model's mean logit diff" + (" before the soft-cap (decomposed)" if capped else ""),
         fmt(dla.get("model_mean"))],
        *([[f"model's mean logit diff after the soft-cap (c = {float(dla['final_logit_softcap']):g})",
            fmt(dla.get("model_capped_mean"))]] if capped else []),
        ["max over prompts of |reconstructed + bias − logit diff|",
         f"{float(max_abs):.2e}" if finite(max_abs) else "n/a"],
        ["relative error (max over prompts, relative to max(1, |logit diff|))",
         f"{float(err):.2e}" if finite(err) else "n/a"],
        [f"check (relative error ≤ {tol:.0e})", badge],
    ]
    return (
        note("Direct logit attribution decomposes the final residual stream (final-norm scale "
             "frozen) into per-component terms. If the decomposition is right, the components "
             "plus the bias term reproduce every prompt's own logit difference; the check takes the "
             "largest per-prompt error, so errors cannot cancel across prompts and a mean near 0 "
             "does not inflate it." + (" " + pre_cap(results) if capped else ""))
        + table(["quantity", "value"], rows, "kv")
    )


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
        f"{fmt(dla.get('bias_term'))} vs the model's {fmt(dla.get('model_mean'))}"
        + (f" before its soft-cap. {pre_cap(results)}" if "final_logit_softcap" in dla else "."),
        "layer_attribution",
    )


SECTION = register(Section(name="dla-check", title="DLA reconstruction check", render=section_dla_check,
                           analysis="dla", keys=("dla",), rules=(Rule(100, _dla_check),)))
