"""Small shared helpers of the report: number formatting and token display."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any


def fmt(x: Any, signed: bool = False) -> str:
    """Format a number with 2–3 significant decimals (``n/a`` for missing/non-finite).

    Negative numbers use the typographic minus sign (−).
    """
    return _fmt(x, signed).replace("-", "−")


def _fmt(x: Any, signed: bool) -> str:
    """:func:`fmt` with an ASCII minus."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    sign = "+" if signed else ""
    a = abs(v)
    if a == 0:
        return "0" if not signed else "0.00"
    if a >= 1000:
        return f"{v:{sign},.0f}"
    if a >= 0.095:
        return f"{v:{sign}.2f}"
    if a >= 1e-3:
        return f"{v:{sign}.2g}"
    return f"{v:{sign}.1e}"


def pre_cap(results: Any) -> str:
    """On a model with a final-logit soft-cap (Gemma-2: ``dla.final_logit_softcap``), the sentence saying that
    the attributions decompose the logit difference before the cap, with the capped mean next to it; else ""."""
    dla = results.get("dla") or {}
    cap = dla.get("final_logit_softcap")
    if cap is None:
        return ""
    return (f"The model soft-caps its final logits (c = {float(cap):g}), so the attributions decompose the logit "
            f"difference before the cap (mean {fmt(dla.get('model_mean'))}); the model's own, capped, mean logit "
            f"difference is {fmt(dla.get('model_capped_mean'))}.")


def fmt_ratio(x: Any) -> str:
    """Format a probability ratio (``1.13``, ``24.5``, ``2,981``)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "∞" if v > 0 else "n/a"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def fmt_pct(x: float) -> str:
    """Format a share in [0, 1] as a percentage."""
    if not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.0f}%"


def visible(token: Any) -> str:
    """Make whitespace-only control characters of a token visible (``\\n`` → ``↵``)."""
    s = str(token)
    return s.replace("\r", "\\r").replace("\n", "↵").replace("\t", "⇥")


def quoted(token: Any) -> str:
    """A token in typographic quotes, with control characters made visible (plain text)."""
    return f"“{visible(token)}”"


def plotly_text(s: Any, max_len: int | None = None) -> str:
    """Escape a string for plotly's pseudo-HTML labels so it displays literally."""
    t = visible(s)
    if max_len is not None and len(t) > max_len:
        t = t[: max_len - 1] + "…"
    return html.escape(t, quote=False)


def unique_token_labels(tokens: Sequence[Any], max_len: int = 14) -> list[str]:
    """Unique, plotly-safe axis labels ``"i: token"`` for possibly repeated tokens."""
    return [f"{i}: {plotly_text(t, max_len)}" for i, t in enumerate(tokens)]


def layer_labels(n: int) -> list[str]:
    """Axis labels ``L0 … L{n-1}``."""
    return [f"L{i}" for i in range(n)]


def head_name(layer: int, head: int) -> str:
    """Conventional head name ``L{layer}H{head}``."""
    return f"L{layer}H{head}"


def is_matrix(x: Any) -> bool:
    """True when ``x`` is a non-empty list of lists."""
    return isinstance(x, list) and len(x) > 0 and all(isinstance(r, list) for r in x)


def estimated_mask(part: Any) -> list[list[bool]] | None:
    """The cells a screen left to an estimate: ``part["method"]`` read as a [row][column] mask, True where a cell
    is not ``"exact"`` (``"estimated"``: a first-order estimate, never the basis of a finding).

    The one reader of the ``method`` matrix of a screened ablation or patching set. None when ``part`` has no
    ``method`` matrix (files from before screening, or a sweep that computed every cell exactly). The mask has
    ``method``'s shape; callers that index it by another matrix's cells check the bounds.
    """
    method = part.get("method") if isinstance(part, Mapping) else None
    if not is_matrix(method):
        return None
    return [[m != "exact" for m in row] for row in method]


def finite(x: Any) -> bool:
    """True when ``x`` is a finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
