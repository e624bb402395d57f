"""Compare two results.json files number by number (e.g. the same run before and after a refactor).

Usage: ``python benchmarks/compare_results.py OLD.json NEW.json [--tol 1e-5]``

Every number present in both files is compared; keys present in only one file are listed; strings must be equal.
Version fields (``schema_version``, ``logitlab_version``) are ignored. Prints the largest absolute difference per
top-level key and exits 1 if any difference exceeds ``--tol`` or the structures differ.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

IGNORED = {"schema_version", "logitlab_version"}


def walk(a: Any, b: Any, path: str, diffs: dict[str, float], problems: list[str]) -> None:
    """Record the max |a − b| under each top-level key in ``diffs``; structural mismatches in ``problems``."""
    top = path.split(".")[0].split("[")[0]
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        if a != b:
            problems.append(f"{path}: {a!r} != {b!r}")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        d = abs(a - b) if math.isfinite(a) and math.isfinite(b) else (0.0 if a == b else math.inf)
        diffs[top] = max(diffs.get(top, 0.0), d)
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                problems.append(f"{path}.{k}: only in {'new' if k in b else 'old'}")
                continue
            walk(a[k], b[k], f"{path}.{k}" if path else k, diffs, problems)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{path}: length {len(a)} != {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", diffs, problems)
    elif a != b:
        problems.append(f"{path}: {a!r} != {b!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--tol", type=float, default=1e-5)
    args = p.parse_args(argv)
    with open(args.old, encoding="utf-8") as f:
        old = json.load(f)
    with open(args.new, encoding="utf-8") as f:
        new = json.load(f)
    diffs: dict[str, float] = {}
    problems: list[str] = []
    walk(old, new, "", diffs, problems)
    for k, d in sorted(diffs.items()):
        print(f"{k:28s} max abs diff {d:.2e}")
    for line in problems[:50]:
        print("structure:", line)
    worst = max(diffs.values(), default=0.0)
    print(f"largest difference {worst:.2e} (tolerance {args.tol:.0e}); {len(problems)} structural differences")
    return 0 if worst <= args.tol and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
