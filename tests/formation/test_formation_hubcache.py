"""Hub revisions for real, offline: the toy's checkpoints served as ``step{N}`` revisions of a local
Hugging Face hub cache, loaded through ``name@revision`` exactly as a hub model's would be."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import logitlab.formation.formation as formation
from logitlab.formation.formation import find_checkpoints, hub_checkpoints, load_checkpoint, run_formation
from logitlab.task import load_task

REPO = "logitlab-test/toy-gpt2"
REPO_FOLDER = "models--logitlab-test--toy-gpt2"  # huggingface_hub's repo_folder_name for a model repo


def _sha(step: int) -> str:
    """A fake 40-hex commit per revision (distinct per step, so a wrong ref would point at other weights)."""
    return hashlib.sha1(f"{REPO}@step{step}".encode()).hexdigest()


@pytest.fixture(scope="module")
def hub_cache(tiny_toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``HF_HUB_CACHE`` folder holding every toy checkpoint as revision ``step{N}`` of REPO.

    Laid out as the hub client writes it: file contents in ``blobs/``, ``snapshots/{commit}/{file}`` symlinks
    to them, and ``refs/step{N}`` holding the commit the branch points at.
    """
    root = tmp_path_factory.mktemp("hf") / "hub"
    repo = root / REPO_FOLDER
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for step, folder in find_checkpoints(tiny_toy):
        snapshot = repo / "snapshots" / _sha(step)
        snapshot.mkdir(parents=True)
        for f in folder.iterdir():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
        (repo / "refs" / f"step{step}").write_text(_sha(step))  # no trailing newline, as the hub client writes it
    return root


def _point_hub_at(monkeypatch: pytest.MonkeyPatch, cache: Path, offline: bool) -> None:
    """Direct huggingface_hub to ``cache``: it reads its env vars once at import, so patch its constants too."""
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def logitlab_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$LOGITLAB_CACHE``: revisions must come from the HF cache, not from an earlier test's copy."""
    cache = tmp_path / "logitlab-cache"
    monkeypatch.setenv("LOGITLAB_CACHE", str(cache))
    return cache


def _assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal structure and strings, floats equal to 1e-5."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, abs=1e-5), where
    else:
        assert a == b, where


def _per_checkpoint(row: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's numbers, without the spec it was loaded from."""
    return {k: v for k, v in row.items() if k != "checkpoint"}


def test_hub_revisions_match_local_folders(tiny_formation: tuple[Path, dict[str, Any]], tiny_toy: Path,
                                           hub_cache: Path, logitlab_cache: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every revision resolves, through its ref, to its own step's weights: numbers as from the folders."""
    _point_hub_at(monkeypatch, hub_cache, offline=True)
    _, local = tiny_formation
    steps = [s for s, _ in find_checkpoints(tiny_toy)]
    ckpts = hub_checkpoints(REPO, steps=list(reversed(steps)), revision_format="step{}")
    assert ckpts == [(s, f"{REPO}@step{s}") for s in steps]

    # A toy is summarised on one torch thread (see _threads_for), a hub revision of one as well.
    threads: list[int] = []
    real_summary = formation.checkpoint_summary
    monkeypatch.setattr(formation, "checkpoint_summary",
                        lambda *a, **kw: threads.append(torch.get_num_threads()) or real_summary(*a, **kw))
    out = tmp_path / "out"
    task = load_task(tiny_toy / "heldout-task.yaml")
    res = run_formation(ckpts, task, out, top_k_heads=2, model_name=REPO, heldout=True)
    assert threads == [1] * len(steps)
    assert json.loads((out / "results.json").read_text()) == res
    assert [c["checkpoint"] for c in res["checkpoints"]] == [spec for _, spec in ckpts]
    assert res["model"]["name"] == REPO
    # Every step's loss is far from every other's, so a revision resolved to another step's weights would show.
    losses = sorted(c["loss_mean"] for c in local["checkpoints"])
    assert min(b - a for a, b in zip(losses, losses[1:])) > 1e-3
    for hub_row, local_row in zip(res["checkpoints"], local["checkpoints"], strict=True):
        _assert_close(_per_checkpoint(local_row), _per_checkpoint(hub_row), f"step{hub_row['step']}")
    for k in ("top_heads", "switch_on", "ablation_heads", "ablation_switch_on"):
        _assert_close(local[k], res[k], k)
    assert sorted(p.name for p in (logitlab_cache / "revisions").iterdir()) == \
        sorted(f"logitlab-test--toy-gpt2@step{s}" for s in steps)

    # Re-running resumes: no revision is loaded again and the stored summaries are kept as they are.
    stored = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("step*.json")}
    loads: list[str] = []
    real_load = formation.load_checkpoint
    monkeypatch.setattr(formation, "load_checkpoint", lambda spec, **kw: loads.append(spec) or real_load(spec, **kw))
    again = run_formation(ckpts, task, out, top_k_heads=2, model_name=REPO, heldout=True)
    assert loads == [] and again["checkpoints"] == res["checkpoints"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("step*.json")} == stored


class NetworkUsed(Exception):
    """Raised instead of resolving a host name (not an OSError, so no client retries it)."""


def test_cached_revision_needs_no_network(tiny_toy: Path, hub_cache: Path, logitlab_cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in offline mode, a revision that is in the HF cache still loads without contacting the hub
    (with the hub unreachable, every request would otherwise be retried for minutes)."""
    from safetensors.torch import load_file
    _point_hub_at(monkeypatch, hub_cache, offline=False)
    hosts: list[str] = []

    def no_dns(host: Any, *args: Any, **kwargs: Any) -> Any:
        hosts.append(str(host))
        raise NetworkUsed(host)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t0 = time.perf_counter()
    model = load_checkpoint(f"{REPO}@step6")
    assert hosts == [] and time.perf_counter() - t0 < 60
    assert model.to_dict()["n_layers"] > 0
    fetched = load_file(logitlab_cache / "revisions" / "logitlab-test--toy-gpt2@step6" / "model.safetensors")
    original = load_file(tiny_toy / "step6" / "model.safetensors")
    assert fetched.keys() == original.keys()
    assert all(fetched[k].equal(original[k]) for k in original)  # step6's weights, not another step's


def _cli(args: list[str], hub: Path, home: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m logitlab ARGS`` with the hub cache and offline mode set the way a user would set them."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf-home"),
           "LOGITLAB_CACHE": str(home / "logitlab-cache"), "COLUMNS": "200"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "logitlab", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    return proc, time.perf_counter() - t0


def test_cli_formation_over_hub_revisions(tiny_formation: tuple[Path, dict[str, Any]], tiny_toy: Path,
                                          hub_cache: Path, tmp_path: Path) -> None:
    """``logitlab formation --model`` on cached revisions: results and report; a missing one, a clear error."""
    out = tmp_path / "out"
    base = ["formation", "--model", REPO, "--revision-format", "step{}", "--task", str(tiny_toy / "heldout-task.yaml"),
            "--out", str(out), "--top-k", "2"]
    proc, _ = _cli([*base, "--steps", "0,6,40"], hub_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert (out / "report.html").is_file()
    assert res["model"]["name"] == REPO and res["heldout"] is True
    assert [c["checkpoint"] for c in res["checkpoints"]] == [f"{REPO}@step{s}" for s in (0, 6, 40)]
    # Same final checkpoint, so the same top heads: each step's numbers are those of its local folder.
    local = {c["step"]: c for c in tiny_formation[1]["checkpoints"]}
    for row in res["checkpoints"]:
        _assert_close(_per_checkpoint(local[row["step"]]), _per_checkpoint(row), f"step{row['step']}")

    proc, seconds = _cli([*base, "--steps", "0,7"], hub_cache, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "'step7'" in message and "not in the local Hugging Face cache" in message
    assert "Traceback" not in proc.stderr
    assert seconds < 60  # offline: no retries against the hub
