"""The whole battery: task → model → clean run → analyses → results (dict) → files.

The CLI and notebooks call :func:`run_battery`; every analysis is also callable on its own from
``logitlab.analyses``. The results dict's shape is :class:`logitlab.results.Results`; :func:`write_results`
validates it against those types before writing anything (a fraction of a millisecond).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from logitlab import __version__
from logitlab._io import atomic_write
from logitlab.analyses import (
    activation_patching, attention_patterns, clean_run, dla, head_ablation, head_attribution, layer_attribution,
    logit_diff, logit_lens, robustness, task_predictions, unembed_bias,
)
from logitlab.analyses.atp import attribution_patching
from logitlab.analyses.circuit import CIRCUIT_PAIRS, IG_STEPS, N_RANDOM, THRESHOLD, eap_ig_circuit
from logitlab.analyses.patching import MIN_GAP, patching_items
from logitlab.analyses.path_patching import path_items, path_patching
from logitlab.answers import PAD
from logitlab.errors import LogitlabError
from logitlab.model.backend import GRAD, SWEEP, has
from logitlab.model.load import Model
from logitlab.results import SCHEMA_VERSION, Results, TaskSection, validate_results
from logitlab.sweep import SweepSettings, SweepStats
from logitlab.task import MAX_PAIRS_PER_TEMPLATE, Task, tokenize_task

__all__ = ["ANALYSES", "DEFAULT_ANALYSES", "CircuitConfig", "RunConfig", "run_battery", "write_results", "check_finite",
           "top_senders"]

log = logging.getLogger(__name__)



#: Analyses ``RunConfig.analyses`` can select (the clean run, logit difference, DLA, logit lens, layer and head
#: attribution, predictions and the unembedding bias always run: they cost one forward pass).
ANALYSES = ("attention", "ablation", "patching", "atp", "path_patching", "robustness", "circuit")
#: What ``logitlab run`` runs unless told otherwise: everything but circuit discovery (``--circuit``).
DEFAULT_ANALYSES = tuple(a for a in ANALYSES if a != "circuit")


@dataclass(frozen=True)
class CircuitConfig:
    """Settings of path patching and EAP-IG circuit discovery."""

    pairs: int = CIRCUIT_PAIRS  # clean/corrupted pairs (the task's own first, then generated ones)
    ig_steps: int = IG_STEPS
    n_random: int = N_RANDOM  # random circuits per size (the faithfulness baseline)
    threshold: float = THRESHOLD  # recovery that defines "the circuit"
    n_senders: int = 4  # path patching: top heads by zero-ablation and by DLA, this many in all
    path_pairs: int = 8  # path patching's pairs (it runs in every `logitlab run`: fewer than discovery)

    def __post_init__(self) -> None:
        if min(self.pairs, self.ig_steps, self.n_random, self.n_senders, self.path_pairs) < 1:
            raise LogitlabError("circuit settings: pairs, ig_steps, n_random, n_senders and path_pairs must be ≥ 1")
        if not 0 < self.threshold <= 1:
            raise LogitlabError(f"circuit threshold must be in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's numbers (written next to the results)."""

    model: str = "builtin"
    task: str = "pronouns"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    top_k: int = 10
    n_attention_heads: int = 3
    attention_prompt: int = 0
    n_predictions: int = 4
    max_memory: int | None = None
    patching_pairs: int = MAX_PAIRS_PER_TEMPLATE  # generated patching pairs per template (0: explicit pairs only)
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    circuit: CircuitConfig = CircuitConfig()

    def __post_init__(self) -> None:
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown:
            raise LogitlabError(f"unknown analysis {unknown[0]!r}", f"choose from {', '.join(ANALYSES)}")
        if self.patching_pairs < 0:
            raise LogitlabError("patching_pairs must be ≥ 0", "0 patches the task's explicit pairs only")
        if self.top_k < 1 or self.n_attention_heads < 1 or self.n_predictions < 0 or self.attention_prompt < 0:
            raise LogitlabError("top_k and n_attention_heads must be ≥ 1; n_predictions and attention_prompt ≥ 0")
        if self.max_memory is not None and self.max_memory <= 0:
            raise LogitlabError("max_memory must be positive", "give the sweep memory budget in GiB, e.g. --max-memory 4")
        if self.dtype not in ("float32", "bfloat16"):
            raise LogitlabError(f"unknown dtype {self.dtype!r}", "choose float32 or bfloat16")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise LogitlabError(f"unknown device {self.device!r}", "use cpu, cuda or cuda:N")


Step = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


def _no_progress(_: str, __: int) -> Callable[[int], None]:
    return lambda _n: None


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


def run_battery(model: Model, task: Task, config: RunConfig, progress: Step = _no_progress,
                stats: SweepStats | None = None) -> Results:
    """Run every analysis and return the results dict (types: :class:`logitlab.results.Results`).

    ``stats``, if given, accumulates the sweeps' work (items, FLOPs, seconds) for benchmarks.
    """
    tt = tokenize_task(task, model.tokenizer)
    spec = model.spec
    settings = lambda adv: SweepSettings(max_memory=config.max_memory, progress=adv, stats=stats)  # noqa: E731
    adv = progress("clean run", 1)
    run = clean_run(model, tt)
    _check_activations(run.cache, spec.n_layers)
    adv(1)
    task_dict: TaskSection = {**task.to_dict(),  # type: ignore[typeddict-item]
                              "prompt_tokens": [list(t) for t in tt.str_tokens]}
    task_dict["answers"] = [[model.tokenizer.decode([int(c)]), " / ".join(model.to_str_tokens([x for x in i if x != PAD]))]
                            for c, i in zip(tt.correct_ids, tt.incorrect_ids.tolist())]
    # Built in the analyses' order; their to_dict() are untyped, the types are checked by validate_results.
    results: Results = {  # type: ignore[typeddict-item]
        "schema_version": SCHEMA_VERSION, "logitlab_version": __version__, "config": _config_dict(config),
        "model": model.to_dict(), "task": task_dict,
        "predictions": [p.to_dict() for p in task_predictions(run, config.n_predictions, k=config.top_k)],
        "logit_diff": logit_diff(run).to_dict(), "dla": dla(run).to_dict(), "logit_lens": logit_lens(run).to_dict(),
        "layer_attribution": layer_attribution(run).to_dict(),
    }
    heads = head_attribution(run)
    hd = heads.to_dict()
    results["head_attribution"] = hd.pop("values")
    results["head_attribution_detail"] = hd  # type: ignore[typeddict-item]
    todo = set(config.analyses)
    if "attention" in todo:
        results["attention"] = attention_patterns(  # type: ignore[typeddict-item]
            run, heads, k=min(config.n_attention_heads, spec.n_layers * spec.n_heads),
            prompt_index=min(config.attention_prompt, tt.n_prompts - 1)).to_dict()
    n_items = spec.n_layers * spec.n_heads * tt.n_prompts
    ablations = {}
    if "ablation" in todo:
        ablations = {kind: head_ablation(run, kind, settings(progress(f"{kind}-ablating heads", n_items)))
                     for kind in ("zero", "mean")}
        zero, mean = (ablations[kind].to_dict() for kind in ("zero", "mean"))
        results["head_ablation"] = {"zero": zero, "mean": mean,  # type: ignore[typeddict-item]
                                    "baseline_logit_diff": float(run.logit_diff.mean()),
                                    "baseline_loss": float(run.loss.mean())}
    # The reference pairs and the pairs generated from the templates.
    total = patching_items(model, tt, max_pairs=config.patching_pairs)
    patching = None
    if total and "patching" in todo:
        patching = activation_patching(model, tt, settings(progress("activation patching", total)),
                                       max_pairs=config.patching_pairs)
        if patching.main is not None and not patching.main.n_pairs:
            log.warning("activation patching: no clean/corrupted pair has a gap of at least %g logits, so none "
                        "is normalised (the sections hold no values)", MIN_GAP)
        results.update(patching.to_dict())  # type: ignore[typeddict-item]
    has_pairs = total > 0
    if has_pairs and "atp" in todo and has(model, GRAD):
        adv = progress("attribution patching", 1)
        results["attribution_patching"] = attribution_patching(  # type: ignore[typeddict-item]
            model, tt, exact=patching, max_pairs=config.patching_pairs).to_dict()
        adv(1)
    cc = config.circuit
    if has_pairs and "path_patching" in todo and has(model, SWEEP):
        senders = top_senders(heads, ablations.get("zero"), cc.n_senders)
        adv = progress("path patching", path_items(model, tt, senders, cc.path_pairs))
        results["path_patching"] = path_patching(model, tt, senders, max_pairs=cc.path_pairs,  # type: ignore[typeddict-item]
                                                 progress=adv).to_dict()
    if "circuit" in todo:
        try:
            results["circuit"] = eap_ig_circuit(  # type: ignore[typeddict-item]
                model, tt, steps=cc.ig_steps, max_pairs=cc.pairs, n_random=cc.n_random, threshold=cc.threshold,
                progress=progress).to_dict()
        except LogitlabError as e:  # no pairs, or none the model tells apart: the rest of the battery stands
            log.warning("circuit discovery skipped: %s", e)
    results["unembed_bias"] = unembed_bias(model, tt).to_dict()  # type: ignore[typeddict-item]
    # Robustness needs two templates or more (and ablation for its ablation rankings).
    if "robustness" in todo and len({t for t in task.prompt_template if t >= 0}) >= 2:
        results["robustness"] = robustness(run, heads, ablations).to_dict()  # type: ignore[typeddict-item]
    check_finite(results)
    return results


def top_senders(heads: Any, zero: Any, n: int) -> list[tuple[int, int]]:
    """Path patching's senders: the heads with the largest |zero-ablation effect| and |direct logit attribution|,
    alternately (duplicates skipped), ``n`` in all; DLA alone without ablation."""
    lists = [[(l, h) for l, h, _ in heads.top(n)]]
    if zero is not None:
        delta = (zero.logit_diff - zero.baseline_logit_diff[None, None]).mean(-1)  # (layer, head)
        lists.insert(0, [divmod(int(i), delta.shape[1]) for i in delta.abs().flatten().argsort(descending=True)[:n]])
    out: list[tuple[int, int]] = []
    for i in range(n):  # the two top-n lists together hold at least n heads
        for x in lists:
            if i < len(x) and x[i] not in out and len(out) < n:
                out.append(x[i])
    return out


def _config_dict(config: RunConfig) -> dict[str, Any]:
    d = asdict(config)
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
    for key in ("logit_lens", "layer_attribution"):
        d = results[key]  # type: ignore[literal-required]
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
    for key in ("resid_patching", "attn_patching", "mlp_patching", "head_patching"):
        if key in results:
            t[key] = _patching_rows(results[key], key != "head_patching")  # type: ignore[literal-required]
    return t


def _ablation_rows(ab: Any) -> list[dict[str, Any]]:
    return [{"ablation": k, "layer": l, "head": h, "logit_diff": v, "loss": ab[k]["loss"][l][h],
                           "logit_diff_stderr": ab[k]["logit_diff_stderr"][l][h], "loss_stderr": ab[k]["loss_stderr"][l][h],
                           **{f"delta_{m}{suffix}": value for m in ("logit_diff", "loss")
                              for suffix, value in (("", ab[k][f"delta_{m}"][l][h]),  # type: ignore[literal-required]
                                                    ("_stderr", ab[k][f"delta_{m}_stderr"][l][h]),  # type: ignore[literal-required]
                                                    ("_ci_low", ab[k][f"delta_{m}_ci"][l][h][0]),  # type: ignore[literal-required]
                                                    ("_ci_high", ab[k][f"delta_{m}_ci"][l][h][1]))}}  # type: ignore[literal-required]
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
    import pandas as pd
    validate_results(results)
    try:
        (out / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LogitlabError(f"cannot create output folder {out}: {e}", "choose a writable --out folder") from e
    for name, rows in _tables(results).items():
        with atomic_write(out / "tables" / f"{name}.csv") as f:
            pd.DataFrame(rows).to_csv(f, index=False)
    with atomic_write(out / "config.json") as f:
        json.dump(results["config"], f, indent=2)
    path = out / "results.json"
    with atomic_write(path) as f:
        json.dump(results, f, indent=1, ensure_ascii=False, allow_nan=False)
    return path
