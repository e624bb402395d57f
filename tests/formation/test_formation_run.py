"""run_formation: schema, resumability, atomic writes; checkpoint discovery; hub revisions offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import logitlab.formation.formation as formation
from logitlab.errors import LogitlabError
from logitlab.formation.formation import (
    find_checkpoints, hub_checkpoints, load_checkpoint, run_formation, switch_on_step,
)
from logitlab.formation.schema import FormationResults
from logitlab.results import validate_results
from logitlab.task import load_task


_REAL_LOAD = formation.load_checkpoint


class Interrupted(Exception):
    """Stands in for a kill or Ctrl-C in the middle of a run."""


def _counting_loads(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[str]:
    """Record every checkpoint load run_formation makes; optionally fail the ``fail_at``-th (0-based)."""
    calls: list[str] = []

    def wrapped(spec: str, **kw: Any) -> Any:
        if fail_at is not None and len(calls) == fail_at:
            raise Interrupted
        calls.append(spec)
        return _REAL_LOAD(spec, **kw)

    monkeypatch.setattr(formation, "load_checkpoint", wrapped)
    return calls


def _no_temp_files(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not left, left


def test_results_schema(tiny_formation: tuple[Path, dict[str, Any]], tiny_toy: Path) -> None:
    out, res = tiny_formation
    assert json.loads((out / "results.json").read_text()) == res
    validate_results(json.loads((out / "results.json").read_text()), FormationResults)  # every key, exactly
    assert res["kind"] == "formation" and res["heldout"] is True
    steps = [s for s, _ in find_checkpoints(tiny_toy)]
    assert [c["step"] for c in res["checkpoints"]] == steps
    L, H = res["model"]["n_layers"], res["model"]["n_heads"]
    for c in res["checkpoints"]:
        assert 0 <= c["accuracy"] <= 1 and len(c["logit_diff_per_prompt"]) == 18
        assert len(c["head_attribution"]) == L and len(c["head_attribution"][0]) == H
        assert [(d["layer"], d["head"]) for d in c["top_heads_ablation"]] == \
            [(h["layer"], h["head"]) for h in res["top_heads"]]
        for d in c["top_heads_ablation"]:
            assert d["effect"] == pytest.approx(c["zero_ablation_effect"][d["layer"]][d["head"]])
        assert c["resid_patching_summary"]["subject_position"] == 1  # <bos> Name …
        assert (out / "checkpoints" / f"step{c['step']}.json").is_file()
    # Top heads: the final checkpoint's largest |attribution|.
    final = res["checkpoints"][-1]["head_attribution"]
    flat = sorted((abs(v), l, h) for l, row in enumerate(final) for h, v in enumerate(row))
    assert {(l, h) for _, l, h in flat[-2:]} == {(h["layer"], h["head"]) for h in res["top_heads"]}
    assert len(res["switch_on"]) == 2 and len(res["ablation_heads"]) == 2
    # At initialisation the logit difference is about 0.
    assert abs(res["checkpoints"][0]["logit_diff_mean"]) < 0.5
    _no_temp_files(out)


def test_resume_recomputes_only_missing_steps(tiny_toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpts = [(s, str(p)) for s, p in find_checkpoints(tiny_toy)]
    task = load_task(tiny_toy / "heldout-task.yaml")
    calls = _counting_loads(monkeypatch)
    first = run_formation(ckpts, task, tmp_path, top_k_heads=2)
    assert len(calls) == len(ckpts) and calls[0] == ckpts[-1][1]  # the final checkpoint goes first
    files = {p.name: p.read_text() for p in (tmp_path / "checkpoints").glob("*.json")}
    assert len(files) == len(ckpts)

    calls.clear()
    again = run_formation(ckpts, task, tmp_path, top_k_heads=2)
    assert calls == []
    assert again["checkpoints"] == first["checkpoints"]

    for victim in (ckpts[2], ckpts[-1]):  # a middle step, then the final one (its top heads must not change)
        (tmp_path / "checkpoints" / f"step{victim[0]}.json").unlink()
        calls.clear()
        res = run_formation(ckpts, task, tmp_path, top_k_heads=2)
        assert calls == [victim[1]]
        assert res["checkpoints"] == first["checkpoints"] and res["top_heads"] == first["top_heads"]
        assert {p.name: p.read_text() for p in (tmp_path / "checkpoints").glob("*.json")} == files
    _no_temp_files(tmp_path)

    # A different head set invalidates the stored summaries.
    calls.clear()
    run_formation(ckpts, task, tmp_path, top_k_heads=3)
    assert len(calls) == len(ckpts)


def test_interrupted_run_keeps_finished_steps(tiny_toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpts = [(s, str(p)) for s, p in find_checkpoints(tiny_toy)]
    task = load_task(tiny_toy / "heldout-task.yaml")
    _counting_loads(monkeypatch, fail_at=3)
    with pytest.raises(Interrupted):
        run_formation(ckpts, task, tmp_path, top_k_heads=2)
    done = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.json"))
    assert len(done) == 3 and not (tmp_path / "results.json").exists()
    _no_temp_files(tmp_path)
    calls = _counting_loads(monkeypatch)
    run_formation(ckpts, task, tmp_path, top_k_heads=2)
    assert len(calls) == len(ckpts) - 3


def test_find_checkpoints_orders_by_step(tmp_path: Path) -> None:
    for name in ("step10", "checkpoint-2", "100", "step_5", "logs", "final"):
        (tmp_path / name).mkdir()
    (tmp_path / "step3").write_text("a file, not a checkpoint")
    found = find_checkpoints(tmp_path)
    assert [(s, p.name) for s, p in found] == [(2, "checkpoint-2"), (5, "step_5"), (10, "step10"), (100, "100")]
    (tmp_path / "checkpoint-10").mkdir()
    with pytest.raises(LogitlabError, match="two checkpoint folders for step 10"):
        find_checkpoints(tmp_path)
    with pytest.raises(LogitlabError, match="no checkpoint sub-folders"):
        find_checkpoints(tmp_path / "logs")
    with pytest.raises(LogitlabError, match="does not exist"):
        find_checkpoints(tmp_path / "nope")


def test_switch_on_step() -> None:
    steps = [0, 1, 10, 100, 1000]
    assert switch_on_step(steps, [0.0, 0.1, 0.6, 0.9, 1.0]) == 10
    assert switch_on_step(steps, [0.0, 0.8, 0.1, 0.9, 1.0]) == 100  # must stay on to the end
    assert switch_on_step(steps, [0.0, -0.1, -0.6, -0.9, -1.0]) == 10  # negative heads: same side as final
    assert switch_on_step(steps, [0.0, 0.9, 0.9, -0.9, -1.0]) == 100
    assert switch_on_step(steps, [0.0, 0.0, 0.0, 0.0, 0.0]) is None


def test_hub_checkpoints_names_revisions() -> None:
    assert hub_checkpoints("EleutherAI/pythia-70m", [1000, 0, 1000]) == \
        [(0, "EleutherAI/pythia-70m@step0"), (1000, "EleutherAI/pythia-70m@step1000")]
    assert hub_checkpoints("stanford-crfm/alias-gpt2-small-x21", [10]) == \
        [(10, "stanford-crfm/alias-gpt2-small-x21@checkpoint-10")]
    assert hub_checkpoints("someone/model", [5], revision_format="ckpt-{}") == [(5, "someone/model@ckpt-5")]
    with pytest.raises(LogitlabError, match="revision"):
        hub_checkpoints("someone/model", [5])


def test_hub_checkpoints_default_to_log_spaced_published_steps() -> None:
    from transformer_lens.tools.model_registry.checkpoints import PYTHIA_CHECKPOINTS
    picked = [s for s, _ in hub_checkpoints("EleutherAI/pythia-70m")]
    assert picked[0] == 0 and picked[-1] == 143000 and 12 <= len(picked) <= 17
    assert set(picked) <= set(PYTHIA_CHECKPOINTS) and picked == sorted(set(picked))
    assert sum(s < 1000 for s in picked) >= 4, f"early steps under-sampled: {picked}"
    with pytest.raises(LogitlabError, match="no checkpoint"):
        hub_checkpoints("EleutherAI/pythia-70m", [3])


def test_hub_revision_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub here: loading a revision must fail as a LogitlabError with a hint, quickly (offline mode)."""
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("LOGITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LogitlabError) as e:
        load_checkpoint("EleutherAI/pythia-70m@step1000")
    assert "step1000" in str(e.value) and "train-toy" in (e.value.hint or "")


def test_task_without_patching_pairs(tiny_toy: Path, tmp_path: Path) -> None:
    """A task without patching pairs still gets every other summary (patching is then null)."""
    from logitlab.task import task_from_dict
    task = task_from_dict({"name": "no-pairs", "templates": ["{} is very funny, isn’t"],
                           "classes": {"she": {"answer": " she", "incorrect": [" he"]},
                                       "he": {"answer": " he", "incorrect": [" she"]}},
                           "subjects": [{"name": "Lucy", "class": "she"}, {"name": "Mark", "class": "he"}]})
    src = tmp_path / "ck"
    shutil.copytree(tiny_toy / "step0", src / "step0")
    shutil.copytree(tiny_toy / "step40", src / "step40")
    res = run_formation([(s, str(p)) for s, p in find_checkpoints(src)], task, tmp_path / "out", top_k_heads=1)
    assert all(c["resid_patching_summary"] is None for c in res["checkpoints"])
    assert [c["step"] for c in res["checkpoints"]] == [0, 40] and len(res["top_heads"]) == 1
