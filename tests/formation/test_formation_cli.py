"""`logitlab train-toy` and `logitlab formation`, registered on a typer app as the main CLI will."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from logitlab.errors import LogitlabError
from logitlab.formation.cli import formation_cmd, parse_steps, train_toy_cmd


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("train-toy")(train_toy_cmd)
    app.command("formation")(formation_cmd)
    return app


def _run(app: typer.Typer, args: list[str]) -> None:
    app(args=args, standalone_mode=False)


def test_train_toy_then_formation(app: typer.Typer, tmp_path: Path) -> None:
    toy = tmp_path / "toy"
    _run(app, ["train-toy", "--out", str(toy), "--steps", "12"])
    assert (toy / "heldout-task.yaml").is_file() and (toy / "step12" / "config.json").is_file()
    with pytest.raises(LogitlabError, match="already holds a toy model"):
        _run(app, ["train-toy", "--out", str(toy), "--steps", "12"])
    out = tmp_path / "formation"
    _run(app, ["formation", "--checkpoints", str(toy), "--out", str(out), "--top-k", "2"])
    res = json.loads((out / "results.json").read_text())
    assert res["task"]["name"] == "toy-heldout" and res["heldout"] is True  # the toy's held-out task by default
    assert res["model"]["name"] == "toy" and len(res["checkpoints"]) == len(list(toy.glob("step*")))
    assert (out / "report.html").is_file()
    before = (out / "checkpoints" / "step0.json").stat().st_mtime_ns
    _run(app, ["formation", "--checkpoints", str(toy), "--out", str(out), "--top-k", "2"])  # resumes: nothing new
    assert (out / "checkpoints" / "step0.json").stat().st_mtime_ns == before
    _run(app, ["formation", "--checkpoints", str(toy), "--out", str(out), "--top-k", "2", "--force",
               "--task", str(toy / "train-task.yaml")])
    res = json.loads((out / "results.json").read_text())
    assert res["task"]["name"] == "toy-train" and res["heldout"] is False
    assert (out / "checkpoints" / "step0.json").stat().st_mtime_ns != before


def test_train_toy_size_options(app: typer.Typer, tmp_path: Path) -> None:
    """--layers/--d-model/--heads reach the saved model's config and toy.json; a bad size is a clear error."""
    toy = tmp_path / "toy"
    _run(app, ["train-toy", "--out", str(toy), "--steps", "3", "--layers", "1", "--d-model", "32", "--heads", "2",
               "--seed", "5"])
    cfg = json.loads((toy / "step3" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_head"]) == (1, 32, 2)
    saved = json.loads((toy / "toy.json").read_text())["config"]
    assert (saved["n_layers"], saved["d_model"], saved["n_heads"], saved["seed"]) == (1, 32, 2, 5)
    with pytest.raises(LogitlabError, match="divisible by n_heads"):
        _run(app, ["train-toy", "--out", str(tmp_path / "bad"), "--steps", "3", "--d-model", "30", "--heads", "4"])
    with pytest.raises(LogitlabError, match="at least one layer"):
        _run(app, ["train-toy", "--out", str(tmp_path / "bad"), "--steps", "3", "--layers", "0"])


def test_default_task_without_toy_files(app: typer.Typer, tiny_toy: Path, tmp_path: Path) -> None:
    """A checkpoint folder without heldout-task.yaml is evaluated on the built-in pronouns task."""
    import shutil
    for name in ("step0", "step40"):
        shutil.copytree(tiny_toy / name, tmp_path / "ck" / name)
    _run(app, ["formation", "--checkpoints", str(tmp_path / "ck"), "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["task"]["name"] == "pronouns" and res["heldout"] is False and len(res["top_heads"]) == 3


def test_user_errors(app: typer.Typer, tmp_path: Path) -> None:
    with pytest.raises(LogitlabError, match="exactly one of"):
        _run(app, ["formation", "--out", str(tmp_path)])
    with pytest.raises(LogitlabError, match=r"no checkpoint at step\(s\) \[7\]"):
        _run(app, ["formation", "--model", "EleutherAI/pythia-70m", "--steps", "0,7", "--out", str(tmp_path)])
    with pytest.raises(LogitlabError, match="does not exist"):
        _run(app, ["formation", "--checkpoints", str(tmp_path / "nope"), "--out", str(tmp_path)])
    with pytest.raises(LogitlabError, match="revision"):
        _run(app, ["formation", "--model", "someone/model", "--steps", "1,2", "--out", str(tmp_path)])
    with pytest.raises(LogitlabError, match="steps"):
        parse_steps("1,x")
    assert parse_steps("0, 10,100") == [0, 10, 100]
