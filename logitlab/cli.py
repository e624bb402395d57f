"""Command line: ``logitlab run``, ``circuit``, ``predict``, ``report``, ``schema`` (and formation's ``train-toy``, ``formation``).

It only wires; the work is in the library.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from logitlab._alloc import keep_freed_memory
from logitlab._console import quiet_libraries
from logitlab.errors import LogitlabError

if TYPE_CHECKING:
    from logitlab.results import Results

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The mechanistic-interpretability battery for contrastive next-token tasks.")
console = Console(stderr=True)
_state = {"debug": False}

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'builtin' (Gemma-3-270M, offline), a HF hub name "
                                       "such as gpt2, a local HF folder, or a .gguf file.")]
DeviceOpt = Annotated[str, typer.Option(help="torch device: auto (CUDA when available, else cpu), cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="float32 (default) or bfloat16.")]
FiguresOpt = Annotated[str, typer.Option("--figures", help="Also export every figure to figures/ as png, svg or "
                                         "png,svg (needs Chromium; off by default: the report's own toolbar "
                                         "exports single plots).")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task name (pronouns, pronouns-large) or a task YAML file.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite results already in --out.")]
ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="Also write report.html.")]
PatchingPairsOpt = Annotated[int, typer.Option("--patching-pairs", help="Patching pairs generated per template (each "
                                               "costs as much as the task's own pair; 0: the task's explicit pairs only).")]
IgStepsOpt = Annotated[int, typer.Option("--ig-steps", help="Integrated-gradient steps of the circuit's edge scores.")]
CircuitPairsOpt = Annotated[int, typer.Option("--circuit-pairs", help="Clean/corrupted pairs for circuit discovery.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's own Python code (off by default).")]
_FORMATS = ("png", "svg")


def _formats(figures: str) -> tuple[str, ...]:
    """``--figures`` as a tuple of formats (empty: no static export); unknown formats are an error."""
    asked = tuple(f.strip().lower() for f in figures.split(",") if f.strip())
    bad = [f for f in asked if f not in _FORMATS]
    if bad:
        raise LogitlabError(f"unknown --figures format {bad[0]!r}", "use png, svg or png,svg")
    return tuple(dict.fromkeys(asked))


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False) -> None:
    _state["debug"] = debug
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _device(device: str) -> str:
    """``--device`` resolved once (``auto``: CUDA when available, else cpu): what the run's config records."""
    from logitlab.model.device import device_option
    return device_option(device)


def _load(model: str, device: str, dtype: str, trust_remote_code: bool = False):  # noqa: ANN202
    from logitlab.model.load import load_model
    console.print(f"device: {device}", highlight=False)
    quiet_libraries()
    with console.status(f"loading model {model!r}…"):
        return load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


@app.command()
def run(
    model: ModelOpt = "builtin",
    task: TaskOpt = "pronouns",
    out: OutOpt = Path("logitlab-out"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    top_k: Annotated[int, typer.Option(help="Top-k predictions to show per example prompt.")] = 10,
    max_memory: Annotated[float | None, typer.Option(help="Memory budget for sweeps, in GiB (default: half of the free memory).")] = None,
    force: ForceOpt = False,
    report: ReportOpt = True,
    figures: FiguresOpt = "",
    patching_pairs: PatchingPairsOpt = 12,
    analyses: Annotated[str, typer.Option("--analyses", help="Comma-separated analyses to run besides the always-run "
                                          "ones (logit difference, DLA, logit lens, attributions, unembedding bias): "
                                          "attention, ablation, patching, atp, path_patching, robustness, circuit; "
                                          "'default' = all but circuit, 'all' = all.")] = "default",
    circuit: Annotated[bool, typer.Option("--circuit", help="Also discover the circuit (EAP-IG edge scores and the "
                                          "faithfulness curve); same as adding circuit to --analyses.")] = False,
    ig_steps: IgStepsOpt = 5,
    circuit_pairs: CircuitPairsOpt = 16,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Run the whole battery and write results.json, tables/ and report.html to --out."""
    _run(model, task, out, device, dtype, top_k, max_memory, force, report, figures, patching_pairs,
         _analyses(analyses, circuit), ig_steps, circuit_pairs, trust_remote_code)


def _analyses(text: str, circuit: bool) -> tuple[str, ...]:
    """``--analyses`` (plus ``--circuit``) as RunConfig.analyses; unknown names are an error."""
    from logitlab.battery import ANALYSES, DEFAULT_ANALYSES
    asked: list[str] = []
    for name in (a.strip().lower() for a in text.split(",") if a.strip()):
        asked += list(DEFAULT_ANALYSES if name == "default" else ANALYSES if name == "all" else (name,))
    bad = [a for a in asked if a not in ANALYSES]
    if bad:
        raise LogitlabError(f"unknown analysis {bad[0]!r}", f"choose from {', '.join(ANALYSES)}, default or all")
    if circuit:
        asked.append("circuit")
    return tuple(a for a in ANALYSES if a in asked)


def _run(model: str, task: str, out: Path, device: str, dtype: str, top_k: int, max_memory: float | None,
         force: bool, report: bool, figures: str, patching_pairs: int, analyses: tuple[str, ...], ig_steps: int,
         circuit_pairs: int, trust_remote_code: bool) -> None:
    from logitlab.battery import CircuitConfig, RunConfig, run_battery, write_results
    from logitlab.task import load_task
    if (out / "results.json").exists() and not force:
        raise LogitlabError(f"{out} already holds results", "pass --force to overwrite, or choose another --out")
    if max_memory is not None and not (math.isfinite(max_memory) and max_memory > 0):
        raise LogitlabError(f"--max-memory must be a positive number of GiB, got {max_memory}")
    device = _device(device)
    config = RunConfig(model=model, task=task, device=device, dtype=dtype, top_k=top_k,  # type: ignore[arg-type]
                       max_memory=None if max_memory is None else int(max_memory * 2**30),
                       patching_pairs=patching_pairs, analyses=analyses,
                       circuit=CircuitConfig(pairs=circuit_pairs, ig_steps=ig_steps))
    formats = _formats(figures)
    task_ = load_task(task)
    _check_writable(out)
    # A static-figure exporter's browser (--figures) starts now, while the model loads, and waits for the report.
    with _exporter(report and bool(formats)) as exporter:
        m = _load(model, device, dtype, trust_remote_code)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            def step(desc: str, total: int) -> Callable[[int], None]:
                tid = progress.add_task(desc, total=total)
                return lambda n: progress.advance(tid, n)
            results = run_battery(m, task_, config, step)
        path = write_results(results, out)
        console.print(f"[green]results:[/green] {path}")
        if report:
            _write_report(out, results, exporter, formats)
    ld = results["logit_diff"]
    console.print(f"mean logit diff {ld['mean']:.3f} ± {ld['stderr']:.3f}, accuracy {ld['accuracy']:.0%}, "
                  f"DLA relative error {results['dla']['relative_error']:.1e}")
    try:
        from logitlab.report import key_findings
    except ImportError:
        return
    console.print("[bold]key findings[/bold]")
    for f in key_findings(results):
        console.print(f" • {f.text}", highlight=False, markup=False)


@app.command()
def circuit(
    model: ModelOpt = "builtin",
    task: TaskOpt = "pronouns",
    out: OutOpt = Path("logitlab-circuit"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    ig_steps: IgStepsOpt = 5,
    circuit_pairs: CircuitPairsOpt = 16,
    patching_pairs: PatchingPairsOpt = 12,
    force: ForceOpt = False,
    report: ReportOpt = True,
    figures: FiguresOpt = "",
    trust_remote_code: TrustOpt = False,
) -> None:
    """From important heads to the circuit: ablation, exact patching, attribution patching, path patching from the
    top heads and EAP-IG circuit discovery with its faithfulness curve (results.json, report.html)."""
    _run(model, task, out, device, dtype, 10, None, force, report, figures, patching_pairs,
         ("ablation", "patching", "atp", "path_patching", "circuit"), ig_steps, circuit_pairs, trust_remote_code)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".logitlab-write-test"
        probe.write_text("")
        probe.unlink()
    except (OSError, ValueError) as e:
        raise LogitlabError(f"output folder {out} is not writable: {getattr(e, 'strerror', None) or e}",
                            "choose another --out") from e


def _exporter(static: bool) -> contextlib.AbstractContextManager:
    """A static-figure exporter started in the background, or nothing if no static figures are written."""
    if not static:
        return contextlib.nullcontext()
    try:
        from logitlab.report import StaticExporter
    except ImportError:
        return contextlib.nullcontext()
    return StaticExporter.start()


def _write_report(out: Path, results: Results | None, exporter: object = None, formats: tuple[str, ...] = ()) -> None:
    try:
        from logitlab.report import write_report
    except ImportError:
        console.print("[yellow]report module not available; skipped report.html[/yellow]")
        return
    with console.status("writing report…"):
        path = write_report(out, results, static=bool(formats), exporter=exporter, formats=formats or _FORMATS)
    console.print(f"[green]report:[/green] {path}")


@app.command()
def predict(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    answer: Annotated[str | None, typer.Option("--answer", "-a", help="An answer whose rank to show (one token, e.g. ' she').")] = None,
    model: ModelOpt = "builtin",
    k: Annotated[int, typer.Option("-k", help="How many top tokens.")] = 10,
    no_bos: Annotated[bool, typer.Option("--no-bos", help="Do not prepend the BOS token.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
) -> None:
    """Show a prompt's tokens, the top-k next tokens (logit, probability) and the answer's rank."""
    from logitlab.analyses.predict import predict as _predict
    from logitlab.battery import RunConfig
    if k < 1:
        raise LogitlabError("-k must be at least 1")
    device = _device(device)
    RunConfig(model=model, device=device, dtype=dtype)  # type: ignore[arg-type]  # validates device/dtype
    m = _load(model, device, dtype)
    p = _predict(m, prompt, answer, k=k, prepend_bos=not no_bos)
    out = Console()
    out.print("tokens: " + " ".join(f"[bold]{t!r}[/bold]" for t in p.tokens), markup=True, highlight=False)
    table = Table("rank", "token", "logit", "prob")
    for i, (tok, logit, prob) in enumerate(p.top):
        table.add_row(str(i), repr(tok), f"{logit:.3f}", f"{prob:.2%}")
    out.print(table)
    if answer is not None:
        out.print(f"answer {answer!r}: rank {p.answer_rank}, logit {p.answer_logit:.3f}, prob {p.answer_prob:.2%}",
                  highlight=False)


@app.command()
def report(out: Annotated[Path, typer.Argument(help="A folder holding results.json.")],
           figures: FiguresOpt = "") -> None:
    """Rebuild report.html (and, with --figures, figures/) from results.json without rerunning the model."""
    formats = _formats(figures)
    if not (out / "results.json").is_file():
        raise LogitlabError(f"no results.json in {out}", "run `logitlab run --out DIR` first")
    _write_report(out, None, formats=formats)


@app.command()
def schema(
    formation: Annotated[bool, typer.Option("--formation", help="The schema of a formation run's results.json.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="The key table of docs/results.md instead.")] = False,
) -> None:
    """Print the JSON Schema of results.json (indent 2) to stdout."""
    from logitlab.results import Results, results_schema, results_table
    kind: type = Results
    if formation:
        from logitlab.formation.schema import FormationResults
        kind = FormationResults
    text = results_table(kind) if markdown else json.dumps(results_schema(kind), indent=2, ensure_ascii=False) + "\n"
    typer.echo(text, nl=False)


def _register_formation() -> None:
    from logitlab.formation.cli import formation_cmd, train_toy_cmd
    app.command("train-toy", help="Train a small GPT-2 on a synthetic pronoun corpus, saving log-spaced checkpoints.")(train_toy_cmd)
    app.command("formation", help="Run the battery's summary over training checkpoints (resumable) and report.")(formation_cmd)


_register_formation()


def _register_grid() -> None:
    from logitlab.grid.cli import compare_cmd, grid_cmd
    app.command("grid", help="Run a grid of models × tasks (× checkpoints) as independent, resumable jobs, optionally on Ray.")(grid_cmd)
    app.command("compare", help="Compare runs side by side (run, formation or grid folders) in compare.html.")(compare_cmd)


_register_grid()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (callable in-process for tests)."""
    try:
        app(args=argv, standalone_mode=False)
    except LogitlabError as e:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    except typer.Exit as e:
        return int(e.exit_code)
    except typer.Abort:
        return 1
    except TyperException as e:  # usage errors: unknown option, bad value, missing argument
        e.show()
        return int(getattr(e, "exit_code", 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
