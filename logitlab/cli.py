"""Command line: ``logitlab run``, ``circuit``, ``predict``, ``report``, ``schema`` (and formation's ``train-toy``, ``formation``).

It only wires; the work is in the library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import math
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import logitlab.registry as registry
from logitlab._alloc import keep_freed_memory
from logitlab._console import quiet_libraries
from logitlab.battery import run_battery, write_results
from logitlab.config import RunConfig
from logitlab.errors import LogitlabError
from logitlab.task import load_task

if TYPE_CHECKING:
    from logitlab.results import Results

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The mechanistic-interpretability battery for contrastive next-token tasks.")
console = Console(stderr=True)
_state = {"debug": False}

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'builtin' (Gemma-3-270M, offline), a HF hub name "
                                       "such as gpt2, a local HF folder, or a .gguf file.")]
DeviceOpt = Annotated[str, typer.Option(help="torch device: auto (CUDA when available, else cpu), cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bfloat16 on a CUDA device that supports it, else float32), "
                                        "float32 or bfloat16.")]
FiguresOpt = Annotated[str, typer.Option("--figures", help="Also export every figure to figures/ as png, svg or "
                                         "png,svg (needs Chromium; off by default: the report's own toolbar "
                                         "exports single plots).")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task name (pronouns, pronouns-large) or a task YAML file.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite results already in --out.")]
ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="Also write report.html.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's own Python code (off by default).")]
_FORMATS = ("png", "svg")
_CONTEXT_TOKENS = 30_000  # corpus tokens read for the features' top contexts (feature_contexts.json)


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


def _dtype(dtype: str, device: str) -> str:
    """``--dtype`` resolved for the resolved device (``auto``: bfloat16 on CUDA with bf16, else float32)."""
    from logitlab.model.device import resolve_dtype
    return resolve_dtype(dtype, device)


def _load(model: str, device: str, dtype: str, trust_remote_code: bool = False):  # noqa: ANN202
    from logitlab.model.load import load_model
    console.print(f"device: {device}, dtype: {dtype}", highlight=False)
    quiet_libraries()
    with console.status(f"loading model {model!r}…"):
        return load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def _with_settings(command: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add the registered analyses' settings that are options of ``command`` (:func:`logitlab.registry.setting`
    with a flag) to a command taking them as ``**settings`` (keyed by option name, e.g. ``ig_steps``)."""
    def wrap(func: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(func, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(_option_name(f), inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                   annotation=Annotated[typing.get_type_hints(a.settings)[f.name],
                                                        typer.Option(f.metadata["flag"], help=f.metadata["help"])])
                 for a, f in registry.cli_settings(command) if a.settings is not None]

        @functools.wraps(func)
        def command_fn(**kwargs: Any) -> None:
            func(**kwargs)

        params = own + extra
        command_fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command_fn.__annotations__ = {p.name: p.annotation for p in params}
        return command_fn
    return wrap


def _option_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata["flag"]).lstrip("-").replace("-", "_")


def _settings(command: str, values: dict[str, Any]) -> dict[str, Any]:
    """RunConfig keyword arguments from a command's setting options (grouped settings as their dataclass)."""
    flat: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for analysis, f in registry.cli_settings(command):
        target = flat if analysis.group is None else groups.setdefault(analysis.group, {})
        target[f.name] = values[_option_name(f)]
    defaults = RunConfig()
    return {**flat, **{g: dataclasses.replace(getattr(defaults, g), **kw) for g, kw in groups.items()}}


def _analyses_help() -> str:
    always = ", ".join(a.name for a in registry.analyses() if a.always)
    off = [a.name for a in registry.analyses() if not a.always and not a.default]
    return (f"Comma-separated analyses to run besides the always-run ones ({always}): "
            f"{', '.join(registry.selectable())}; 'default' = all but {', '.join(off) or 'none'}, 'all' = all.")


#: The ``--analyses`` option of ``run``; its help (the choices) is refreshed from the registry in :func:`main`, so
#: an analysis registered after this module was imported is listed too.
_ANALYSES_OPT = typer.Option("--analyses", help=_analyses_help())


@app.command()
@_with_settings("run")
def run(
    model: ModelOpt = "builtin",
    task: TaskOpt = "pronouns",
    out: OutOpt = Path("logitlab-out"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    max_memory: Annotated[float | None, typer.Option(help="Memory budget for sweeps, in GiB (default: half of the free memory).")] = None,
    force: ForceOpt = False,
    report: ReportOpt = True,
    figures: FiguresOpt = "",
    analyses: Annotated[str, _ANALYSES_OPT] = "default",
    circuit: Annotated[bool, typer.Option("--circuit", help="Also discover the circuit (EAP-IG edge scores and the "
                                          "faithfulness curve); same as adding circuit to --analyses.")] = False,
    features: Annotated[bool, typer.Option("--features", help="Also build attribution graphs over transcoder "
                                           "features (needs --transcoders); same as adding features to "
                                           "--analyses.")] = False,
    trust_remote_code: TrustOpt = False,
    **settings: Any,
) -> None:
    """Run the whole battery and write results.json, tables/ and report.html to --out."""
    if max_memory is not None and not (math.isfinite(max_memory) and max_memory > 0):
        raise LogitlabError(f"--max-memory must be a positive number of GiB, got {max_memory}")
    device = _device(device)
    config = RunConfig(model=model, task=task, device=device, dtype=_dtype(dtype, device),
                       max_memory=None if max_memory is None else int(max_memory * 2**30),
                       analyses=_analyses(analyses, circuit, features), **_settings("run", settings))
    _run(config, out, force, report, figures, trust_remote_code)


def _analyses(text: str, circuit: bool, features: bool = False) -> tuple[str, ...]:
    """``--analyses`` (plus ``--circuit``, ``--features``) as RunConfig.analyses; unknown names are an error."""
    names, default = registry.selectable(), registry.default_selection()
    asked: list[str] = []
    for name in (a.strip().lower() for a in text.split(",") if a.strip()):
        asked += list(default if name == "default" else names if name == "all" else (name,))
    bad = [a for a in asked if a not in names]
    if bad:
        raise LogitlabError(f"unknown analysis {bad[0]!r}", f"choose from {', '.join(names)}, default or all")
    if circuit:
        asked.append("circuit")
    if features:
        asked.append("features")
    return tuple(a for a in names if a in asked)


def _run(config: RunConfig, out: Path, force: bool, report: bool, figures: str, trust_remote_code: bool) -> None:
    if (out / "results.json").exists() and not force:
        raise LogitlabError(f"{out} already holds results", "pass --force to overwrite, or choose another --out")
    formats = _formats(figures)
    task_ = load_task(config.task)
    _check_writable(out)
    # A static-figure exporter's browser (--figures) starts now, while the model loads, and waits for the report.
    with _exporter(report and bool(formats)) as exporter:
        m = _load(config.model, config.device, config.dtype, trust_remote_code)
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
@_with_settings("circuit")
def circuit(
    model: ModelOpt = "builtin",
    task: TaskOpt = "pronouns",
    out: OutOpt = Path("logitlab-circuit"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    force: ForceOpt = False,
    report: ReportOpt = True,
    figures: FiguresOpt = "",
    trust_remote_code: TrustOpt = False,
    **settings: Any,
) -> None:
    """From important heads to the circuit: ablation, exact patching, attribution patching, path patching from the
    top heads and EAP-IG circuit discovery with its faithfulness curve (results.json, report.html)."""
    device = _device(device)
    config = RunConfig(model=model, task=task, device=device, dtype=_dtype(dtype, device),
                       analyses=("ablation", "patching", "atp", "path_patching", "circuit"),
                       **_settings("circuit", settings))
    _run(config, out, force, report, figures, trust_remote_code)


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
    dtype: DtypeOpt = "auto",
) -> None:
    """Show a prompt's tokens, the top-k next tokens (logit, probability) and the answer's rank."""
    from logitlab.analyses.predict import predict as _predict
    if k < 1:
        raise LogitlabError("-k must be at least 1")
    device = _device(device)
    dtype = _dtype(dtype, device)
    RunConfig(model=model, device=device, dtype=dtype)  # validates device/dtype
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


@app.command("train-transcoders")
def train_transcoders(
    model: ModelOpt = "builtin",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: logitlab's cache).")] = None,
    features: Annotated[int, typer.Option("--features", help="Features per layer.")] = 1024,
    tokens: Annotated[int, typer.Option("--tokens", help="Training tokens (per pass).")] = 150_000,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training tokens.")] = 4,
    layers: Annotated[str | None, typer.Option("--layers", help="Only these layers, e.g. '0,1,5' (default: all).")] = None,
    context_tokens: Annotated[int, typer.Option("--context-tokens", help="Held-out tokens for the features' top "
                                                "contexts (feature_contexts.json); 0 = skip.")] = _CONTEXT_TOKENS,
    skip: Annotated[bool, typer.Option("--skip", help="Skip transcoders: a linear map x @ W_skip beside the "
                                       "features.")] = False,
    jacobian: Annotated[float, typer.Option("--jacobian", help="Weight of a term matching the transcoder's Jacobian "
                                            "to the MLP's on random directions (0 = off).")] = 0.0,
    device: DeviceOpt = "auto",
) -> None:
    """Train per-layer transcoders (MLP input -> output) offline, resumably; writes circuit-tracer's format."""
    from logitlab.features.train import TrainConfig, default_out, train_transcoders as _train
    cfg = TrainConfig(n_features=features, n_tokens=tokens, k=min(32, max(1, features // 8)), skip=skip,
                      jacobian=jacobian, epochs=epochs)
    wanted = None if layers is None else [int(x) for x in layers.split(",") if x.strip()]
    m = _load(model, _device(device), "float32")
    folder = out or default_out(m, cfg)
    _train(m, folder, cfg, wanted, context_tokens=context_tokens)
    console.print(f"[green]transcoders:[/green] {folder}")


@app.command("feature-contexts")
def feature_contexts(
    transcoders: Annotated[Path, typer.Option("--transcoders", help="Folder of per-layer transcoders "
                                              "(circuit-tracer or SAELens format); the file is written there.")],
    model: ModelOpt = "builtin",
    tokens: Annotated[int, typer.Option("--tokens", help="Corpus tokens to read.")] = _CONTEXT_TOKENS,
    device: DeviceOpt = "auto",
) -> None:
    """Write the features' top-activating contexts (feature_contexts.json) for an existing transcoder folder."""
    from logitlab.features.train import corpus_contexts
    if not transcoders.is_dir():
        raise LogitlabError(f"no folder {transcoders}", "pass the folder that holds the transcoders")
    path = corpus_contexts(_load(model, _device(device), "float32"), transcoders, tokens)
    console.print(f"[green]feature contexts:[/green] {path}")


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


def _register_graph() -> None:
    from logitlab.features.graph_cli import graph_cmd
    app.command("graph", help="Attribution graph of one prompt over transcoder features (graph.json, graph.html).")(graph_cmd)


_register_graph()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (callable in-process for tests)."""
    _ANALYSES_OPT.help = _analyses_help()
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
