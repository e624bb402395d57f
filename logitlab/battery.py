"""The whole battery: task → model → clean run → the registered analyses → results (dict) → files.

The CLI and notebooks call :func:`run_battery`; every analysis is also callable on its own from
``logitlab.analyses``. Which analyses run, in which order, and which results keys they write is declared once
per analysis (:mod:`logitlab.registry`, built-ins in :mod:`logitlab.analyses.registered`). The results dict's
shape is :class:`logitlab.results.Results`; :func:`write_results` validates it against the registered types
(:func:`logitlab.results.validate_results`) before writing anything (a fraction of a millisecond).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, cast

import torch

import logitlab.registry as registry
from logitlab._io import atomic_write
from logitlab._version import __version__
from logitlab.analyses._common import clean_run
from logitlab.analyses.context import RunContext, Step, no_progress
from logitlab.analyses.path_patching import top_senders
from logitlab.answers import PAD
from logitlab.config import ANALYSES, DEFAULT_ANALYSES, CircuitConfig, RunConfig
from logitlab.errors import LogitlabError
from logitlab.model.load import Model
from logitlab.results import SCHEMA_VERSION, ModelSection, Results, TaskSection, validate_results
from logitlab.sweep import SweepStats
from logitlab.task import Task, tokenize_task

__all__ = ["ANALYSES", "DEFAULT_ANALYSES", "CircuitConfig", "RunConfig", "run_battery", "write_results", "check_finite",
           "top_senders"]

log = logging.getLogger(__name__)


def check_finite(obj: Any, where: str = "results") -> None:
    """Raise if any number in a nested results structure is NaN or infinite, naming where."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise LogitlabError(f"non-finite value ({obj}) in {where}",
                                "the model produced NaN/inf activations; try --dtype float32")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


def _check_activations(cache: Any, n_layers: int) -> None:
    """Raise naming the first component whose output holds NaN/inf."""
    if bool(torch.isfinite(cache.resid_final).all()):
        return
    where = "the embedding" if not bool(torch.isfinite(cache.resid_pre[0]).all()) else "the final residual stream"
    for layer in range(n_layers):
        if not bool(torch.isfinite(cache.attn_out[layer]).all()):
            where = f"layer {layer}'s attention output"
            break
        if not bool(torch.isfinite(cache.mlp_out[layer]).all()):
            where = f"layer {layer}'s MLP output"
            break
    raise LogitlabError(f"NaN/inf activations in the clean run, first in {where}",
                        "check the model's weights; with --dtype bfloat16 try float32")


def run_battery(model: Model, task: Task, config: RunConfig, progress: Step = no_progress,
                stats: SweepStats | None = None) -> Results:
    """Run the always-run analyses and those ``config.analyses`` selects, in registration order, and return the
    results dict (types: :class:`logitlab.results.Results`).

    ``stats``, if given, accumulates the sweeps' work (items, FLOPs, seconds) for benchmarks.
    """
    tt = tokenize_task(task, model.tokenizer)
    adv = progress("clean run", 1)
    run = clean_run(model, tt)
    _check_activations(run.cache, model.spec.n_layers)
    adv(1)
    task_dict = cast(TaskSection, {**task.to_dict(), "prompt_tokens": [list(t) for t in tt.str_tokens]})
    task_dict["answers"] = [[model.tokenizer.decode([int(c)]), " / ".join(model.to_str_tokens([x for x in i if x != PAD]))]
                            for c, i in zip(tt.correct_ids, tt.incorrect_ids.tolist())]
    results: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "logitlab_version": __version__,
                               "config": _config_dict(config), "model": cast(ModelSection, model.to_dict()),
                               "task": task_dict}
    ctx = RunContext(model=model, task=task, tt=tt, run=run, config=config, progress=progress, stats=stats)
    selected = set(config.analyses)
    for analysis in registry.analyses():
        if not (analysis.always or analysis.name in selected):
            continue
        sections = analysis.compute(ctx) or {}
        unknown = [k for k in sections if k not in analysis.sections]
        if unknown:
            raise LogitlabError(f"analysis {analysis.name!r} wrote {unknown[0]!r}, which it does not declare")
        results.update(sections)
    check_finite(results)
    return cast(Results, results)


def _config_dict(config: RunConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["analyses"] = list(config.analyses)
    return d


def _tables(results: Results) -> dict[str, list[dict[str, Any]]]:
    """Long-format tables (one row per value) for pandas."""
    t: dict[str, list[dict[str, Any]]] = {}
    task = results["task"]
    ld = results["logit_diff"]
    t["logit_diff"] = [{"prompt_index": i, "prompt": p, "correct": a[0], "incorrect": a[1], "logit_diff": v,
                        "prob_ratio": r, "loss": lo}
                       for i, (p, a, v, r, lo) in enumerate(zip(task["prompts"], task["answers"], ld["per_prompt"],
                                                                 ld["prob_ratio"], ld["loss_per_prompt"]))]
    for key, d in (("logit_lens", results["logit_lens"]), ("layer_attribution", results["layer_attribution"])):
        t[key] = [{"label": lab, "logit_diff": v, "stderr": s, "ci_low": c[0], "ci_high": c[1]}
                  for lab, v, s, c in zip(d["labels"], d["values"], d["stderr"], d["ci"])]
    ha, hd = results["head_attribution"], results["head_attribution_detail"]
    t["head_attribution"] = [{"layer": l, "head": h, "logit_diff": v, "stderr": hd["stderr"][l][h],
                              "ci_low": hd["ci"][l][h][0], "ci_high": hd["ci"][l][h][1]}
                             for l, row in enumerate(ha) for h, v in enumerate(row)]
    if "robustness" in results:
        t["robustness"] = [{"template_index": r["index"], "template": r["template"], "n": r["n"],
                            "logit_diff": r["mean"], "stderr": r["stderr"], "ci_low": r["ci"][0],
                            "ci_high": r["ci"][1], "top_dla_layer": r["top_dla"]["head"][0],
                            "top_dla_head": r["top_dla"]["head"][1],
                            **{f"top_{k}_ablation_{part}": v["head"][j] for k, v in r["top_ablation"].items()
                               for j, part in enumerate(("layer", "head"))}}
                           for r in results["robustness"]["templates"]]
    if "head_ablation" in results:
        t["head_ablation"] = _ablation_rows(results["head_ablation"])
    patching = (("resid_patching", results.get("resid_patching")), ("attn_patching", results.get("attn_patching")),
                ("mlp_patching", results.get("mlp_patching")), ("head_patching", results.get("head_patching")))
    for key, section in patching:
        if section is not None:
            t[key] = _patching_rows(section, key != "head_patching")
    return t


def _write_csv(f: Any, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV, columns in order of first appearance, empty where a row has no value (None or missing): what
    pandas reads back as the same table (``pd.read_csv``), without importing pandas on every run."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def _ablation_rows(ab: Any) -> list[dict[str, Any]]:
    return [{"ablation": k, "layer": l, "head": h, "logit_diff": v, "loss": ab[k]["loss"][l][h],
                           "logit_diff_stderr": ab[k]["logit_diff_stderr"][l][h], "loss_stderr": ab[k]["loss_stderr"][l][h],
                           **{f"delta_{m}{suffix}": value for m in ("logit_diff", "loss")
                              for suffix, value in (("", ab[k][f"delta_{m}"][l][h]),
                                                    ("_stderr", ab[k][f"delta_{m}_stderr"][l][h]),
                                                    ("_ci_low", ab[k][f"delta_{m}_ci"][l][h][0]),
                                                    ("_ci_high", ab[k][f"delta_{m}_ci"][l][h][1]))},
                           "method": ab[k]["method"][l][h] if "method" in ab[k] else "exact"}
                          for k in ("zero", "mean") for l, row in enumerate(ab[k]["logit_diff"]) for h, v in enumerate(row)]


def _patching_rows(d: Any, positions: bool) -> list[dict[str, Any]]:
    """One row per (set, layer, position or head): the set `values` holds, then the pooled and per-template sets."""
    sets = [(d["pairs"], None, d)]
    if d.get("pooled"):
        sets.append(("pooled", None, d["pooled"]))
    sets += [("template", s["template"], s) for s in d.get("per_template", [])]
    rows = []
    for name, template, s in sets:
        for l, row in enumerate(s["values"]):
            for j, v in enumerate(row):
                where = {"position": j, "token": s["tokens"][j]} if positions else {"head": j}
                rows.append({"pairs": name, "template": template, "layer": l, **where, "value": v,
                             "stderr": s["stderr"][l][j], "ci_low": s["ci"][l][j][0], "ci_high": s["ci"][l][j][1],
                             "n_pairs": s["n_pairs"], "n_excluded": s["n_excluded"]})
    return rows


def write_results(results: Results, out: Path) -> Path:
    """Validate ``results`` (:func:`logitlab.results.validate_results`), then write results.json, config.json and
    tables/*.csv atomically into ``out``."""
    validate_results(results)
    try:
        (out / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LogitlabError(f"cannot create output folder {out}: {e}", "choose a writable --out folder") from e
    for name, rows in _tables(results).items():
        with atomic_write(out / "tables" / f"{name}.csv") as f:
            _write_csv(f, rows)
    with atomic_write(out / "config.json") as f:
        json.dump(results["config"], f, indent=2)
    path = out / "results.json"
    with atomic_write(path) as f:
        json.dump(results, f, indent=1, ensure_ascii=False, allow_nan=False)
    return path
