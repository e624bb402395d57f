"""Circuit formation: the battery's summary numbers tracked across training checkpoints.

For every checkpoint (step, model) the task is run once and summarised: mean logit difference and accuracy,
layer attribution, per-head direct logit attribution, the zero-ablation effect of every head (mean logit
difference with the head's ``hook_z`` zeroed minus the baseline; the *top heads* are those of the **final**
checkpoint, so their story can be followed back in time), and a residual-stream patching summary.

Definitions written into ``results.json`` (``definitions``):

* **top heads**: the ``top_k_heads`` heads with the largest |mean attribution| at the final checkpoint.
* **switch-on step** of a top head with final attribution ``a_T``: the first checkpoint step ``s`` such that
  at ``s`` and every later checkpoint the head's attribution ``a`` satisfies ``a · sign(a_T) > |a_T| / 2``
  (it stays on the final side, above half the final magnitude). ``None`` if ``a_T == 0``.
* **resid patching summary**: per layer, the normalised patching value ``(patched − corrupted) / (clean −
  corrupted)`` of ``resid_pre`` at the subject position (first position where clean and corrupted tokens
  differ), at the final position, and the maximum over positions. Early checkpoints barely separate clean
  from corrupted prompts; when ``|clean − corrupted| < MIN_PATCH_GAP`` the ratio is noise, so the
  normalised values are ``None`` and only the raw logit differences are kept.

Resumable: each checkpoint's summary is written atomically to ``out/checkpoints/step{N}.json`` as soon as
it is done, keyed by the checkpoint, the task and the top heads; a re-run loads matching files instead of
recomputing, so an interrupted run loses nothing that had finished.

Checkpoints come from a local folder (:func:`find_checkpoints`) or from hub revisions
(:func:`hub_checkpoints`, e.g. Pythia's ``step{N}`` branches), given as ``"name@revision"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from logitlab._version import __version__
from logitlab._io import atomic_dir, atomic_write
from logitlab.analyses import activation_patching, clean_run, head_ablation, head_attribution, layer_attribution
from logitlab.analyses._common import mean_stderr
from logitlab.battery import check_finite
from logitlab.errors import LogitlabError
from logitlab.formation.schema import (
    SCHEMA_VERSION, FormationCheckpoint, FormationHead, FormationResults, ResidPatchingSummary, SwitchOn,
)
from logitlab.model.load import Model, cache_dir, hub_reachable, load_model
from logitlab.model.spec import SUPPORTED_MODEL_TYPES, read_spec
from logitlab.results import validate_results
from logitlab.sweep import SweepSettings
from logitlab.task import Task, TokenizedTask, tokenize_task

__all__ = ["run_formation", "find_checkpoints", "hub_checkpoints", "load_checkpoint", "checkpoint_summary",
           "switch_on_step", "MIN_PATCH_GAP", "DEFINITIONS"]

log = logging.getLogger(__name__)

MIN_PATCH_GAP = 0.1  # logits; below it the patching normalisation divides noise by noise
DEFINITIONS = {
    "logit_diff_mean": "mean over prompts of logit(correct) − mean logit(incorrect) at the final position",
    "accuracy": "share of prompts with logit difference > 0",
    "top_heads": "the top_k_heads heads with the largest |mean direct logit attribution| at the final checkpoint",
    "top_heads_ablation": "zero-ablation effect: mean logit difference with the head's hook_z zeroed at every "
                          "position, minus the unablated mean logit difference",
    "ablation_heads": "the top_k_heads heads with the largest |zero-ablation effect| at the final checkpoint "
                      "(they include heads that act through later layers, which direct attribution misses)",
    "ablation_switch_on": "switch_on applied to the zero-ablation effect of the ablation heads",
    "switch_on": "first checkpoint step from which on the head's attribution a stays on the side of its final "
                 "value a_T with a·sign(a_T) > |a_T|/2 at every later checkpoint",
    "resid_patching_summary": "resid_pre patching, clean into corrupted, normalised (patched − corrupted) / "
                              f"(clean − corrupted); null when |clean − corrupted| < {MIN_PATCH_GAP}",
}
_STEP_DIR = re.compile(r"^(?:step|checkpoint|ckpt|global_step|iter)?[-_]?(\d+)$", re.IGNORECASE)
Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n), as in battery


# ---------------------------------------------------------------------------------------------------------
# Checkpoint discovery and loading


def find_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Sub-folders named ``step123``, ``checkpoint-123`` or ``123`` of ``directory``, sorted by step."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LogitlabError(f"checkpoint folder {directory} does not exist",
                            "pass a folder with one model sub-folder per step (e.g. from `logitlab train-toy`)")
    found: dict[int, Path] = {}
    for sub in directory.iterdir():
        m = _STEP_DIR.match(sub.name)
        if not (m and sub.is_dir()):
            continue
        step = int(m.group(1))
        if step in found:
            raise LogitlabError(f"two checkpoint folders for step {step}: {found[step].name} and {sub.name}",
                                "keep one folder per step")
        found[step] = sub
    if not found:
        raise LogitlabError(f"no checkpoint sub-folders in {directory}",
                            "expected sub-folders named like step100, checkpoint-100 or 100")
    return sorted(found.items())


# How hub model families name their training-step revisions (branches).
_REVISION_FORMATS = (("eleutherai/pythia", "step{}"), ("stanford-crfm/", "checkpoint-{}"))


def _published_steps(name: str) -> list[int] | None:
    """The training steps TransformerLens knows a hub family was checkpointed at (its checkpoint_index /
    checkpoint_value schedule), or None for a family it has no schedule for."""
    try:
        from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels
        labels, _ = get_checkpoint_labels(name)
    except Exception:  # unknown family (ValueError), or a legacy repo whose listing needs the network
        return None
    return sorted(int(x) for x in labels)


def log_spaced(steps: Sequence[int], k: int = 16) -> list[int]:
    """About ``k`` of ``steps``, log-uniformly spaced, always including the first and the last."""
    steps = sorted(set(int(s) for s in steps))
    if len(steps) <= k:
        return steps
    lo, hi = max(1, steps[0]), steps[-1]
    targets = [lo * (hi / lo) ** (i / (k - 1)) for i in range(k)]
    picked = {steps[0], steps[-1]}
    for t in targets:
        picked.add(min(steps, key=lambda s: abs(math.log(max(s, 1)) - math.log(t))))
    return sorted(picked)


def hub_checkpoints(name: str, steps: Sequence[int] | None = None,
                    revision_format: str | None = None) -> list[tuple[int, str]]:
    """(step, ``"name@revision"``) pairs for a hub model whose revisions are training steps.

    Pythia (``EleutherAI/pythia-*``) names them ``step{N}``, stanford-crfm's GPT-2s ``checkpoint-{N}``; other
    models need ``revision_format`` (e.g. ``"step{}"``). Steps are checked against TransformerLens's published
    checkpoint schedule for the family; without ``steps``, about 16 log-spaced ones are taken from it.
    Loading needs the hub, and an architecture logitlab supports (GPT-2 and GPT-NeoX/Pythia are; others are
    reported before any weights are downloaded).
    """
    fmt = revision_format
    if fmt is None:
        fmt = next((f for prefix, f in _REVISION_FORMATS if name.lower().startswith(prefix)), None)
    if fmt is None or "{}" not in fmt:
        raise LogitlabError(f"do not know how {name!r} names its checkpoint revisions",
                            "known: EleutherAI/pythia-* (step{N}), stanford-crfm/* (checkpoint-{N}); "
                            "pass a revision format such as 'step{}'")
    published = _published_steps(name)
    if steps is None:
        if published is None:
            raise LogitlabError(f"no known checkpoint schedule for {name!r}", "pass steps, e.g. --steps 0,1000,10000")
        steps = log_spaced(published)
    if not steps:
        raise LogitlabError("no steps given", "pass steps, e.g. --steps 0,1000,10000")
    if published is not None:
        missing = sorted(set(int(s) for s in steps) - set(published))
        if missing:
            raise LogitlabError(f"{name!r} has no checkpoint at step(s) {missing[:10]}",
                                f"its {len(published)} checkpoints run from step {published[0]} to {published[-1]}, "
                                f"e.g. {published[:6]} …")
    return [(int(s), f"{name}@{fmt.format(int(s))}") for s in sorted(set(steps))]


def _fetch_revision(name: str, revision: str) -> Path:
    """Download one hub revision through transformers and keep it as a local folder logitlab can load."""
    folder = cache_dir() / "revisions" / f"{name.replace('/', '--')}@{revision}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    hint = ("hub revisions need network access (or the revision already in the HF cache); "
            "offline, train a local toy with `logitlab train-toy --out DIR` and pass --checkpoints DIR")
    try:
        config = AutoConfig.from_pretrained(name, revision=revision, local_files_only=True)
    except Exception:  # not in the local HF cache: the hub, if it answers (else fail now, not after retries)
        config = None
    cached = config is not None
    if config is None and not hub_reachable():
        raise LogitlabError(f"cannot load revision {revision!r} of {name!r}: it is not in the local Hugging Face "
                            "cache and the hub cannot be reached", hint)
    try:
        config = config or AutoConfig.from_pretrained(name, revision=revision)
    except Exception as e:  # network, unknown repo or revision: many exception types
        raise LogitlabError(f"cannot load revision {revision!r} of {name!r} from the Hugging Face hub: "
                            f"{type(e).__name__}: {str(e)[:300]}", hint) from e
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        read_spec(config)  # the clear unsupported-architecture error, before downloading any weights

    def load(local_files_only: bool) -> tuple[Any, Any]:
        return (AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=local_files_only),
                AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=torch.float32,
                                                     use_safetensors=None, local_files_only=local_files_only))

    try:
        # A cached revision is read from the cache alone: otherwise, with the hub unreachable but HF_HUB_OFFLINE
        # unset, the hub client retries every optional tokenizer file for minutes before using the cache.
        try:
            tok, hf = load(local_files_only=cached)
        except Exception:
            if not (cached and hub_reachable()):
                raise
            tok, hf = load(local_files_only=False)  # only part of the revision was cached: fetch the rest
    except Exception as e:
        raise LogitlabError(f"cannot load the weights of revision {revision!r} of {name!r}: {type(e).__name__}: "
                            f"{str(e)[:300]}", hint) from e

    def write(tmp: Path) -> None:
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return atomic_dir(folder, write)


def load_checkpoint(spec: str, device: str = "cpu", dtype: str = "float32") -> Model:
    """Load a checkpoint: a local model folder, or ``"name@revision"`` from the hub.

    The processed-weights cache is bypassed: each checkpoint is read once per run (finished ones are
    resumed from their summaries), so caching would only fill the user cache with copies of every step.
    """
    if not Path(spec).exists() and "@" in spec:
        name, revision = spec.rsplit("@", 1)
        spec = str(_fetch_revision(name, revision))
    return load_model(spec, device=device, dtype=dtype, cache=False)


# ---------------------------------------------------------------------------------------------------------
# One checkpoint


def _resid_summary(model: Model, tt: TokenizedTask, settings: SweepSettings) -> ResidPatchingSummary | None:
    """Per-layer resid_pre patching at the subject and final positions, and the max over positions."""
    if tt.clean_tokens is None:
        return None
    diff = (tt.clean_tokens != tt.corrupted_tokens).any(0).nonzero()
    subject = int(diff[0]) if len(diff) else 0
    try:  # the reference pairs only: one summary per checkpoint, normalised by the mean gap as before
        p = activation_patching(model, tt, settings, generated=False).reference
    except LogitlabError as e:
        log.info("patching skipped: %s", e)
        return {"subject_position": subject, "clean_logit_diff": None, "corrupted_logit_diff": None,
                "normalised": False, "max_per_layer": None, "subject": None, "final": None}
    assert p is not None
    clean_ld, corr_ld = float(p.clean.mean()), float(p.corrupted.mean())
    out: dict[str, Any] = {"tokens": list(p.tokens), "subject_position": subject,
                           "clean_logit_diff": clean_ld, "corrupted_logit_diff": corr_ld}
    if abs(clean_ld - corr_ld) < MIN_PATCH_GAP:  # clean and corrupted indistinguishable (e.g. at initialisation)
        return {**out, "normalised": False, "max_per_layer": None, "subject": None, "final": None}
    v = (p.resid.mean(-1) - corr_ld) / (clean_ld - corr_ld)  # (layer, pos)
    return {**out, "normalised": True, "max_per_layer": v.max(-1).values.tolist(), "subject": v[:, subject].tolist(),
            "final": v[:, -1].tolist()}


def checkpoint_summary(model: Model, task: Task, top_heads: Sequence[tuple[int, int]] | int,
                       settings: SweepSettings | None = None) -> dict[str, Any]:
    """The battery summary of one model on ``task``: a :class:`~logitlab.formation.schema.FormationCheckpoint`
    without its ``step`` and ``checkpoint``.

    Args:
        top_heads: (layer, head) pairs whose ablation effect to report, or k: this model's own top-k heads.
    """
    settings = settings or SweepSettings()
    tt = tokenize_task(task, model.tokenizer)
    with torch.no_grad():
        run = clean_run(model, tt)
        heads = head_attribution(run)
        ablation = head_ablation(run, "zero", settings)
    base = float(run.logit_diff.mean())
    effect = ablation.logit_diff.mean(-1) - base  # (layer, head)
    attribution = heads.mean  # (layer, head)
    if isinstance(top_heads, int):
        top_heads = [(l, h) for l, h, _ in heads.top(top_heads)]
    layers = layer_attribution(run).to_dict()
    summary = {
        "logit_diff_mean": base,
        "logit_diff_stderr": float(mean_stderr(run.logit_diff)[1]),
        "accuracy": float((run.logit_diff > 0).float().mean()),
        "loss_mean": float(run.loss.mean()),
        "logit_diff_per_prompt": run.logit_diff.tolist(),
        "layer_attribution": {"labels": layers["labels"], "values": layers["values"]},
        "head_attribution": attribution.tolist(),
        "zero_ablation_effect": effect.tolist(),
        "top_heads_ablation": [{"layer": l, "head": h, "attribution": float(attribution[l, h]),
                                "effect": float(effect[l, h])} for l, h in top_heads],
        "resid_patching_summary": _resid_summary(model, tt, settings),
    }
    return summary


# ---------------------------------------------------------------------------------------------------------
# Across checkpoints


def switch_on_step(steps: Sequence[int], values: Sequence[float]) -> int | None:
    """First step from which on ``values`` stay on the final value's side above half its magnitude."""
    if not values or values[-1] == 0:
        return None
    final = values[-1]
    sign = 1.0 if final > 0 else -1.0
    on = None
    for step, v in zip(steps, values):
        if v * sign > abs(final) / 2:
            on = step if on is None else on
        else:
            on = None  # fell back below: the switch-on must hold to the end
    return on


def _atomic_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (:func:`logitlab._io.atomic_write`)."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, allow_nan=False)


def _fingerprint(spec: str) -> dict[str, Any]:
    """What identifies a checkpoint's weights: size and mtime of its files (a retrained folder differs)."""
    path = Path(spec)
    if not path.is_dir():
        return {"spec": spec}
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".gguf"})
    return {"spec": str(path.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _task_hash(task: Task) -> str:
    blob = json.dumps({**task.to_dict(), "prepend_bos": task.prepend_bos}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SMALL_WEIGHTS = 64 * 2**20  # bytes; below this, one torch thread is faster than several


def _threads_for(spec: str) -> int | None:
    """1 for a small local model, else None (torch's default).

    A toy model's matrices are too small for intra-op threads to pay off, and on a busy machine their
    spin-waiting made the toy's formation run 25x slower with two threads than with one.
    """
    path = Path(spec)
    weights = list(path.glob("*.safetensors")) if path.is_dir() else []
    return 1 if weights and sum(w.stat().st_size for w in weights) < _SMALL_WEIGHTS else None


def _no_progress(_: str, __: int) -> Callable[[int], None]:
    return lambda _n: None


def run_formation(checkpoints: Sequence[tuple[int, str]], task: Task, out: Path, top_k_heads: int = 3,
                  progress: Progress | None = None, model_name: str | None = None, heldout: bool = False,
                  device: str = "cpu", dtype: str = "float32", max_memory: int | None = None) -> FormationResults:
    """Summarise every checkpoint, resumably, and write ``out/results.json``.

    Args:
        checkpoints: (step, model) pairs; model is a local folder or ``"name@revision"``.
        task: The task evaluated at every checkpoint.
        out: Output folder; per-checkpoint summaries go to ``out/checkpoints/step{N}.json``.
        top_k_heads: How many of the final checkpoint's top heads to follow.
        progress: ``(description, total) -> advance(n)``, as for :func:`logitlab.battery.run_battery`.
        model_name: Name recorded in the results (default: the final checkpoint's folder's parent).
        heldout: Whether ``task`` is a held-out split (the report then speaks of generalisation).
    Returns:
        The results (also written to ``out/results.json``), validated against
        :class:`~logitlab.formation.schema.FormationResults`.
    """
    if not checkpoints:
        raise LogitlabError("no checkpoints to analyse")
    if top_k_heads < 1:
        raise LogitlabError("top_k_heads must be at least 1")
    ckpts = sorted((int(s), str(p)) for s, p in checkpoints)
    if len({s for s, _ in ckpts}) != len(ckpts):
        raise LogitlabError("two checkpoints share a step", "give one model per step")
    progress = progress or _no_progress
    settings = SweepSettings(max_memory=max_memory)
    sub = out / "checkpoints"
    try:
        sub.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LogitlabError(f"cannot create output folder {out}: {e}", "choose a writable --out folder") from e
    task_hash = _task_hash(task)
    final_step, final_spec = ckpts[-1]
    t0 = time.perf_counter()

    def key(spec: str) -> dict[str, Any]:
        return {"checkpoint": _fingerprint(spec), "task": task_hash, "dtype": dtype, "top_k_heads": top_k_heads}

    def cached(step: int, spec: str, top: list[list[int]] | None) -> dict[str, Any] | None:
        """The stored summary if it is for this checkpoint, task and (unless None) set of top heads."""
        try:
            data = json.loads((sub / f"step{step}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("key") != key(spec) or (top is not None and data.get("top_heads") != top):
            log.info("step %d: stored summary is for another checkpoint, task or head set; recomputing", step)
            return None
        return data

    def compute(step: int, spec: str, top: list[list[int]] | int) -> dict[str, Any]:
        log.info("step %d: loading %s", step, spec)
        threads, want = torch.get_num_threads(), _threads_for(spec)
        try:
            if want is not None:
                torch.set_num_threads(want)
            model = load_checkpoint(spec, device=device, dtype=dtype)
            if want is None and (want := _threads_for(model.source)) is not None:  # a hub revision, sized once fetched
                torch.set_num_threads(want)
            summary = checkpoint_summary(model, task, top if isinstance(top, int) else [tuple(x) for x in top],
                                         settings)
        finally:
            torch.set_num_threads(threads)
        used = [[d["layer"], d["head"]] for d in summary["top_heads_ablation"]]
        data = {"step": step, "checkpoint": spec, **summary, "top_heads": used, "model": model.to_dict(),
                "key": key(spec)}
        check_finite(data, f"checkpoint step {step}")
        _atomic_json(sub / f"step{step}.json", data)
        del model
        return data

    advance = progress("checkpoints", len(ckpts))
    # The final checkpoint first: its top heads are the ones followed back through training.
    final = cached(final_step, final_spec, None) or compute(final_step, final_spec, top_k_heads)
    advance(1)
    top = final["top_heads"]
    summaries = {final_step: final}
    for step, spec in ckpts[:-1]:
        summaries[step] = cached(step, spec, top) or compute(step, spec, top)
        advance(1)
    rows = [summaries[s] for s, _ in ckpts]
    steps = [r["step"] for r in rows]
    switch_on: list[SwitchOn] = []
    top_heads: list[FormationHead] = []
    for l, h in top:
        series = [r["head_attribution"][l][h] for r in rows]
        top_heads.append({"layer": l, "head": h, "final_attribution": series[-1],
                          "final_ablation_effect": final["zero_ablation_effect"][l][h]})
        switch_on.append({"layer": l, "head": h, "step": switch_on_step(steps, series)})
    # Direct attribution misses heads that act through later layers (e.g. a head that moves the subject's
    # gender to the final position for an MLP to read), so the heads that matter most by ablation are followed too.
    effect = torch.tensor(final["zero_ablation_effect"])  # (layer, head)
    H = effect.shape[1]
    ablation_heads: list[FormationHead] = []
    ablation_switch_on: list[SwitchOn] = []
    for i in effect.abs().flatten().argsort(descending=True)[:top_k_heads].tolist():
        l, h = i // H, i % H
        series = [r["zero_ablation_effect"][l][h] for r in rows]
        ablation_heads.append({"layer": l, "head": h, "final_ablation_effect": series[-1],
                               "final_attribution": final["head_attribution"][l][h]})
        ablation_switch_on.append({"layer": l, "head": h, "step": switch_on_step(steps, series)})
    checkpoint_rows: list[FormationCheckpoint] = [
        {k: v for k, v in r.items() if k not in ("key", "model", "top_heads")}  # type: ignore[misc]
        for r in rows]
    results: FormationResults = {
        "kind": "formation", "schema_version": SCHEMA_VERSION, "logitlab_version": __version__,
        "model": {**final["model"], "name": model_name or final["model"]["name"]},
        "task": {**task.to_dict(), "description": task.description}, "heldout": heldout,
        "top_k_heads": top_k_heads, "definitions": DEFINITIONS,
        "checkpoints": checkpoint_rows,
        "top_heads": top_heads, "switch_on": switch_on,
        "ablation_heads": ablation_heads, "ablation_switch_on": ablation_switch_on,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    validate_results(results, FormationResults)
    _atomic_json(out / "results.json", results)
    return results
