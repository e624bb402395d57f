"""The command line, run in-process on a tiny model."""

import json
from pathlib import Path

import pandas as pd
import pytest

from logitlab.cli import main
from logitlab.results import results_schema, validate_results
from tests.tiny import make_model_folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder("gpt2", tmp_path_factory.mktemp("cli") / "gpt2")


def test_run_writes_results_tables_and_refuses_to_overwrite(gpt2_dir: Path, tiny_task_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", "--model", str(gpt2_dir), "--task", str(tiny_task_file), "--out", str(out), "--no-report"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    validate_results(res)
    # circuit discovery (--circuit) and transcoder features (--analyses features) are opt-in
    assert set(res) | {"circuit", "features"} == set(results_schema()["properties"]), "a task with pairs fills every section"
    L, H = res["model"]["n_layers"], res["model"]["n_heads"]
    assert len(res["head_attribution"]) == L and len(res["head_attribution"][0]) == H
    assert len(res["head_ablation"]["zero"]["loss"]) == L and len(res["head_ablation"]["mean"]["logit_diff"][0]) == H
    assert len(res["resid_patching"]["values"]) == L
    assert len(res["resid_patching"]["values"][0]) == len(res["resid_patching"]["tokens"])
    assert res["layer_attribution"]["labels"][:2] == ["embed", "pos_embed"]
    assert res["unembed_bias"]["present"] is True  # GPT-2's folded final LayerNorm bias
    assert abs(sum(res["layer_attribution"]["values"]) - res["dla"]["reconstructed_mean"]) < 1e-4
    table = pd.read_csv(out / "tables" / "head_attribution.csv")
    assert len(table) == L * H and {"layer", "head", "logit_diff"} <= set(table.columns)
    assert json.loads((out / "config.json").read_text())["task"] == str(tiny_task_file)
    # Same command twice on CPU: identical numbers.
    first = (out / "results.json").read_text()
    assert main(args) == 2, "must refuse to overwrite without --force"
    assert main(args + ["--force"]) == 0
    assert (out / "results.json").read_text() == first


def test_user_errors_exit_2_without_traceback(tiny_task_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--model", str(tmp_path / "nope"), "--task", str(tiny_task_file), "--out", str(tmp_path / "o")]) == 2
    assert main(["run", "--task", "no-such-task", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from logitlab.errors import LogitlabError
    with pytest.raises(LogitlabError, match="no task named"):
        main(["--debug", "run", "--task", "no-such-task", "--out", str(tmp_path / "o")])


def test_predict(gpt2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "Mary is a great friend, isn’t", "--answer", " she", "--model", str(gpt2_dir), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "answer ' she': rank" in out


def test_analyses_selects_what_runs(gpt2_dir: Path, tiny_task_file: Path, tmp_path: Path) -> None:
    """--analyses runs only the named analyses (besides the always-run ones); the report says what ran."""
    out = tmp_path / "sel"
    assert main(["run", "--model", str(gpt2_dir), "--task", str(tiny_task_file), "--out", str(out),
                 "--analyses", "ablation, patching"]) == 0
    res = json.loads((out / "results.json").read_text())
    validate_results(res)
    assert res["config"]["analyses"] == ["ablation", "patching"]
    assert "head_ablation" in res and "resid_patching" in res
    assert not {"attention", "attribution_patching", "path_patching", "circuit", "robustness"} & set(res)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Analyses run:" in html and "ablation, patching" in html
    assert main(["run", "--model", str(gpt2_dir), "--task", str(tiny_task_file), "--out", str(tmp_path / "x"),
                 "--analyses", "ablation,nonsense"]) == 2


def test_circuit_command(gpt2_dir: Path, tiny_task_file: Path, tmp_path: Path) -> None:
    """`logitlab circuit` writes AtP next to exact patching, path patching and the circuit."""
    out = tmp_path / "circ"
    assert main(["circuit", "--model", str(gpt2_dir), "--task", str(tiny_task_file), "--out", str(out),
                 "--ig-steps", "2", "--circuit-pairs", "6", "--no-report"]) == 0
    res = json.loads((out / "results.json").read_text())
    validate_results(res)
    assert {"attribution_patching", "path_patching", "circuit", "head_ablation", "resid_patching"} <= set(res)
    assert "exact" in res["attribution_patching"]["heads"]
    assert res["config"]["circuit"]["ig_steps"] == 2 and "circuit" in res["config"]["analyses"]
