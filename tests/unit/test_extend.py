"""Adding an analysis end to end, from a test: one analysis registry entry, its results type and its report
section (with a figure, a finding rule and a compare part) make it appear in ``logitlab run --help``, the
results schema (``logitlab schema``), results.json, report.html and compare.html, without touching a library
file. The worked example of docs/extending.md is this toy analysis."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
from typing_extensions import TypedDict

import logitlab.registry as registry
import logitlab.report.registry as report_registry
from logitlab.cli import main
from logitlab.report import Finding, Section
from logitlab.report.markup import esc, figure_html, note
from logitlab.report.registry import ComparePart, FigureSpec, Rule, Run
from logitlab.results import load_results, results_schema
from logitlab.results._base import section
from tests.tiny import make_model_folder

# ---- 1. the results type ---------------------------------------------------------------------------------------


@section
class ToyAbsDiff(TypedDict):
    """The toy analysis: how far each prompt's logit difference is from 0."""

    mean: float
    """mean over prompts of |logit difference|"""
    per_prompt: list[float]
    """[n_prompts] |logit difference|"""


# ---- 2. the analysis: run context -> its results section -------------------------------------------------------


def toy_abs_diff(ctx: Any) -> dict[str, Any]:
    values = ctx.run.logit_diff.abs().double()
    return {"toy_abs_diff": {"mean": float(values.mean()), "per_prompt": values.tolist()}}


# ---- 3. the report section: a figure, a finding rule, its HTML, its part of compare.html ------------------------


def toy_figure(results: Mapping[str, Any]) -> go.Figure:
    values = results["toy_abs_diff"]["per_prompt"]
    return go.Figure(go.Bar(x=list(range(len(values))), y=values), layout={"title": {"text": "Toy |logit diff|"}})


def toy_finding(results: Mapping[str, Any]) -> Finding | None:
    toy = results.get("toy_abs_diff")
    if toy is None:
        return None
    return Finding(f"The toy analysis: the mean |logit difference| is {toy['mean']:.3f}.", "toy_abs_diff")


def toy_render(results: Mapping[str, Any], figures: Mapping[str, go.Figure], findings: Sequence[Finding]) -> str:
    toy = results.get("toy_abs_diff")
    if toy is None:
        return note("The toy analysis wrote nothing.")
    return note(f"Toy mean |logit difference|: {esc(format(toy['mean'], '.3f'))}.") + figure_html(figures,
                                                                                                  "toy_abs_diff")


def toy_compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    shown = [r for r in runs if "toy_abs_diff" in r.results]
    return {f"t{i}_toy_abs_diff": go.Figure(go.Bar(x=[r.label for r in shown],
                                                   y=[r.results["toy_abs_diff"]["mean"] for r in shown]))}


def toy_compare_render(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return "<h3>Toy |logit difference|</h3>" + figure_html(figures, f"t{i}_toy_abs_diff")


def toy_compare_finding(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    means = {r.label: r.results["toy_abs_diff"]["mean"] for r in runs if "toy_abs_diff" in r.results}
    if len(means) < 2:
        return None
    top = max(means, key=lambda label: means[label])
    return Finding(f"On {task} the largest toy mean |logit difference| is {top}'s.", f"t{i}_toy_abs_diff")


# ---- 4. the registry declarations --------------------------------------------------------------------------------


@pytest.fixture
def toy() -> Iterator[registry.Analysis]:
    """The toy analysis and its section, registered for one test and removed after it."""
    analysis = registry.register(registry.Analysis(
        "toy", {"toy_abs_diff": ToyAbsDiff}, toy_abs_diff, default=False, summary="a toy |logit difference|"))
    report_registry.register(Section(
        name="toy", title="Toy analysis", render=toy_render, analysis="toy", keys=("toy_abs_diff",),
        figures=(FigureSpec("toy_abs_diff", "toy_abs_diff", toy_figure),), rules=(Rule(15, toy_finding),),
        compare=ComparePart(toy_compare_render, toy_compare_figures, rules=(Rule(15, toy_compare_finding),))))
    try:
        yield analysis
    finally:
        report_registry.unregister("toy")
        registry.unregister("toy")
    assert "toy" not in registry.selectable() and "toy" not in [s.name for s in report_registry.sections()]
    assert "toy_abs_diff" not in results_schema()["properties"]


def _stdout(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0, argv
    return capsys.readouterr().out


def test_a_toy_analysis_registered_from_a_test_reaches_every_output(
        toy: registry.Analysis, tmp_path: Path, tiny_task_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the CLI: --analyses lists it and accepts it
    text = " ".join(_stdout(capsys, ["run", "--help"]).replace("│", " ").split())
    choices = text.split("--analyses", 1)[1].split("'default'", 1)[0]
    assert choices.rstrip("; ").endswith(", toy"), choices  # registered last: listed last
    # the schema: its key and type, and its name among config.analyses
    schema = json.loads(_stdout(capsys, ["schema"]))
    assert schema["properties"]["toy_abs_diff"] == {"$ref": "#/$defs/ToyAbsDiff"}
    assert "toy_abs_diff" not in schema["required"]
    assert schema["$defs"]["ToyAbsDiff"]["required"] == ["mean", "per_prompt"]
    assert "toy" in schema["$defs"]["ConfigSection"]["properties"]["analyses"]["items"]["enum"]
    # two runs on two tiny models
    outs = []
    for kind in ("gpt2", "llama_gqa"):
        out = tmp_path / kind
        assert main(["run", "--model", str(make_model_folder(kind, tmp_path / f"{kind}-model")), "--task",
                     str(tiny_task_file), "--out", str(out), "--analyses", "toy"]) == 0
        outs.append(out)
        # results.json: written, validated, the numbers the model gives
        res = load_results(out / "results.json")
        assert res["config"]["analyses"] == ["toy"]
        per_prompt = [abs(v) for v in res["logit_diff"]["per_prompt"]]
        assert res["toy_abs_diff"]["per_prompt"] == pytest.approx(per_prompt, abs=1e-6)
        assert res["toy_abs_diff"]["mean"] == pytest.approx(sum(per_prompt) / len(per_prompt), abs=1e-6)
        # report.html: its section (after the analyses registered before it), its figure and its finding
        html = (out / "report.html").read_text(encoding="utf-8")
        assert '<section id="toy"><h2>Toy analysis</h2>' in html
        assert html.index('<section id="unembed-bias">') < html.index('<section id="toy">')
        assert 'id="fig-toy_abs_diff"' in html
        assert f"the mean |logit difference| is {res['toy_abs_diff']['mean']:.3f}." in html
        assert '<a href="#fig-toy_abs_diff">' in html
    # compare.html of the two runs: the toy part, its figure and its finding
    compare = tmp_path / "compare.html"
    assert main(["compare", *map(str, outs), "--out", str(compare)]) == 0
    html = compare.read_text(encoding="utf-8")
    assert "<h3>Toy |logit difference|</h3>" in html and 'id="fig-t0_toy_abs_diff"' in html
    assert "the largest toy mean |logit difference| is" in html


def test_a_run_without_the_toy_says_it_did_not_run(toy: registry.Analysis, tmp_path: Path,
                                                   tiny_task_file: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", "--model", str(make_model_folder("gpt2", tmp_path / "gpt2")), "--task",
                 str(tiny_task_file), "--out", str(out), "--analyses", "ablation"]) == 0
    assert "toy_abs_diff" not in load_results(out / "results.json")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Not run: the toy analysis is not among this run" in html and 'id="fig-toy_abs_diff"' not in html
