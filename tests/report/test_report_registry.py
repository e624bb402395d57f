"""The section registry: a section registered from a test appears in report.html and compare.html, and the
report's modules import each other without a cycle."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
from typing_extensions import TypedDict

import logitlab.registry as analysis_registry
import synthetic
from logitlab.report import Finding, build_report, key_findings
from logitlab.report.compare import write_compare
from logitlab.report.markup import figure_html
from logitlab.report.registry import (
    ComparePart, FigureSpec, ReportError, Rule, Run, Section, register, sections, unregister,
)
from logitlab.results._base import section as results_section

REPORT = Path(__file__).resolve().parents[2] / "logitlab" / "report"
TOY_KEY = "toy_analysis"


@results_section
class ToyValue(TypedDict):
    """The toy analysis's section."""

    value: int
    """a number"""


def _toy_figure(results: Mapping[str, Any]) -> go.Figure:
    return go.Figure(go.Bar(x=["toy"], y=[results[TOY_KEY]["value"]]))


def _toy_render(results: Mapping[str, Any], figures: Mapping[str, go.Figure], findings: Sequence[Finding]) -> str:
    return f"<p>toy value {results[TOY_KEY]['value']}</p>" + figure_html(figures, "toy_figure")


def _toy_rule(results: Mapping[str, Any]) -> Finding | None:
    return Finding(f"The toy value is {results[TOY_KEY]['value']}.", "toy_figure") if TOY_KEY in results else None


def _toy_compare_rule(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    vals = [r.results[TOY_KEY]["value"] for r in runs if TOY_KEY in r.results]
    return Finding(f"On {task} the toy values are {vals}.", f"t{i}_toy") if vals else None


def _toy_compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    return {f"t{i}_toy": go.Figure(go.Bar(x=[r.label for r in runs],
                                          y=[r.results.get(TOY_KEY, {}).get("value", 0) for r in runs]))}


def _toy_compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    return ("<h3>Toy comparison</h3>" + "".join(f"<p>toy of {r.label}</p>" for r in runs if TOY_KEY in r.results)
            + figure_html(figures, f"t{i}_toy"))


@pytest.fixture
def toy() -> Iterator[Section]:
    """A toy analysis (its key in the results schema) and its section, registered for the test only."""
    analysis_registry.register(analysis_registry.Analysis(
        "toy", {TOY_KEY: ToyValue}, lambda ctx: {TOY_KEY: {"value": 0}}, default=False))
    sec = register(Section(
        name="toy", title="Toy section", render=_toy_render, analysis="toy", keys=(TOY_KEY,),
        figures=(FigureSpec("toy_figure", TOY_KEY, _toy_figure),), rules=(Rule(15, _toy_rule),),
        compare=ComparePart(_toy_compare_html, _toy_compare_figures, rules=(Rule(15, _toy_compare_rule),)),
    ))
    try:
        yield sec
    finally:
        unregister("toy")
        analysis_registry.unregister("toy")
    assert "toy" not in [s.name for s in sections()]


def _with_toy(value: int, seed: int = 0) -> dict[str, Any]:
    r: dict[str, Any] = dict(synthetic.make_results(seed=seed))
    r[TOY_KEY] = {"value": value}
    r["config"]["analyses"].append("toy")
    return r


def test_toy_section_in_report(toy: Section) -> None:
    """The toy section is placed after the analyses registered before it, with its figure and its finding (in
    the rules' order)."""
    report = build_report(_with_toy(42))
    assert "toy_figure" in report.figures
    assert [f.figure_id for f in report.findings][:2] == ["logit_diff", "toy_figure"]
    html = report.html
    assert [s.name for s in sections()][-1] == "toy"
    assert html.index('<section id="robustness">') < html.index('<section id="toy"><h2>Toy section</h2>')
    assert "toy value 42" in html and 'id="fig-toy_figure"' in html and 'href="#toy"' in html


def test_a_section_of_an_unregistered_analysis_is_an_error() -> None:
    register(Section(name="orphan", title="Orphan", render=_toy_render, analysis="no_such_analysis"))
    try:
        with pytest.raises(ReportError, match="'orphan' belongs to the analysis 'no_such_analysis'"):
            sections()
    finally:
        unregister("orphan")


def test_toy_section_not_run(toy: Section) -> None:
    """Without its key and not among the analyses run, the toy section says it was not run."""
    report = build_report(synthetic.make_results())
    assert "Not run: the toy analysis is not among this run" in report.html
    assert "toy_figure" not in report.figures and all(f.figure_id != "toy_figure" for f in report.findings)


def test_toy_section_in_compare(toy: Section, tmp_path: Path) -> None:
    """compare.html shows the toy part and finding of every task group."""
    for name, value in (("a", 1), ("b", 2)):
        r = _with_toy(value, seed=value)
        r["model"]["name"] = f"model {name}"
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r), encoding="utf-8")
    html = write_compare([tmp_path / "a", tmp_path / "b"], tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "<h3>Toy comparison</h3>" in html and "toy of model a" in html and "toy of model b" in html
    assert "the toy values are [1, 2]" in html and 'id="fig-t0_toy"' in html


def test_register_refuses_a_second_section_or_figure_of_a_name(toy: Section) -> None:
    with pytest.raises(ValueError, match="registered already"):
        register(Section(name="toy", title="again", render=_toy_render))
    with pytest.raises(ValueError, match="toy_figure"):
        register(Section(name="toy2", title="again", render=_toy_render,
                         figures=(FigureSpec("toy_figure", TOY_KEY, _toy_figure),)))


def test_findings_have_no_hand_count() -> None:
    """Every registered rule can produce its finding: nothing is cut at a fixed count (the DLA check is last)."""
    r = synthetic.with_features(synthetic.with_circuit(synthetic.make_results()))
    findings = key_findings(r)
    n_rules = sum(len(s.rules) for s in sections())
    assert len(findings) == n_rules, [f.figure_id for f in findings]
    assert "reconstructs each prompt's logit difference" in findings[-1].text


# ---- structure -------------------------------------------------------------------------------------------------


def _module(path: Path) -> str:
    rel = path.relative_to(REPORT.parents[1]).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, inside a function) for every import of ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in funcs for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in inner
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, id(node) in inner
            for a in node.names:  # ``from . import sections`` imports a module
                yield f"{mod}.{a.name}", id(node) in inner


def test_report_modules_have_no_cycle_no_local_import_and_stay_small() -> None:
    files = sorted(REPORT.rglob("*.py"))
    mods = {_module(p): p for p in files}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, local in _imports(p):
            assert not local, f"{p.name} imports {target} inside a function"
            if target in mods and target != m:
                graph[m].add(target)
        assert len(p.read_text(encoding="utf-8").splitlines()) < 500, f"{p} has 500 lines or more"
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for t in graph[m]:
            if seen.get(t) == 1:
                raise AssertionError(f"import cycle: {' → '.join(stack[stack.index(t):] + [t])}")
            if t not in seen:
                visit(t, [*stack, t])
        seen[m] = 2

    for m in graph:
        if m not in seen:
            visit(m, [m])
    registry = graph["logitlab.report.registry"]
    assert not {t for t in registry if t.startswith("logitlab.report")}, "the registry is a leaf"
