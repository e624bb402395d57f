"""The whole battery: task → model → clean run → analyses → results (dict) → files.

The CLI and notebooks call :func:`run_battery`; every analysis is also callable on its own from
``logitlab.analyses``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from logitlab import __version__
from logitlab.analyses import (
    activation_patching, attention_patterns, clean_run, dla, head_ablation, head_attribution, layer_attribution,
    logit_diff, logit_lens, task_predictions, unembed_bias,
)
from logitlab.errors import LogitlabError
from logitlab.model.load import Model
from logitlab.sweep import SweepSettings, SweepStats
from logitlab.task import Task, tokenize_task

__all__ = ["RunConfig", "run_battery", "write_results", "check_finite"]

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
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
                stats: SweepStats | None = None) -> dict[str, Any]:
    """Run every analysis and return the results dict (schema: docs/results.md).

    ``stats``, if given, accumulates the sweeps' work (items, FLOPs, seconds) for benchmarks.
    """
    tt = tokenize_task(task, model.tokenizer)
    spec = model.spec
    settings = lambda adv: SweepSettings(max_memory=config.max_memory, progress=adv, stats=stats)  # noqa: E731
    adv = progress("clean run", 1)
    run = clean_run(model, tt)
    _check_activations(run.cache, spec.n_layers)
    adv(1)
    results: dict[str, Any] = {
        "schema_version": 1, "logitlab_version": __version__, "config": asdict(config), "model": model.to_dict(),
        "task": {**task.to_dict(), "prompt_tokens": [list(t) for t in tt.str_tokens]},
    }
    results["task"]["answers"] = [[model.tokenizer.decode([int(c)]), " / ".join(model.to_str_tokens(i))]
                                  for c, i in zip(tt.correct_ids, tt.incorrect_ids)]
    results["predictions"] = [p.to_dict() for p in task_predictions(run, config.n_predictions, k=config.top_k)]
    results["logit_diff"] = logit_diff(run).to_dict()
    results["dla"] = dla(run).to_dict()
    results["logit_lens"] = logit_lens(run).to_dict()
    results["layer_attribution"] = layer_attribution(run).to_dict()
    heads = head_attribution(run)
    hd = heads.to_dict()
    results["head_attribution"] = hd.pop("values")
    results["head_attribution_detail"] = hd
    results["attention"] = attention_patterns(run, heads, k=min(config.n_attention_heads, spec.n_layers * spec.n_heads),
                                              prompt_index=min(config.attention_prompt, tt.n_prompts - 1)).to_dict()
    n_items = spec.n_layers * spec.n_heads * tt.n_prompts
    ablation: dict[str, Any] = {}
    for kind in ("zero", "mean"):
        ablation[kind] = head_ablation(run, kind, settings(progress(f"{kind}-ablating heads", n_items))).to_dict()
    ablation["baseline_logit_diff"] = float(run.logit_diff.mean())
    ablation["baseline_loss"] = float(run.loss.mean())
    results["head_ablation"] = ablation
    if tt.clean_tokens is not None:
        n_pairs, T = tt.clean_tokens.shape
        total = spec.n_layers * n_pairs * (3 * T + spec.n_heads)
        results.update(activation_patching(model, tt, settings(progress("activation patching", total))).to_dict())
    results["unembed_bias"] = unembed_bias(model, tt).to_dict()
    check_finite(results)
    return results


@contextmanager
def _atomic(path: Path, mode: str = "w") -> Iterator[Any]:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tables(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Long-format tables (one row per value) for pandas."""
    t: dict[str, list[dict[str, Any]]] = {}
    task = results["task"]
    ld = results["logit_diff"]
    t["logit_diff"] = [{"prompt_index": i, "prompt": p, "correct": a[0], "incorrect": a[1], "logit_diff": v,
                        "prob_ratio": r, "loss": lo}
                       for i, (p, a, v, r, lo) in enumerate(zip(task["prompts"], task["answers"], ld["per_prompt"],
                                                                 ld["prob_ratio"], ld["loss_per_prompt"]))]
    for key in ("logit_lens", "layer_attribution"):
        d = results[key]
        t[key] = [{"label": lab, "logit_diff": v, "stderr": s} for lab, v, s in zip(d["labels"], d["values"], d["stderr"])]
    ha, se = results["head_attribution"], results["head_attribution_detail"]["stderr"]
    t["head_attribution"] = [{"layer": l, "head": h, "logit_diff": v, "stderr": se[l][h]}
                             for l, row in enumerate(ha) for h, v in enumerate(row)]
    ab = results["head_ablation"]
    t["head_ablation"] = [{"ablation": k, "layer": l, "head": h, "logit_diff": v, "loss": ab[k]["loss"][l][h],
                           "logit_diff_stderr": ab[k]["logit_diff_stderr"][l][h], "loss_stderr": ab[k]["loss_stderr"][l][h]}
                          for k in ("zero", "mean") for l, row in enumerate(ab[k]["logit_diff"]) for h, v in enumerate(row)]
    for key in ("resid_patching", "attn_patching", "mlp_patching"):
        if key in results:
            d = results[key]
            t[key] = [{"layer": l, "position": p, "token": d["tokens"][p], "value": v}
                      for l, row in enumerate(d["values"]) for p, v in enumerate(row)]
    if "head_patching" in results:
        t["head_patching"] = [{"layer": l, "head": h, "value": v}
                              for l, row in enumerate(results["head_patching"]["values"]) for h, v in enumerate(row)]
    return t


def write_results(results: dict[str, Any], out: Path) -> Path:
    """Write results.json, config.json and tables/*.csv atomically into ``out``."""
    import pandas as pd
    try:
        (out / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LogitlabError(f"cannot create output folder {out}: {e}", "choose a writable --out folder") from e
    for name, rows in _tables(results).items():
        with _atomic(out / "tables" / f"{name}.csv") as f:
            pd.DataFrame(rows).to_csv(f, index=False)
    with _atomic(out / "config.json") as f:
        json.dump(results["config"], f, indent=2)
    path = out / "results.json"
    with _atomic(path) as f:
        json.dump(results, f, indent=1, ensure_ascii=False, allow_nan=False)
    return path
