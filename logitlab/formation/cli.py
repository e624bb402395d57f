"""Command-line entry points ``logitlab train-toy`` and ``logitlab formation`` (plain functions; the main CLI
registers them as typer commands). They only wire options to the library and show progress.

Example:
    logitlab train-toy --out toy
    logitlab formation --checkpoints toy --out toy/formation
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from logitlab._console import quiet_libraries
from logitlab.errors import LogitlabError
from logitlab.formation.toy import HELDOUT_TASK, TOY_JSON, ToyConfig

__all__ = ["train_toy_cmd", "formation_cmd", "parse_steps"]

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def parse_steps(text: str) -> list[int]:
    """``"0,1000, 2000"`` → ``[0, 1000, 2000]``."""
    try:
        steps = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError as e:
        raise LogitlabError(f"cannot read --steps {text!r}", "give comma-separated integers, e.g. 0,1000,10000") from e
    if not steps or min(steps) < 0:
        raise LogitlabError(f"--steps {text!r} names no non-negative step", "e.g. --steps 0,1000,10000")
    return steps


def train_toy_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the checkpoints, task files and toy.json.")] = Path("toy-model"),
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = ToyConfig.steps,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same checkpoints).")] = 0,
    layers: Annotated[int, typer.Option("--layers", help="Transformer blocks.")] = ToyConfig.n_layers,
    d_model: Annotated[int, typer.Option("--d-model", help="Residual-stream width (a multiple of --heads).")] = ToyConfig.d_model,
    heads: Annotated[int, typer.Option("--heads", help="Attention heads per block.")] = ToyConfig.n_heads,
    force: Annotated[bool, typer.Option("--force", help="Replace a toy model already in --out.")] = False,
) -> None:
    """Train a small GPT-2 on synthetic pronoun text, saving log-spaced checkpoints and a held-out task."""
    from logitlab.formation.toy import train_toy
    if (out / TOY_JSON).exists() and not force:
        raise LogitlabError(f"{out} already holds a toy model", "pass --force to replace it, or choose another --out")
    config = ToyConfig(steps=steps, seed=seed, n_layers=layers, d_model=d_model, n_heads=heads)
    quiet_libraries()
    t0 = time.perf_counter()
    with _progress() as progress:
        tid = progress.add_task("training", total=steps)
        paths = train_toy(out, config, progress=lambda n: progress.advance(tid, n))
    console.print(f"[green]{len(paths)} checkpoints[/green] in {out} ({time.perf_counter() - t0:.0f} s); "
                  f"held-out task: {out / HELDOUT_TASK}", highlight=False)
    console.print(f"next: logitlab formation --checkpoints {out} --out {out / 'formation'}", highlight=False)


def _clear_summaries(out: Path) -> None:
    for f in (out / "checkpoints").glob("step*.json"):
        f.unlink()


def formation_cmd(
    checkpoints: Annotated[Path | None, typer.Option("--checkpoints", "-c", help="Folder with one model sub-folder per step (step123, checkpoint-123 or 123).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Instead: a hub model with step revisions (EleutherAI/pythia-*, stanford-crfm/*), from the hub or the local Hugging Face cache.")] = None,
    steps: Annotated[str | None, typer.Option(help="With --model: comma-separated steps, e.g. 0,1000,143000 (default: ~16 log-spaced published checkpoints).")] = None,
    revision_format: Annotated[str | None, typer.Option("--revision-format", help="With --model: how its revisions name steps, e.g. step{} (default: known for EleutherAI/pythia-*, stanford-crfm/*).")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task name or YAML file (default: heldout-task.yaml in --checkpoints if present, else pronouns).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (re-running resumes; finished checkpoints are kept).")] = Path("formation-out"),
    force: Annotated[bool, typer.Option("--force", help="Recompute checkpoints already summarised in --out.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", help="How many of the final checkpoint's top heads to follow.")] = 3,
    device: Annotated[str, typer.Option(help="torch device: auto (CUDA when available, else cpu), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Run the battery's summary on every checkpoint and write results.json and report.html to --out."""
    from logitlab.formation.formation import find_checkpoints, hub_checkpoints, run_formation
    from logitlab.formation.report import write_formation_report
    from logitlab.model.device import device_option
    from logitlab.task import load_task
    if (checkpoints is None) == (model is None):
        raise LogitlabError("give exactly one of --checkpoints DIR and --model NAME",
                            "train local checkpoints with `logitlab train-toy --out DIR`")
    device = device_option(device)  # resolved once: what every checkpoint's summary records
    if checkpoints is not None:
        if steps is not None or revision_format is not None:
            raise LogitlabError("--steps and --revision-format go with --model", "with --checkpoints every sub-folder is used")
        ckpts = [(s, str(p)) for s, p in find_checkpoints(checkpoints)]
        name = checkpoints.resolve().name
        default_task = checkpoints / HELDOUT_TASK
        task_spec = task if task is not None else (str(default_task) if default_task.is_file() else "pronouns")
    else:
        ckpts = hub_checkpoints(model, None if steps is None else parse_steps(steps), revision_format)
        name = model
        task_spec = task or "pronouns"
    task_ = load_task(task_spec)
    heldout = Path(task_spec).name == HELDOUT_TASK
    if force:
        _clear_summaries(out)
    quiet_libraries()
    console.print(f"task {task_.name!r} ({task_spec}), {len(ckpts)} checkpoints; device: {device}", highlight=False)
    t0 = time.perf_counter()
    with _progress() as progress:
        def step(desc: str, total: int) -> Callable[[int], None]:
            tid = progress.add_task(desc, total=total)
            return lambda n: progress.advance(tid, n)
        results = run_formation(ckpts, task_, out, top_k_heads=top_k, progress=step, model_name=name,
                                heldout=heldout, device=device)
    report = write_formation_report(out, results)
    first, last = results["checkpoints"][0], results["checkpoints"][-1]
    console.print(f"logit diff {first['logit_diff_mean']:+.2f} (step {first['step']}) → {last['logit_diff_mean']:+.2f} "
                  f"(step {last['step']}), accuracy {last['accuracy']:.0%}; {time.perf_counter() - t0:.0f} s",
                  highlight=False)
    for s in results["switch_on"]:
        console.print(f"  head {s['layer']}.{s['head']} switches on at step {s['step']}", highlight=False)
    console.print(f"[green]results:[/green] {out / 'results.json'}\n[green]report:[/green] {report}", highlight=False)
