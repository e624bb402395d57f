"""Benchmark: the default ``logitlab run`` against the code before screening, the peers and the notebook's method.

Everything is measured side by side in one run, on one machine, and reported as ratios:

* ``default``: ``logitlab run --force`` end to end (a new process: interpreter, imports, model load, battery,
  results.json, report.html) with this checkout against an older commit (``--old-commit``, by default the code
  before screening and precision-targeted patching pairs), alternated ``--repeats`` times; wall time and peak
  RSS of each child (GNU ``/usr/bin/time -v`` when present, else the child's own rusage from ``os.wait4``);
* ``large``: the same with ``--task pronouns-large`` (``--large-task``); ``circuit``: ``logitlab circuit``;
* for each of those, the max |new − old| over the numbers both versions compute exactly (the always-run
  sections; head ablation where new's ``method`` says ``exact``; patching on the task's explicit pairs and on
  generated pair sets of the same size; path patching on the same pairs and senders; the circuit's edge scores
  and faithfulness curve on the same pairs) with the count of numbers compared, the headline 95% CI half-widths
  of both, and both versions' key findings (each read by its own code);
* ``peers``: the exact ablation and patching of the new default (every head, zero and mean; every cell of the
  task's explicit pairs and of the generated pairs the new default used) written the way nnsight 0.8 and
  TransformerLens 4.3 users batch them (``bench_peers.py``), timed, with the max |peer − logitlab| over the
  cells the new default computed exactly (nnsight is optional: skipped with a message when not installed);
* ``notebook``: the same ablation and patching with one hooked TransformerLens forward per intervention
  (``bench_battery.py``'s loop method), timed in full unless ``--notebook-groups`` caps the generated pair sets
  it patches (then the rest is extrapolated and labelled so).

The last lines give the ratios the speed target asks for (new vs old per part: ≥ 3×; new default vs the
notebook's method: ≥ 6×) with PASS/FAIL. The peers' and the notebook's times cover their computation only (the
model is loaded before the clock starts) and leave out the default's other analyses (logit lens, attention,
attribution patching, path patching): both favour them. Nothing here is hard-coded: every number is measured in
the run that prints it.

Usage: python benchmarks/bench_default.py [--parts default,large,circuit,peers,notebook] [--repeats 1]
       [--old-commit 6b36d33 | --old-src DIR] [--model builtin] [--task pronouns] [--large-task pronouns-large]
       [--notebook-groups N] [--keep DIR] [--tol 1e-4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARTS = ("default", "large", "circuit", "peers", "notebook")
E2E = ("default", "large", "circuit")  # the parts timed end to end, new against old
TARGET_OLD = 3.0  # new must be at least this much faster than the old commit (default, large, circuit)
TARGET_NOTEBOOK = 6.0  # the new default against the notebook's method
PATCH_SECTIONS = ("resid_patching", "attn_patching", "mlp_patching", "head_patching")
EXACT_SECTIONS = ("logit_diff", "dla", "logit_lens", "layer_attribution", "head_attribution",
                  "head_attribution_detail")
PATH_KEYS = ("q", "k", "v", "mlp", "direct", "node")
GNU_TIME = Path("/usr/bin/time")  # its -v reports the child's peak RSS; without it, os.wait4's rusage


# ---- running both versions -----------------------------------------------------------------------------------
@dataclass
class Child:
    """One timed ``python -m logitlab …`` process."""

    seconds: float
    peak_rss_gib: float
    out: Path


def run_child(src: Path, argv: list[str], out: Path, log: Path) -> Child:
    """Run ``python -m logitlab *argv`` with ``src`` as the only PYTHONPATH entry; wall time and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "logitlab", *argv]
    rss_file = log.with_suffix(".time")
    gnu = GNU_TIME.exists()
    with open(log, "w") as sink:
        t0 = time.perf_counter()
        # Its own process group: a benchmark stopped midway stops the command too (GNU time does not pass it on).
        proc = subprocess.Popen([str(GNU_TIME), "-v", "-o", str(rss_file), *cmd] if gnu else cmd, env=env, cwd=src,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
    if gnu:
        found = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", rss_file.read_text())
        rss_kib = int(found[-1]) if found else math.nan
    else:
        rss_kib = usage.ru_maxrss  # KiB on Linux: this child's own peak
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"`logitlab {' '.join(argv)}` (PYTHONPATH={src}) failed with exit code {rc}:\n{tail}")
    return Child(seconds, rss_kib / 2**20, out)


@contextlib.contextmanager
def old_checkout(commit: str, given: str | None) -> Iterator[Path]:
    """The old code: ``--old-src`` as given, or a detached git worktree of ``commit`` in a temporary folder."""
    if given:
        yield Path(given).resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="logitlab-old-"))
    src = tmp / "src"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(src), commit], check=True)
    try:
        yield src
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(src)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def command(part: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The command line of an end-to-end part."""
    task = args.large_task if part == "large" else args.task
    argv = ["circuit" if part == "circuit" else "run", "--model", args.model, "--task", task, "--out", str(out),
            "--force"]
    return argv + (["--device", args.device] if args.device else [])


def warm(src: Path, model: str) -> None:
    """Load the model once, untimed, so that the timed runs read the cached weights from a warm page cache."""
    proc = subprocess.run([sys.executable, "-c", f"import logitlab; logitlab.load_model({model!r})"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)}, cwd=src)
    if proc.returncode != 0:
        raise SystemExit(f"loading {model!r} with the code in {src} failed:\n{proc.stderr[-3000:]}")


def findings(src: Path, results: Path) -> list[str]:
    """The key findings of ``results`` as the code in ``src`` words them (its own ``key_findings``)."""
    code = ("import json, sys\nfrom logitlab.results import load_results\nfrom logitlab.report import key_findings\n"
            "print(json.dumps([f.text for f in key_findings(load_results(sys.argv[1]))]))")
    proc = subprocess.run([sys.executable, "-c", code, str(results)], capture_output=True, text=True, cwd=src,
                          env={**os.environ, "PYTHONPATH": str(src)})
    if proc.returncode != 0:
        return [f"(could not read the findings: {proc.stderr.strip().splitlines()[-1:]})"]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- comparing two results.json --------------------------------------------------------------------------------
@dataclass
class Diff:
    """The max |new − old| over ``n`` numbers of one section (``n`` = 0: nothing comparable)."""

    section: str
    n: int = 0
    max_abs: float = 0.0
    note: str = ""

    def add(self, a: Any, b: Any, mask: np.ndarray | None = None) -> None:
        try:
            x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        except ValueError:  # ragged nested lists (path patching's per-sender rows): compare equal structures flat
            (sa, fa), (sb, fb) = _flat(a), _flat(b)
            if sa != sb:
                self.note = "ragged values of different structure"
                return
            x, y = np.asarray(fa, dtype=float), np.asarray(fb, dtype=float)
        if x.shape != y.shape:
            self.note = f"shapes differ {x.shape} vs {y.shape}"
            return
        keep = np.isfinite(x) & np.isfinite(y)
        if mask is not None:
            if mask.shape != x.shape[:mask.ndim]:
                self.note = f"method {mask.shape} does not fit the values {x.shape}: not compared"
                return
            keep &= mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        if keep.any():
            self.n += int(keep.sum())
            self.max_abs = max(self.max_abs, float(np.abs(x - y)[keep].max()))


def _flat(x: Any) -> tuple[Any, list[float]]:
    """A nested list's structure (its lengths) and its numbers in order."""
    if not isinstance(x, list):
        return None, [x]
    parts = [_flat(v) for v in x]
    return tuple(p[0] for p in parts), [v for p in parts for v in p[1]]


def exact_mask(d: dict[str, Any], key: str = "values") -> np.ndarray | None:
    """Where the cells next to ``d[key]`` were computed exactly (``d["method"]``); None (all) when unmarked."""
    method = d.get("method")
    if isinstance(method, dict):
        method = method.get(key)
    return None if method is None else np.asarray(method) == "exact"


def ablation_mask(ablation: dict[str, Any], kind: str, metric: str = "logit_diff") -> np.ndarray | None:
    """Where head ablation's ``kind`` (zero, mean) was computed exactly: its own ``method``, else the section's
    (one matrix, or one per kind or metric); None (all) when unmarked."""
    if "method" in ablation[kind]:
        return exact_mask(ablation[kind], metric)
    method = ablation.get("method")
    if isinstance(method, dict) and kind in method:
        return exact_mask({"method": method[kind]}, metric)
    return exact_mask(ablation, metric)


def _numeric(x: Any) -> bool:
    if isinstance(x, bool) or x is None:
        return False
    if isinstance(x, (int, float)):
        return True
    return isinstance(x, list) and len(x) > 0 and all(_numeric(v) for v in x[:3])


def _leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every numeric leaf (number or nested list of numbers) of a results section, with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif _numeric(obj):
        yield path, obj


def _same_pairs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("n_pairs", "n_excluded", "tokens", "template"))


def compare(new: dict[str, Any], old: dict[str, Any]) -> list[Diff]:
    """Max |new − old| per section over the numbers both computed exactly."""
    out: list[Diff] = []
    for name in EXACT_SECTIONS:
        if name in new and name in old:
            d = Diff(name)
            old_leaves = dict(_leaves(old[name]))
            for path, value in _leaves(new[name]):
                if path in old_leaves:
                    d.add(value, old_leaves[path])
            out.append(d)
    if "head_ablation" in new and "head_ablation" in old:
        for kind in ("zero", "mean"):
            n, o = new["head_ablation"][kind], old["head_ablation"][kind]
            d = Diff(f"head_ablation.{kind}")
            shape = np.asarray(n["logit_diff"], dtype=float).shape  # (L, H)
            for key in ("logit_diff", "loss", "logit_diff_stderr", "loss_stderr", "delta_logit_diff",
                        "delta_logit_diff_stderr", "delta_logit_diff_ci", "delta_logit_diff_per_prompt",
                        "delta_loss", "delta_loss_stderr", "delta_loss_ci", "delta_loss_per_prompt"):
                if key in n and key in o and np.asarray(n[key], dtype=float).shape[:2] == shape:
                    d.add(n[key], o[key], ablation_mask(new["head_ablation"], kind,
                                                        "loss" if "loss" in key else "logit_diff"))
            out.append(d)
        d = Diff("head_ablation.baseline")
        for key in ("baseline_logit_diff", "baseline_loss"):
            d.add(new["head_ablation"][key], old["head_ablation"][key])
        out.append(d)
    for name in PATCH_SECTIONS:
        if name not in new or name not in old:
            continue
        n, o = new[name], old[name]
        d = Diff(f"{name} (reference pairs)")
        if n.get("pairs") == o.get("pairs") == "reference" and n.get("n_pairs") == o.get("n_pairs"):
            for key in ("values", "stderr", "ci"):
                d.add(n[key], o[key], exact_mask(n))
            for key in ("clean_logit_diff", "corrupted_logit_diff"):
                if key in n and key in o:
                    d.add(n[key], o[key])
        else:
            d.note = "not both on the explicit pairs"
        out.append(d)
        d = Diff(f"{name} (generated sets of the same pairs)")
        sets_n = ([n["pooled"]] if n.get("pooled") else []) + list(n.get("per_template", []))
        sets_o = ([o["pooled"]] if o.get("pooled") else []) + list(o.get("per_template", []))
        skipped = 0
        for sn in sets_n:
            match = [so for so in sets_o if _same_pairs(sn, so)]
            if not match:
                skipped += 1
                continue
            for key in ("values", "stderr", "ci"):
                d.add(sn[key], match[0][key], exact_mask(sn))
        d.note = f"{skipped} of {len(sets_n)} sets on other pairs" if skipped else ""
        out.append(d)
    if "path_patching" in new and "path_patching" in old:
        n, o = new["path_patching"], old["path_patching"]
        d = Diff("path_patching")
        if all(n.get(k) == o.get(k) for k in ("n_pairs", "n_excluded", "senders")):
            for key in PATH_KEYS:
                for k in (key, f"{key}_ci"):
                    if k in n and k in o:
                        d.add(n[k], o[k])
        else:
            d.note = "other pairs or senders"
        out.append(d)
    if "circuit" in new and "circuit" in old:
        n, o = new["circuit"], old["circuit"]
        d = Diff("circuit (EAP-IG edges, faithfulness)")
        if all(n.get(k) == o.get(k) for k in ("n_pairs", "n_excluded", "ig_steps", "nodes")):
            old_edges = {(e["sender"], e["receiver"], e["input"]): e for e in o["edges"]}
            for e in n["edges"]:
                match = old_edges.get((e["sender"], e["receiver"], e["input"]))
                if match is not None:
                    d.add([e["score"], *e["score_ci"]], [match["score"], *match["score_ci"]])
            old_leaves = {p: v for key in ("faithfulness", "chosen", "full", "empty") if key in o
                          for p, v in _leaves(o[key], key)}
            # The random baseline on other pairs (the new code runs the random circuits on fewer pairs when more
            # would not move the band): its numbers are not the same computation; they get a section of their own.
            r_new, r_old = (x.get("faithfulness", {}).get("random_pairs") for x in (n, o))
            random = lambda path: ".random" in path  # noqa: E731
            band = Diff("circuit random baseline (band, on other pairs)") if r_new != r_old else None
            for key in ("faithfulness", "chosen", "full", "empty"):
                for path, value in _leaves(n.get(key), key):
                    if path not in old_leaves or (band is not None and random(path) and path.endswith("pairs")):
                        continue
                    (band if band is not None and random(path) else d).add(value, old_leaves[path])
            if band is not None:
                band.note = f"random circuits on {r_new} pairs, old on {r_old}: not float rounding"
                out.append(band)
        else:
            d.note = "other pairs, steps or nodes"
        out.append(d)
    return out


def _half_width(ci: Any) -> float:
    c = np.asarray(ci, dtype=float)
    if c.size == 0:
        return math.nan
    w = (c[..., 1] - c[..., 0]) / 2
    return float(np.nanmax(w)) if np.isfinite(w).any() else math.nan


def headline_cis(r: dict[str, Any]) -> dict[str, float]:
    """The 95% CI half-widths the headlines rest on: the mean logit difference, each ablation's top drop and the
    widest pooled residual-stream patching cell."""
    out: dict[str, float] = {}
    if "logit_diff" in r:
        out["mean logit diff"] = _half_width(r["logit_diff"]["ci"])
    for kind in ("zero", "mean"):
        top = r.get("head_ablation", {}).get(kind, {}).get("top_drop")
        if top:
            out[f"{kind}-ablation top drop"] = _half_width(top["ci"])
    rp = r.get("resid_patching")
    if rp:
        pooled = rp.get("pooled") or (rp if rp.get("pairs") == "pooled" else None)
        if pooled:
            out["pooled resid patching (max over cells)"] = _half_width(pooled["ci"])
    return out


def precision(r: dict[str, Any]) -> str:
    """What the results say about the patching pairs' precision target (absent before it existed)."""
    rp = r.get("resid_patching") or {}
    found = {k: v for k, v in rp.items() if "precision" in k or "target" in k}
    found.update({f"pooled.{k}": v for k, v in (rp.get("pooled") or {}).items() if "precision" in k or "target" in k})
    target = (r.get("config") or {}).get("patching_target")
    text = f"config.patching_target {target}" if target is not None else "no patching_target in config"
    return text + (f"; {json.dumps(found)}" if found else "; no precision entry in resid_patching")


def print_comparison(part: str, new: Child, old: Child, new_src: Path, old_src: Path, tol: float) -> dict[str, bool]:
    """Shared numbers, headline CIs and findings of one part; returns its checks."""
    rn = json.loads((new.out / "results.json").read_text())
    ro = json.loads((old.out / "results.json").read_text())
    print(f"\n[{part}] numbers both versions computed exactly: max |new − old|")
    worst, count = 0.0, 0
    for d in compare(rn, ro):
        print(f"  {d.section:48s} {d.n:8d} numbers  {d.max_abs:.2e}" + (f"  ({d.note})" if d.note else ""))
        if "not float rounding" not in d.note:  # a different computation: shown, not held to the tolerance
            worst, count = max(worst, d.max_abs), count + d.n
    print(f"  {'all':48s} {count:8d} numbers  {worst:.2e}  (tolerance {tol:.0e})")
    cis_n, cis_o = headline_cis(rn), headline_cis(ro)
    tgt = (rn.get("config") or {}).get("patching_target")
    print(f"[{part}] headline 95% CI half-widths (old → new); new: {precision(rn)}")
    ci_ok = True
    for key in dict.fromkeys([*cis_o, *cis_n]):
        a, b = cis_o.get(key, math.nan), cis_n.get(key, math.nan)
        within = "patching" in key and bool(tgt) and b <= tgt
        ok = (b <= a * (1 + 1e-6) + 1e-4) or within  # 1e-4: float rounding of the numbers behind the CI
        ci_ok &= ok
        print(f"  {key:40s} {a:.4f} → {b:.4f}  {'ok' if ok else 'WIDER'}"
              + (" (within the target)" if within and not b <= a else ""))
    fo, fn = findings(old_src, old.out / "results.json"), findings(new_src, new.out / "results.json")
    same = fo == fn
    print(f"[{part}] key findings: {'identical text' if same else 'they differ: judge the substance'}")
    for label, lines in ((("both", fo),) if same else (("old", fo), ("new", fn))):
        print(f"  {label}:")
        for line in lines:
            print(f"    • {line}")
    return {"numbers": count > 0 and worst <= tol, "ci": ci_ok, "findings": same}


# ---- peers and the notebook's method on the new default's pairs -------------------------------------------------
@dataclass(eq=False)
class PairSet:
    """A set of pairs of one token length that the new default patched, and the results sets it fills."""

    label: str
    clean: Any
    corrupted: Any
    correct: Any
    incorrect: Any
    targets: dict[str, dict[str, Any]]  # patching section → the results dict holding its values for this set


def pair_sets(tt: Any, r: dict[str, Any]) -> tuple[list[PairSet], list[str]]:
    """The task's explicit pairs (when the new default's values are on them) and, per template and length, the
    generated pairs it used: the first n_pairs + n_excluded of each generated group, generated pairs being
    added in their fixed order (:func:`logitlab.task.generated_pairs`; with a precision target, the seeded order
    of :func:`logitlab.analyses.patching_plan.ordered`)."""
    from logitlab.task import generated_pairs

    notes: list[str] = []
    sets: list[PairSet] = []
    if r.get("resid_patching", {}).get("pairs") == "reference" and tt.clean_tokens is not None:
        sets.append(PairSet("reference", tt.clean_tokens, tt.corrupted_tokens, tt.pair_correct_ids,
                            tt.pair_incorrect_ids, {s: r[s] for s in PATCH_SECTIONS if s in r}))
    per = {s: list(r.get(s, {}).get("per_template", [])) for s in PATCH_SECTIONS}
    if len({len(v) for v in per.values()}) != 1:
        notes.append("the sections list different generated sets: generated pairs not compared")
        return sets, notes
    cfg = r.get("config") or {}
    groups = generated_pairs(tt, cfg.get("patching_pairs", 0)) if cfg.get("patching_pairs", 0) > 0 else ()
    for i, entry in enumerate(per["resid_patching"]):
        g = [g for g in groups if g.template_text == entry["template"]
             and g.clean_tokens.shape[1] == len(entry["tokens"])]
        if not g:
            notes.append(f"no generated group for {entry['template']!r} ({len(entry['tokens'])} tokens)")
            continue
        k = entry["n_pairs"] + entry["n_excluded"]
        g = g[0]
        if (r.get("resid_patching") or {}).get("precision"):  # precision-targeted: pairs in their seeded order
            from logitlab.analyses.patching_plan import ordered
            g = ordered(g, list(groups).index(g))
        sets.append(PairSet(f"{entry['template']} ({len(entry['tokens'])} tokens, {k} pairs)", g.clean_tokens[:k],
                            g.corrupted_tokens[:k], g.correct_ids[:k], g.incorrect_ids[:k],
                            {s: per[s][i] for s in PATCH_SECTIONS if per[s]}))
    return sets, notes


def normalise(patched: Any, clean: Any, corrupted: Any, min_gap: float) -> Any:
    """Mean over the pairs with |gap| ≥ min_gap of (patched − corrupted)/(clean − corrupted).

    ``patched``: (…, pair); ``clean``, ``corrupted``: (pair,)."""
    gap = clean - corrupted
    used = gap.abs() >= min_gap
    return ((patched - corrupted) / gap)[..., used].mean(-1)


_KIND_SECTION = {"resid_pre": "resid_patching", "attn_out": "attn_patching", "mlp_out": "mlp_patching",
                 "z": "head_patching", "resid": "resid_patching", "attn": "attn_patching",
                 "mlp": "mlp_patching", "heads": "head_patching"}


def check_sets(d: Diff, sets: list[PairSet], computed: list[dict[str, Any]]) -> None:
    """Add a method's normalised patching values per set to ``d`` against the new default's exact cells."""
    for s, values in zip(sets, computed):
        for kind, v in values.items():
            target = s.targets.get(_KIND_SECTION[kind])
            if target is not None and len(target.get("values", [])):
                d.add(v.numpy(), target["values"], exact_mask(target))


def _diffs(*ds: Diff) -> str:
    return "; ".join(f"{d.section} {d.max_abs:.2e} over {d.n} exact cells" + (f" ({d.note})" if d.note else "")
                     for d in ds)


def check_ablation(d: Diff, r: dict[str, Any], ablated: dict[str, Any]) -> None:
    """``ablated``: (kind, metric) → (L, H) mean over prompts, against the new default's exact heads."""
    for (kind, metric), v in ablated.items():
        n = r["head_ablation"][kind]
        d.add(v.numpy(), n[metric], ablation_mask(r["head_ablation"], kind, metric))


def run_peers(m: Any, tt: Any, r: dict[str, Any], new_s: float) -> dict[str, float]:
    """nnsight and TransformerLens, batched as their users write it, on the new default's exact analyses."""
    import torch
    from bench_peers import (nnsight_ablation, nnsight_logit_diff, nnsight_patching, tl_ablation, tl_logit_diff,
                             tl_patching)
    from logitlab.analyses.patching import MIN_GAP

    torch.set_grad_enabled(False)
    if len(set(tt.final_pos.tolist())) != 1:
        print("peers: skipped (they read the last position: the task's prompts must share one length)")
        return {}
    L, H, dh = m.spec.n_layers, m.spec.n_heads, m.spec.d_head
    sets, notes = pair_sets(tt, r)
    for note in notes:
        print(f"  note: {note}")
    ratios: dict[str, float] = {}
    peers: list[tuple[str, Any]] = []
    try:
        from nnsight import LanguageModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        hf = AutoModelForCausalLM.from_pretrained(m.source, dtype=torch.float32).eval()
        lm = LanguageModel(hf, tokenizer=AutoTokenizer.from_pretrained(m.source))
        peers.append(("nnsight (batched)", (
            lambda: nnsight_ablation(lm, tt.tokens, tt.correct_ids, tt.incorrect_ids, L, H, dh),
            lambda s: nnsight_patching(lm, hf, s.clean, s.corrupted, s.correct, s.incorrect, L, H, dh, per_pair=True),
            lambda toks, c, i: nnsight_logit_diff(lm, toks, c, i))))
    except ImportError:
        print("peers: nnsight not installed (pip install nnsight): skipped")
    bridge = m.bridge
    peers.append(("TransformerLens (batched)", (
        lambda: tl_ablation(bridge, tt.tokens, tt.correct_ids, tt.incorrect_ids, L, H),
        lambda s: tl_patching(bridge, s.clean, s.corrupted, s.correct, s.incorrect, L, H, per_pair=True),
        lambda toks, c, i: tl_logit_diff(bridge, toks, c, i, L))))
    for name, (ablate, patch, diff) in peers:
        t0 = time.perf_counter()
        ld, loss = ablate()  # (2, L, H, B)
        computed = []
        for s in sets:
            raw = patch(s)
            clean, corrupted = diff(s.clean, s.correct, s.incorrect), diff(s.corrupted, s.correct, s.incorrect)
            computed.append({k: normalise(v, clean, corrupted, MIN_GAP) for k, v in raw.items()})
        seconds = time.perf_counter() - t0
        da, dp = Diff("ablation"), Diff("patching")
        check_ablation(da, r, {(kind, metric): v[i].mean(-1) for i, kind in enumerate(("zero", "mean"))
                               for metric, v in (("logit_diff", ld), ("loss", loss))})
        check_sets(dp, sets, computed)
        ratios[name] = seconds / new_s
        print(f"  {name:28s} {seconds:8.1f} s = {seconds / new_s:5.1f}× the new default end to end; "
              f"max |peer − logitlab|: {_diffs(da, dp)}")
    return ratios


def run_notebook(m: Any, tt: Any, r: dict[str, Any], new_s: float,
                 cap: int | None) -> tuple[float, float, bool]:
    """One hooked TransformerLens forward per intervention (``bench_battery.py``'s loop method) on the new
    default's ablation and pairs. Returns (seconds measured, seconds with the extrapolated rest, extrapolated)."""
    import torch
    from bench_battery import loop_ablation, loop_patching
    from logitlab.analyses.patching import MIN_GAP
    from logitlab.answers import PAD

    torch.set_grad_enabled(False)
    if len(set(tt.final_pos.tolist())) != 1:
        print("notebook: skipped (its mean ablation averages each position over prompts of one length)")
        return math.nan, math.nan, False
    if bool((tt.incorrect_ids[:, 1:] != PAD).any()):
        print("  note: the loop method scores the first incorrect answer only; this task has several")
    sets, notes = pair_sets(tt, r)
    for note in notes:
        print(f"  note: {note}")
    t0 = time.perf_counter()
    ab = loop_ablation(m, tt)
    ablation_s = time.perf_counter() - t0
    done, computed, cost_done, seconds_done = [], [], 0.0, 0.0
    generated = [s for s in sets if s.label != "reference"]
    keep = [s for s in sets if s.label == "reference"] + generated[:cap if cap is not None else len(generated)]
    L, H = m.spec.n_layers, m.spec.n_heads

    def cost(s: PairSet) -> float:  # rows × tokens × forwards: what one set's loops cost, roughly
        n, T = s.clean.shape
        return n * T * (3 * L * T + L * H)
    for s in keep:
        t = time.perf_counter()
        computed.append(loop_patching(m.bridge, s.clean, s.corrupted, s.correct, s.incorrect[:, 0], MIN_GAP))
        seconds_done += time.perf_counter() - t
        cost_done += cost(s)
        done.append(s)
    measured = ablation_s + seconds_done
    left = [s for s in sets if s not in done]
    extra = seconds_done / cost_done * sum(cost(s) for s in left) if left and cost_done else 0.0
    da, dp = Diff("ablation"), Diff("patching")
    check_ablation(da, r, {(kind, metric): ab[f"{kind}_{metric}"] for kind in ("zero", "mean")
                           for metric in ("logit_diff", "loss")})
    check_sets(dp, done, computed)
    total = measured + extra
    label = (f"{measured:.1f} s measured ({len(done)} of {len(sets)} pair sets) + {extra:.1f} s EXTRAPOLATED "
             f"for the other {len(left)} = {total:.1f} s" if left else f"{total:.1f} s (in full)")
    print(f"  one forward per intervention: ablation {ablation_s:.1f} s + patching {seconds_done:.1f} s; {label}; "
          f"= {total / new_s:.1f}× the new default end to end; max |notebook − logitlab|: {_diffs(da, dp)}")
    return measured, total, bool(left)


# ---- main ------------------------------------------------------------------------------------------------------
def end_to_end(args: argparse.Namespace, e2e: list[str], versions: dict[str, Path], base: Path,
               summary: list[str]) -> dict[tuple[str, str], list[Child]]:
    """The end-to-end parts, new and old alternated; their table, comparisons and summary lines."""
    runs: dict[tuple[str, str], list[Child]] = {}
    for part in e2e:
        for rep in range(args.repeats):
            for v in (("new", "old") if rep % 2 == 0 else ("old", "new")):
                out = base / f"{part}-{v}-{rep}"
                child = run_child(versions[v], command(part, args, out), out, base / f"{part}-{v}-{rep}.log")
                runs.setdefault((part, v), []).append(child)
                print(f"  {part:8s} {v} #{rep + 1}: {child.seconds:7.1f} s, peak RSS {child.peak_rss_gib:.2f} GiB",
                      flush=True)
    if e2e:
        print(f"\n{'part':10s} {'old s':>9s} {'new s':>9s} {'old/new':>8s} {'old GiB':>8s} {'new GiB':>8s}"
              "   (median of the repeats; peak RSS: the largest)")
    for part in e2e:
        o, n = runs[(part, "old")], runs[(part, "new")]
        so, sn = statistics.median(c.seconds for c in o), statistics.median(c.seconds for c in n)
        ro, rn = max(c.peak_rss_gib for c in o), max(c.peak_rss_gib for c in n)
        print(f"{part:10s} {so:9.1f} {sn:9.1f} {so / sn:7.2f}× {ro:8.2f} {rn:8.2f}")
        checks = print_comparison(part, n[-1], o[-1], versions["new"], versions["old"], args.tol)
        summary.append(f"{part}: new {so / sn:.2f}× faster than the old code (target ≥ {TARGET_OLD:g}×): "
                       f"{'PASS' if so / sn >= TARGET_OLD else 'FAIL'}; shared numbers equal within "
                       f"{args.tol:.0e}: {'PASS' if checks['numbers'] else 'FAIL'}; headline CIs no wider or "
                       f"within the target: {'PASS' if checks['ci'] else 'FAIL'}; findings "
                       f"{'identical' if checks['findings'] else 'differ (read them above)'}")
    return runs


def in_process(args: argparse.Namespace, parts: list[str], runs: dict[tuple[str, str], list[Child]], base: Path,
               summary: list[str]) -> None:
    """The peers and the notebook's method, in this process, against the new default end to end."""
    if args.device not in (None, "cpu"):
        print(f"peers and notebook: skipped (they run on the CPU; --device {args.device})")
        return
    if ("default", "new") in runs:
        ref = runs[("default", "new")]
    else:
        out = base / "default-new-ref"
        ref = [run_child(REPO, command("default", args, out), out, base / "default-new-ref.log")]
        print(f"  default new (reference for the peers and the notebook): {ref[0].seconds:.1f} s")
    new_s = statistics.median(c.seconds for c in ref)
    r = json.loads((ref[-1].out / "results.json").read_text())
    # In this process too, this checkout's logitlab (not an installed one) and its benchmarks' helpers.
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    import logitlab
    if Path(logitlab.__file__).resolve().parents[1] != REPO:
        raise SystemExit(f"imported logitlab from {logitlab.__file__}, not from {REPO}")
    m = logitlab.load_model(args.model, device="cpu")
    tt = logitlab.tokenize_task(logitlab.load_task(args.task), m.tokenizer)
    m.bridge  # boot outside the timings  # noqa: B018
    if "peers" in parts:
        print("\n[peers] the new default's exact ablation and patching, batched as each library's users write it "
              "(computation only, model loaded)")
        for name, ratio in run_peers(m, tt, r, new_s).items():
            summary.append(f"peers: {name} takes {ratio:.2f}× the new default's end-to-end time")
    if "notebook" in parts:
        print("\n[notebook] the new default's ablation and patching, one hooked forward per intervention "
              "(computation only, model loaded; the default's other analyses not included)")
        measured, total, extrapolated = run_notebook(m, tt, r, new_s, args.notebook_groups)
        ratio = total / new_s
        if math.isfinite(ratio):
            summary.append(f"notebook: new default {ratio:.2f}× faster than the notebook's method "
                           f"{'(EXTRAPOLATED) ' if extrapolated else ''}(target ≥ {TARGET_NOTEBOOK:g}×): "
                           f"{'PASS' if ratio >= TARGET_NOTEBOOK else 'FAIL'}")
        if extrapolated and math.isfinite(measured):  # a lower bound that needs no extrapolation
            summary.append(f"notebook, measured part only (the ablations and the pair sets it patched, a subset of "
                           f"the default's work): new default {measured / new_s:.2f}× faster (target ≥ "
                           f"{TARGET_NOTEBOOK:g}×): {'PASS' if measured / new_s >= TARGET_NOTEBOOK else 'FAIL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--repeats", type=int, default=1, help="new/old runs per end-to-end part, alternated")
    ap.add_argument("--old-commit", default="6b36d33", help="the code before (a detached git worktree of it)")
    ap.add_argument("--old-src", default=None, help="a checkout of the old code to use instead of --old-commit")
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--task", default="pronouns")
    ap.add_argument("--large-task", default="pronouns-large")
    ap.add_argument("--device", default=None, help="passed to both versions' commands (default: theirs)")
    ap.add_argument("--notebook-groups", type=int, default=None,
                    help="patch only this many generated pair sets by the notebook's method; extrapolate the rest")
    ap.add_argument("--keep", default=None, help="write every run's output folder here (default: a temporary one)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |new − old| counted as float rounding")
    ap.add_argument("--no-warm", action="store_true", help="skip the untimed model load before the timed runs")
    args = ap.parse_args()
    for key in ("model", "task", "large_task"):  # the children run in their own checkout's folder
        if Path(getattr(args, key)).exists():
            setattr(args, key, str(Path(getattr(args, key)).resolve()))
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or args.repeats < 1 or (args.notebook_groups is not None and args.notebook_groups < 0):
        raise SystemExit(f"unknown part {bad[0]!r} (choose from {', '.join(PARTS)})" if bad
                         else "--repeats ≥ 1 and --notebook-groups ≥ 0")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '(unset)')}; model {args.model}, task {args.task}; "
          f"old: {args.old_src or args.old_commit}")
    # A terminated benchmark still removes its temporary worktree and outputs (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="logitlab-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    summary: list[str] = []
    try:
        with old_checkout(args.old_commit, args.old_src) as old_src:
            versions = {"new": REPO, "old": old_src}
            e2e = [p for p in E2E if p in parts]
            if not args.no_warm and (e2e or {"peers", "notebook"} & set(parts)):
                for src in (versions.values() if e2e else [REPO]):
                    warm(src, args.model)
            runs = end_to_end(args, e2e, versions, base, summary)
            if {"peers", "notebook"} & set(parts):
                in_process(args, parts, runs, base, summary)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print("\nsummary")
    for line in summary:
        print(f"  {line}")


if __name__ == "__main__":
    main()
