"""The results types (logitlab/results/): real battery output validates, bad dicts are refused with their path,
the JSON Schema, the `logitlab schema` command and docs/results.md agree with them."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from logitlab.battery import ANALYSES, CircuitConfig, RunConfig, run_battery, write_results
from logitlab.cli import main
from logitlab.errors import LogitlabError
from logitlab.formation.schema import FormationResults
from logitlab.model.load import Model, load_model
from logitlab.results import SCHEMA_VERSION, ConfigSection, Results, results_schema, results_table, validate_results
from logitlab.task import load_task
from tests.tiny import TASK_YAML, make_model_folder

ROOT = Path(__file__).resolve().parents[2]
PATCHING = {"resid_patching", "attn_patching", "mlp_patching", "head_patching"}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return load_model(str(make_model_folder("gpt2", tmp_path_factory.mktemp("schema") / "gpt2")), cache=False)


@pytest.fixture(scope="module")
def gpt2_results(gpt2: Model, tiny_task_file: Path) -> Results:
    return run_battery(gpt2, load_task(str(tiny_task_file)), RunConfig())


def test_battery_output_validates_on_every_kind(tiny_model: Model, tiny_task_file: Path, tmp_path: Path) -> None:
    # every analysis, the features one over random transcoders written to a folder as a user would pass them
    from logitlab.features.formats import save_circuit_tracer
    from tests.tiny import random_dictionaries
    folder = save_circuit_tracer(random_dictionaries(tiny_model.spec.d_model, tiny_model.spec.n_layers, "relu"),
                                 tmp_path / "transcoders")
    config = RunConfig(n_predictions=2, analyses=ANALYSES, circuit=CircuitConfig(pairs=4, ig_steps=2, n_random=2),
                       transcoders=str(folder), feature_prompts=3, feature_top=5)
    results = run_battery(tiny_model, load_task(str(tiny_task_file)), config)
    validate_results(results)
    validate_results(json.loads(json.dumps(results)))  # as read back from results.json
    # (circuit discovery needs a pair with a gap of 1 logit: the tiny models' answers follow the subject)
    assert set(results) == set(results_schema()["properties"]), "a task with pairs fills every section"
    assert results["schema_version"] == SCHEMA_VERSION == 8


def test_without_patching_pairs_the_patching_sections_are_absent(gpt2: Model, tmp_path: Path) -> None:
    path = tmp_path / "no-pairs.yaml"
    path.write_text(TASK_YAML.split("patching:")[0], encoding="utf-8")
    # Without explicit pairs the templates still yield pairs (generated), unless generation is off.
    results = run_battery(gpt2, load_task(str(path)), RunConfig())
    validate_results(results)
    assert results["task"]["patching_pairs"] == [] and results["resid_patching"]["pairs"] == "pooled"
    results = run_battery(gpt2, load_task(str(path)), RunConfig(patching_pairs=0))
    validate_results(results)
    assert PATCHING.isdisjoint(results), "no explicit and no generated pairs: no patching sections"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting the value at a dotted path with [i] indices (value ``...`` deletes the key)."""
    def mutate(r: dict[str, Any]) -> None:
        *parents, last = path.replace("[", ".[").split(".")
        cur: Any = r
        for part in parents:
            cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
        key: Any = int(last[1:-1]) if last.startswith("[") else last
        if value is ...:
            del cur[key]
        else:
            cur[key] = value
    return mutate


BAD = {
    "unknown top-level key": ("extra_section", 1),
    "unknown nested key": ("head_ablation.zero.bogus", [[0.0]]),
    "unknown key in a list item": ("predictions[0].top[1].rank", 1),
    "missing key": ("dla.relative_error", ...),
    "missing section": ("unembed_bias", ...),
    "string for a float": ("logit_diff.per_prompt[2]", "1.5"),
    "bool for an int": ("model.n_layers", True),
    "null where none is allowed": ("attention.heads[0].pattern", None),
    "list for a float": ("head_ablation.baseline_loss", [1.0]),
    "NaN": ("head_ablation.mean.loss[1][0]", math.nan),
    "unknown literal": ("model.normalization", "BatchNorm"),
    "old schema version": ("schema_version", 1),
    "resid patching without its gap": ("resid_patching.clean_logit_diff", ...),
    "the gap on attn patching": ("attn_patching.corrupted_logit_diff", 0.5),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_results_are_refused_naming_the_path(gpt2_results: Results, case: str) -> None:
    path, value = BAD[case]
    bad = copy.deepcopy(dict(gpt2_results))
    _set(path, value)(bad)
    with pytest.raises(LogitlabError) as e:
        validate_results(bad)
    where = path.rsplit(".", 1)[0] if "patching" in path else path  # the section's own check names the section
    assert f": {where}: " in str(e.value), f"{case}: the message should name {where!r}: {e.value}"


def test_not_an_object_is_refused() -> None:
    with pytest.raises(LogitlabError, match=r"\(top level\)"):
        validate_results([1, 2])


def test_write_results_refuses_invalid_results_and_writes_nothing(gpt2_results: Results, tmp_path: Path) -> None:
    bad = copy.deepcopy(dict(gpt2_results))
    bad["logit_lens"]["labels"][0] = 0
    with pytest.raises(LogitlabError, match=r"logit_lens\.labels\[0\]"):
        write_results(bad, tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def _keys(node: Any) -> list[str]:
    """Every key of every object in a JSON value, except the names under "properties" / "$defs"."""
    if isinstance(node, list):
        return [k for v in node for k in _keys(v)]
    if not isinstance(node, dict):
        return []
    out = []
    for k, v in node.items():
        out.append(k)
        out += [k2 for s in v.values() for k2 in _keys(s)] if k in ("properties", "$defs") else _keys(v)
    return out


@pytest.mark.parametrize("kind", [Results, FormationResults])
def test_schema_is_plain_deterministic_json(kind: type) -> None:
    schema = results_schema(kind)
    assert json.dumps(schema) == json.dumps(results_schema(kind)), "two calls differ"
    keys = set(_keys(schema))
    assert not keys & {"title", "$id"}, f"generated titles/ids left in the schema: {keys & {'title', '$id'}}"
    assert schema["additionalProperties"] is False
    assert all(d.get("additionalProperties") is False for d in schema["$defs"].values() if "properties" in d)


def test_schema_required_and_optional_sections() -> None:
    schema = results_schema()
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    optional = set(schema["properties"]) - set(schema["required"])
    # robustness: absent with fewer than two templates; the others when not selected (RunConfig.analyses) or
    # without clean/corrupted pairs.
    allowed = PATCHING | {"robustness", "attention", "head_ablation", "attribution_patching", "path_patching", "circuit",
                          "features"}
    assert optional == allowed, f"unexpected optional sections {optional ^ allowed}"


def test_config_section_is_the_run_config() -> None:
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    assert list(ConfigSection.__annotations__) == fields, "ConfigSection must list RunConfig's fields, in order"


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == results_schema()
    assert out.startswith('{\n  "$schema"'), "indent 2"
    assert main(["schema", "--formation"]) == 0
    assert json.loads(capsys.readouterr().out) == results_schema(FormationResults)
    assert main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out == results_table()


def test_docs_hold_the_generated_key_table() -> None:
    docs = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    table = results_table()
    assert table in docs, "docs/results.md is out of date: paste the output of `logitlab schema --markdown`"
    assert f"schema (version {SCHEMA_VERSION})" in docs
    rows = [line.split("`")[1] for line in table.splitlines()[2:]]
    assert len(rows) == len(set(rows)) > 100 and "head_ablation.zero.loss_stderr" in rows
    assert "predictions[].top[].prob" in rows and "resid_patching.clean_logit_diff" in rows
    assert all(line.count(" | ") == 2 for line in table.splitlines()[2:]), "an unescaped | breaks a row"
