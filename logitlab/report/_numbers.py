"""Number helpers shared by the report's sections: reading optional numbers and CIs, and formatting them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._util import finite, fmt

INPUT_NAMES = {"q": "query", "k": "key", "v": "value"}
HEAD = re.compile(r"L(\d+)H(\d+)")
GROUP = re.compile(r"L(\d+)G(\d+)")
MLP = re.compile(r"M(\d+)")


def num(x: Any) -> float | None:
    """``x`` as a float, or None when missing or not finite."""
    return float(x) if finite(x) else None


def ci_pair(x: Any) -> tuple[float, float] | None:
    """A finite (low, high) pair, or None."""
    if isinstance(x, (list, tuple)) and len(x) == 2 and finite(x[0]) and finite(x[1]):
        return float(x[0]), float(x[1])
    return None


def at(x: Any, *idx: int) -> Any:
    """``x[i][j]…`` or None when any index is out of range or a level is not a list."""
    for i in idx:
        if not isinstance(x, list) or not 0 <= i < len(x):
            return None
        x = x[i]
    return x


def ci_txt(ci: tuple[float, float] | None) -> str:
    """`` [lo, hi]`` or ``""``."""
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def pct(x: float) -> str:
    """A fraction as a whole percentage with a typographic minus (``−3%``)."""
    return f"{100 * x:.0f}%".replace("-", "−")


def pct_ci(v: float, ci: tuple[float, float] | None) -> str:
    """``85% [80, 90]``."""
    if ci is None:
        return pct(v)
    return f"{pct(v)} [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]".replace("-", "−")


def magnitude(ci: tuple[float, float]) -> tuple[float, float]:
    """The interval of |effect| a CI of the effect implies."""
    lo, hi = ci
    if lo > 0 or hi < 0:
        return min(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    return 0.0, max(abs(lo), abs(hi))


def excludes_zero(ci: tuple[float, float] | None) -> bool:
    """Whether a CI lies entirely above or below 0 (False without one)."""
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def pairs_txt(d: Mapping[str, Any]) -> str:
    """``12 pairs, 3 excluded for a gap < 1 logit`` or ``""``."""
    n, x = d.get("n_pairs"), d.get("n_excluded")
    if not isinstance(n, int):
        return ""
    out = f"{n} pair{'' if n == 1 else 's'}"
    gap = float(d["min_gap"]) if finite(d.get("min_gap")) else 1.0
    return out + (f", {x} excluded for a gap < {gap:g} logit" if isinstance(x, int) and x else "")



def ci_text(ci: tuple[float, float], signed: bool = False) -> str:
    """``[lo, hi]`` (signed: with + on positive bounds)."""
    return f"[{fmt(ci[0], signed=signed)}, {fmt(ci[1], signed=signed)}]"
