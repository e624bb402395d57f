"""The analyses registry: a registered analysis reaches the CLI choices, the results schema and results.json without
touching library files, and every registered analysis has a results type and a row in docs/results.md."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import NotRequired, TypedDict

import logitlab.registry as registry
import logitlab.report.registry as report_registry  # importing logitlab.report registers its sections
from logitlab.cli import _analyses, main
from logitlab.config import RunConfig
from logitlab.errors import LogitlabError
from logitlab.results import Results, load_results, results_schema, results_type, validate_results
from logitlab.results._base import SCHEMA_VERSION, section
from tests.tiny import make_model_folder

ROOT = Path(__file__).resolve().parents[2]


@section
class ToyMean(TypedDict):
    """The toy analysis: the mean final-position logit of the clean run."""

    value: float
    """mean over prompts and vocabulary"""
    n_prompts: int
    """prompts averaged"""


def _toy(ctx: Any) -> dict[str, Any]:
    logits = ctx.run.final_logits if hasattr(ctx.run, "final_logits") else None
    value = float(ctx.run.logit_diff.mean()) if logits is None else float(logits.float().mean())
    return {"toy_mean": {"value": value, "n_prompts": ctx.tt.n_prompts}}


@pytest.fixture
def toy() -> Iterator[registry.Analysis]:
    analysis = registry.register(registry.Analysis("toy_mean", {"toy_mean": ToyMean}, _toy, default=False,
                                                   summary="a toy"))
    try:
        yield analysis
    finally:
        registry.unregister("toy_mean")
    assert "toy_mean" not in registry.selectable()


def test_a_registered_analysis_reaches_choices_schema_and_results(toy: registry.Analysis, tmp_path: Path,
                                                                   tiny_task_file: Path) -> None:
    assert "toy_mean" in registry.selectable() and "toy_mean" not in registry.default_selection()
    assert _analyses("ablation,toy_mean", False) == ("ablation", "toy_mean")
    assert "toy_mean" in _analyses("all", False) and "toy_mean" not in _analyses("default", False)
    RunConfig(analyses=("toy_mean",))  # accepted: the choices are the registry's
    schema = results_schema()
    assert "toy_mean" in schema["properties"] and "toy_mean" not in schema["required"]
    assert schema["$defs"]["ToyMean"]["required"] == ["value", "n_prompts"]
    assert "toy_mean" in schema["$defs"]["ConfigSection"]["properties"]["analyses"]["items"]["enum"]
    model = make_model_folder("gpt2", tmp_path / "gpt2")
    out = tmp_path / "out"
    assert main(["run", "--model", str(model), "--task", str(tiny_task_file), "--out", str(out), "--no-report",
                 "--analyses", "toy_mean"]) == 0
    res = load_results(out / "results.json")
    assert res["config"]["analyses"] == ["toy_mean"]
    assert set(res["toy_mean"]) == {"value", "n_prompts"} and res["toy_mean"]["n_prompts"] == len(res["task"]["prompts"])
    bad = json.loads((out / "results.json").read_text())
    bad["toy_mean"]["value"] = "x"
    with pytest.raises(LogitlabError, match=r"toy_mean\.value"):
        validate_results(bad)


def test_an_analysis_that_writes_an_undeclared_key_is_refused(tmp_path: Path, tiny_task_file: Path) -> None:
    registry.register(registry.Analysis("sneaky", {"sneaky": ToyMean},
                                        lambda ctx: {"not_declared": {"value": 0.0, "n_prompts": 1}}))
    try:
        model = make_model_folder("gpt2", tmp_path / "gpt2")
        with pytest.raises(LogitlabError, match="not_declared"):
            main(["--debug", "run", "--model", str(model), "--task", str(tiny_task_file), "--out",
                  str(tmp_path / "o"), "--no-report", "--analyses", "sneaky"])
    finally:
        registry.unregister("sneaky")


def test_registration_is_checked() -> None:
    with pytest.raises(ValueError, match="already written by 'logit_diff'"):
        registry.register(registry.Analysis("other", {"logit_diff": ToyMean}, _toy))
    with pytest.raises(ValueError, match="needs 'nothing'"):
        registry.register(registry.Analysis("other", {"other": ToyMean}, _toy, needs=("nothing",)))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Analysis("ablation", {"other": ToyMean}, _toy))
    with pytest.raises(ValueError, match="frozen dataclass"):
        registry.register(registry.Analysis("other", {"other": ToyMean}, _toy, settings=dict))
    assert "other" not in registry.selectable()


def test_every_registered_analysis_has_a_results_type_a_report_section_and_a_docs_row() -> None:
    docs = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    rows = {line.split("`")[1] for line in docs.splitlines() if line.startswith("| `")}
    report_sections = report_registry.sections()  # raises if a section names an analysis not registered
    for analysis in registry.analyses():
        own = [s for s in report_sections if s.analysis == analysis.name]
        assert own, f"{analysis.name} has no report section (logitlab/report/sections/)"
        read = {k for s in own for k in s.keys}
        assert read == set(analysis.sections), f"{analysis.name}: its sections read {read}, it writes " \
            f"{set(analysis.sections)}"
        for key, kind in analysis.sections.items():
            schema = results_schema()["properties"][key]
            assert schema.get("$ref") or schema.get("type"), f"{analysis.name}: {key} has no results type"
            assert key in rows, f"{analysis.name}: {key} has no row in docs/results.md (regenerate it)"
        if analysis.settings is not None:
            for f in dataclasses.fields(analysis.settings):
                where = f"config.{analysis.group}.{f.name}" if analysis.group else f"config.{f.name}"
                assert where in rows, f"{analysis.name}: setting {where} has no row in docs/results.md"
                assert f.metadata.get("doc"), f"{analysis.name}: setting {f.name} is undocumented"


def test_the_static_results_type_agrees_with_the_registry() -> None:
    """`Results` (for type checkers) lists the built-in keys with the types the registered analyses declare."""
    derived = typing.get_type_hints(results_type(), include_extras=True)
    static = typing.get_type_hints(Results, include_extras=True)
    assert list(static) == list(derived), "same keys, in the order the battery writes them"
    header = {"schema_version", "logitlab_version", "config", "model", "task"}
    for key in set(static) - header:
        assert results_schema(_one(key, static[key])) == results_schema(_one(key, derived[key])), key
    optional = {k for k, v in static.items() if typing.get_origin(v) is NotRequired}
    assert optional == set(derived) - results_type().__required_keys__


def _one(key: str, kind: Any) -> type:
    return section(TypedDict("One", {key: kind}))  # type: ignore[misc]


def test_settings_derive_run_config_and_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    names = [f.name for f in dataclasses.fields(RunConfig)]
    for analysis in registry.analyses():
        if analysis.settings is not None and analysis.group is None:
            assert {f.name for f in dataclasses.fields(analysis.settings)} <= set(names), analysis.name
    assert [f.name for f in dataclasses.fields(RunConfig().circuit)] == [
        "pairs", "ig_steps", "n_random", "threshold", "n_senders", "path_pairs"]
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--top-k", "--patching-pairs", "--ig-steps", "--circuit-pairs", "--analyses", "--max-memory"):
        assert flag in text, flag


def test_load_results_refuses_other_versions(tmp_path: Path) -> None:
    with pytest.raises(LogitlabError, match=f"schema version 4; this logitlab reads version {SCHEMA_VERSION}"):
        load_results({"schema_version": 4})
    with pytest.raises(LogitlabError, match="newer"):
        load_results({"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(LogitlabError, match="no schema_version"):
        load_results({})
    path = tmp_path / "r.json"
    path.write_text("[1]")
    with pytest.raises(LogitlabError, match="not a JSON object"):
        load_results(path)


def test_load_results_migrates_version_5(tmp_path: Path, tiny_task_file: Path) -> None:
    """A version-5 file (no features settings in its config) loads as the current version with those settings at
    their defaults, the version-7 settings as a version-5 or 6 run used them (every cell exact, every pair) and
    the version-8 one as no check, every number unchanged; the report reads it. Version-6 and 7 files likewise."""
    import copy

    from logitlab.battery import run_battery
    from logitlab.model.load import load_model
    from logitlab.report import build_report
    from logitlab.task import load_task
    model = load_model(str(make_model_folder("gpt2", tmp_path / "gpt2")), cache=False)
    new = run_battery(model, load_task(str(tiny_task_file)), RunConfig(analyses=("attention",)))
    old = copy.deepcopy(dict(new))
    old["schema_version"] = 5
    v7 = ("exact", "screen_top", "screen_sample", "patching_target")
    old["config"] = {k: v for k, v in new["config"].items()
                     if k not in ("transcoders", "feature_prompts", "feature_top", "feature_check", *v7)}
    with pytest.raises(LogitlabError, match="schema_version"):
        validate_results(old)
    expected = {**new, "config": {**new["config"], "exact": True, "patching_target": 0.0, "feature_check": 0}}
    assert load_results(old) == expected
    six = {**copy.deepcopy(dict(new)), "schema_version": 6}
    six["config"] = {k: v for k, v in new["config"].items() if k not in (*v7, "feature_check")}
    assert load_results(six) == expected
    seven = {**copy.deepcopy(dict(new)), "schema_version": 7}  # version 8 added the features check
    seven["config"] = {k: v for k, v in new["config"].items() if k != "feature_check"}
    assert load_results(seven) == {**new, "config": {**new["config"], "feature_check": 0}}
    assert "Logit difference" in str(build_report(old))
