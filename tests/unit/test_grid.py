"""``logitlab grid`` on tiny models: the grid file, sequential and Ray execution, resuming, failures, memory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from logitlab.cli import main
from logitlab.errors import LogitlabError
from logitlab.grid import check_memory, estimate_memory, grid_from_dict, run_grid
from logitlab.grid.job import Job, run_cell
from logitlab.grid.memory import MemoryEstimate
from logitlab.grid.progress import LOADING, WRITING, CellProgress
from logitlab.grid.spec import OPTION_KEYS
from tests.tiny import TASK_YAML, make_model_folder

RESULT_FILES = {"results.json", "config.json", "tables", "report.html", "log.txt", "cell.json"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two tiny models (GPT-2, grouped-KV Llama), the tiny task, and a private logitlab cache."""
    root = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOGITLAB_CACHE", str(root / "cache"))  # set before Ray starts: its workers inherit it
        models = {k: make_model_folder(k, root / k) for k in ("gpt2", "llama_gqa")}
        task = root / "task.yaml"
        task.write_text(TASK_YAML, encoding="utf-8")
        yield SimpleNamespace(root=root, models=models, task=task)


def _grid_dict(env: Any, *extra: Any) -> dict[str, Any]:
    d = {"name": "tiny", "models": [str(env.models["gpt2"]), {"model": str(env.models["llama_gqa"]), "name": "llama"},
                                    *extra],
         "tasks": [str(env.task)], "patching_pairs": 0}
    if "analyses" in OPTION_KEYS:  # the core battery only: fast cells (circuit analyses are tested elsewhere)
        d["analyses"] = ["attention", "ablation", "patching", "robustness"]
    return d


@pytest.fixture(scope="module")
def reference(env: Any) -> dict[str, Any]:
    """Each cell's results from a plain ``run_battery`` with the cell's config: one torch thread and autograd on,
    as in a job (and in ``logitlab run``; conftest turns autograd off, which changes ablations at 1e-6)."""
    from logitlab.battery import run_battery
    from logitlab.model.load import load_model
    from logitlab.task import load_task
    grid = grid_from_dict(_grid_dict(env), env.root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for cell in grid.cells:
            with torch.enable_grad():
                results = run_battery(load_model(cell.config.model), load_task(cell.config.task), cell.config)
            out[cell.name] = json.loads(json.dumps(results))
    finally:
        torch.set_num_threads(threads)
    return out


def _assert_progress(events: list[CellProgress], name: str, log: str, whole: bool = True) -> None:
    """A cell's progress reports: loading, then each battery step the job logged (same names and totals, in
    order), then writing; a counted step's done never passes its total. ``whole``: every report was delivered
    (in this process; on Ray the reports after the cell's end may be dropped)."""
    mine = [e for e in events if e.name == name]
    steps = [e.description for i, e in enumerate(mine) if i == 0 or mine[i - 1].description != e.description]
    logged = re.findall(r"logitlab\.grid\.cell: (.+) \((\d+) items\)$", log, flags=re.M)
    want = [LOADING, *(d for d, _ in logged), WRITING]
    assert len(logged) >= 2, f"{name}: the battery logged only {logged}"
    assert steps == (want if whole else want[:len(steps)]), f"{name}: reported {steps}, logged {want}"
    assert len(steps) >= (len(want) if whole else 3), f"{name}: only {steps} reported"
    totals = dict((d, int(n)) for d, n in logged)
    for e in mine:
        if e.description in totals:
            assert e.total == totals[e.description] and 0 <= e.done <= e.total, f"{name}: {e}"


def _assert_same(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    if got != want:
        diff = [k for k in want if got.get(k) != want[k]]
        pytest.fail(f"{where}: results differ from run_battery's in {diff}")


# ---------------------------------------------------------------------------------------------------------
# The grid file


@pytest.mark.parametrize("change, message", [
    ({"modles": ["gpt2"]}, "unknown key 'modles'"),
    ({"models": []}, "'models' is empty"),
    ({"tasks": []}, "'tasks' is empty"),
    ({"tasks": None}, "has no 'tasks'"),
    ({"dtype": "float64"}, "unknown dtype 'float64'"),
    ({"top_k": "ten"}, "top_k must be an integer"),
    ({"device_map": "auto"}, "device_map is not supported"),
    ({"device": "balanced"}, "would split a model across devices"),
])
def test_bad_grid_files_name_the_problem(env: Any, change: dict[str, Any], message: str) -> None:
    data = {**_grid_dict(env), **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(LogitlabError, match=message):
        grid_from_dict(data, env.root)


def test_device_auto_is_resolved_when_the_grid_is_read(env: Any) -> None:
    """A cell's config (and so its key and results) records the device it runs on, never "auto"."""
    cells = grid_from_dict({**_grid_dict(env), "device": "auto"}, env.root).cells
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert [c.config.device for c in cells] == [want] * len(cells)


def test_bad_axis_entries_and_duplicate_cells(env: Any) -> None:
    gpt2 = str(env.models["gpt2"])
    with pytest.raises(LogitlabError, match=r"models\[2\]: unknown key 'trust_remote_code'"):
        grid_from_dict(_grid_dict(env, {"model": gpt2, "trust_remote_code": True}), env.root)
    with pytest.raises(LogitlabError, match=r"duplicate cell: models\[2\] × tasks\[0\] repeats models\[0\] × tasks\[0\]"):
        grid_from_dict(_grid_dict(env, gpt2), env.root)
    with pytest.raises(LogitlabError, match="two cells would share the folder 'gpt2__tiny-pronouns'"):
        grid_from_dict(_grid_dict(env, {"model": gpt2, "dtype": "bfloat16"}), env.root)
    with pytest.raises(LogitlabError, match="set patching_pairs to different values"):
        grid_from_dict({**_grid_dict(env), "models": [{"model": gpt2, "patching_pairs": 1}],
                        "tasks": [{"task": str(env.task), "patching_pairs": 2}]}, env.root)
    with pytest.raises(LogitlabError, match="builtin has no checkpoints"):
        grid_from_dict({**_grid_dict(env), "models": ["builtin"], "checkpoints": [0, 10]}, env.root)
    with pytest.raises(LogitlabError, match="no task named 'no-such-task'"):
        grid_from_dict({**_grid_dict(env), "tasks": ["no-such-task"]}, env.root)
    # Options: the grid's, replaced by a model's own; relative paths are read from the grid file's folder.
    grid = grid_from_dict({"models": [{"model": "gpt2", "name": "g", "top_k": 3}], "tasks": ["task.yaml"],
                           "top_k": 5, "max_memory": 0.5}, env.root)
    (cell,) = grid.cells
    assert cell.config.model == str(env.models["gpt2"]) and cell.config.task == str(env.task)
    assert (cell.config.top_k, cell.config.max_memory, cell.name) == (3, 2**29, "g__tiny-pronouns")


def test_list_and_nested_options_follow_run_config(env: Any) -> None:
    """Options that are a tuple (a YAML list) or a settings dataclass (a YAML mapping) in RunConfig."""
    from dataclasses import fields, is_dataclass

    from logitlab.battery import RunConfig
    nested = [f for f in fields(RunConfig) if is_dataclass(f.default)]
    listed = [f for f in fields(RunConfig) if isinstance(f.default, tuple)]
    if not (nested or listed):
        pytest.skip("RunConfig has no list or nested options")
    for f in listed:
        (cell,) = grid_from_dict({**_grid_dict(env), "models": ["gpt2"], f.name: list(f.default)[:1]}, env.root).cells
        assert getattr(cell.config, f.name) == tuple(f.default)[:1]
        with pytest.raises(LogitlabError, match=f"{f.name} must be a list"):
            grid_from_dict({**_grid_dict(env), f.name: 3}, env.root)
    for f in nested:
        sub = fields(f.default)[0]
        (cell,) = grid_from_dict({**_grid_dict(env), "models": ["gpt2"], f.name: {sub.name: getattr(f.default, sub.name)}},
                                 env.root).cells
        assert getattr(cell.config, f.name) == f.default
        with pytest.raises(LogitlabError, match=f"{f.name}: unknown key 'nope'"):
            grid_from_dict({**_grid_dict(env), f.name: {"nope": 1}}, env.root)


def test_checkpoint_axis_takes_the_steps_of_a_training_folder(env: Any, tmp_path: Path) -> None:
    for step in (0, 10, 100):
        (tmp_path / "toy" / f"step{step}").mkdir(parents=True)
    grid = grid_from_dict({"models": [{"model": "toy", "checkpoints": [0, 100]}, str(env.models["gpt2"])],
                           "tasks": [str(env.task)]}, tmp_path)
    assert [(c.name, c.step) for c in grid.cells] == [
        ("toy__tiny-pronouns__step0", 0), ("toy__tiny-pronouns__step100", 100), ("gpt2__tiny-pronouns", None)]
    assert grid.cells[1].config.model == str(tmp_path / "toy" / "step100")
    with pytest.raises(LogitlabError, match=r"has no checkpoint for step\(s\) \[5\]"):
        grid_from_dict({"models": [{"model": "toy", "checkpoints": [5]}], "tasks": [str(env.task)]}, tmp_path)


def test_the_command_line_refuses_device_maps_and_reports_failed_cells(env: Any, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(json.dumps({"models": ["./no-such-model"], "tasks": [str(env.task)]}), encoding="utf-8")
    assert main(["grid", str(grid_file), "--device-map", "auto"]) == 2
    assert "--device-map is not supported" in capsys.readouterr().err
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "ray", None)  # as if ray were not installed
        assert main(["grid", str(grid_file), "--out", str(tmp_path / "no-ray"), "--ray", "local"]) == 2
        assert "--ray needs the package ray, which is not installed" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["grid", str(grid_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of 1 cells failed" in err and "Traceback" not in err
    # Not a terminal: the progress as lines (the device, each step of the running cell, the cells' count).
    assert "1 cells, sequential; device: cpu" in err
    assert f"no-such-model__tiny-pronouns: {LOADING}, at 0 s" in err
    assert "cells: 1 finished, 0 running, 0 left" in err
    doc = json.loads((out / "grid.json").read_text())
    (row,) = doc["cells"]
    assert row["status"] == "failed" and "does not exist" in row["error"]
    assert (out / row["folder"] / "log.txt").is_file() and (out / row["folder"] / "error.txt").is_file()
    assert not (out / "compare.html").exists(), "nothing finished, nothing to compare"


# ---------------------------------------------------------------------------------------------------------
# Memory


def test_memory_estimate_counts_parameters_and_refuses_what_cannot_fit(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM
    for kind, folder in env.models.items():
        est = estimate_memory(str(folder), "float32")
        n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(folder)).parameters())
        assert est is not None and est.n_params == n, f"{kind}: counted {est and est.n_params}, the model has {n}"
        assert est.host > est.runner_params * 4 and est.device == 0
    bf16 = estimate_memory(str(env.models["llama_gqa"]), "bfloat16")
    assert bf16 is not None and bf16.runner_params == bf16.n_params, "an untied unembedding is not counted twice"
    big = MemoryEstimate(model="big", n_params=10**12, runner_params=10**12, dtype="float32", cold_load=True,
                         host=2**50, device=0, source="test")
    with pytest.raises(LogitlabError, match=r"big needs an estimated 1048576.00 GiB of RAM, but [\d.]+ GiB are available"):
        check_memory(big, "cpu")
    # A job checks before loading: with (pretend) 1 KiB free, the cell fails with both numbers and loads nothing.
    monkeypatch.setattr("logitlab.grid.memory.memory_budget", lambda device: 1024)
    cell = grid_from_dict(_grid_dict(env), env.root).cells[0]
    t0 = time.perf_counter()
    outcome = run_cell(Job(cell, threads=1))
    assert not outcome.ok and "needs an estimated" in outcome.error and "0.00 GiB are available" in outcome.error
    assert set(outcome.files) == {"log.txt", "error.txt"} and b"memory estimate" in outcome.files["log.txt"]
    assert time.perf_counter() - t0 < 5


def test_gguf_parameters_are_read_from_the_tensor_table(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from logitlab.grid.memory import _gguf_count
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_token_list(["a", "bb", "<ccc>"])  # an array of strings: skipped element by element
    w.add_array("test.ints", [1, 2, 3])
    w.add_tensor("token_embd.weight", np.zeros((3, 8), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    count = _gguf_count(path)
    assert (count.n_params, count.embed, count.tied) == (3 * 8 + 8 * 8, 24, True)


def test_mxfp4_pairs_count_as_their_dequantised_tensors(tmp_path: Path) -> None:
    """gpt-oss's released experts: X_blocks (uint8, two 4-bit values a byte) and X_scales (uint8, one exponent per 32
    values) dequantise into X: X's parameters are twice the blocks' bytes; the scales are not parameters. The pair
    may be split across shards; a lone uint8 tensor counts as it is."""
    import torch
    from safetensors.torch import save_file

    from logitlab.model.memory import _safetensors_count
    E, rows, D = 2, 8, 64  # dequantised: (E, rows, D) = 1,024 values in D / 32 groups of 16 bytes
    save_file({"model.embed_tokens.weight": torch.zeros(10, D),
               "model.layers.0.mlp.experts.gate_up_proj_blocks": torch.zeros(E, rows, D // 32, 16, dtype=torch.uint8),
               "model.layers.0.mlp.experts.down_proj_blocks": torch.zeros(E, rows, D // 32, 16, dtype=torch.uint8),
               "model.layers.0.mlp.experts.down_proj_scales": torch.zeros(E, rows, D // 32, dtype=torch.uint8),
               "lone_blocks": torch.zeros(4, 16, dtype=torch.uint8)}, str(tmp_path / "a.safetensors"))
    save_file({"model.layers.0.mlp.experts.gate_up_proj_scales": torch.zeros(E, rows, D // 32, dtype=torch.uint8)},
              str(tmp_path / "b.safetensors"))
    count = _safetensors_count([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert count.n_params == 10 * D + 2 * E * rows * D + 4 * 16
    assert (count.embed, count.tied) == (10 * D, True)


# ---------------------------------------------------------------------------------------------------------
# Execution


def test_sequential_grid_equals_run_battery_resumes_and_skips(env: Any, reference: dict[str, Any]) -> None:
    grid = grid_from_dict(_grid_dict(env), env.root)
    out = env.root / "sequential"
    first, second = (c.name for c in grid.cells)

    def interrupted(job: Job):  # noqa: ANN202 - the second cell is interrupted (Ctrl-C) before it finishes
        if job.cell.name == second:
            raise KeyboardInterrupt
        return run_cell(job)

    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, out, threads=1, job=interrupted)
    doc = json.loads((out / "grid.json").read_text())
    assert [c["status"] for c in doc["cells"]] == ["done", "pending"]
    assert not (out / second).exists() and not list(out.glob(".*.tmp"))

    events: list[CellProgress] = []
    rows = run_grid(grid, out, threads=1, on_progress=events.append)
    assert [r.status for r in rows] == ["skipped", "done"]
    assert {e.name for e in events} == {second}, "only the running cell reports progress"
    _assert_progress(events, second, (out / second / "log.txt").read_text())
    for cell in grid.cells:
        folder = out / cell.name
        assert RESULT_FILES <= set(os.listdir(folder)), f"{cell.name}: {sorted(os.listdir(folder))}"
        _assert_same(json.loads((folder / "results.json").read_text()), reference[cell.name], cell.name)
    assert b"battery done" in (out / second / "log.txt").read_bytes()
    doc = json.loads((out / "grid.json").read_text())
    assert doc["counts"] == {"done": 1, "skipped": 1, "failed": 0, "pending": 0}
    assert doc["cells"][1]["seconds"] > 0 and doc["cells"][1]["error"] is None and doc["compare"] == "compare.html"
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert "gpt2" in html and "llama" in html

    calls: list[Job] = []
    rows = run_grid(grid, out, threads=1, job=lambda job: calls.append(job))  # type: ignore[func-returns-value]
    assert [r.status for r in rows] == ["skipped", "skipped"] and not calls, "a finished cell is never run again"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "ray", None)  # a finished grid's re-run with --ray starts no Ray (needs none)
        rows = run_grid(grid, out, ray="127.0.0.1:9", job=lambda job: calls.append(job))  # type: ignore[func-returns-value]
    assert [r.status for r in rows] == ["skipped", "skipped"] and not calls
    (out / first / "cell.json").write_text("{}")  # a damaged cell is run again
    rows = run_grid(grid, out, threads=1, job=lambda job: calls.append(job) or run_cell(job))
    assert [r.status for r in rows] == ["done", "skipped"] and [j.cell.name for j in calls] == [first]


def test_ray_grid_equals_run_battery_survives_a_killed_worker_and_reports_failures(
        env: Any, reference: dict[str, Any]) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'logitlab[ray]'): Ray grids untested")
    marker = env.root / "killed-once"

    def crash_once(job: Job):  # noqa: ANN202 - runs in a Ray worker (pickled by value)
        from logitlab.grid.job import run_cell as real
        if job.cell.model_label == "llama" and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), 9)  # the worker dies mid-job; Ray retries the task on a new worker
        return real(job)

    grid = grid_from_dict(_grid_dict(env, {"model": str(env.root / "no-such-model"), "name": "missing"}), env.root)
    out = env.root / "ray"
    # address="local": a new instance, never a cluster that RAY_ADDRESS or a stale /tmp/ray/ray_current_cluster names.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        events: list[CellProgress] = []
        rows = {r.name: r for r in run_grid(grid, out, ray="auto", job=crash_once, on_progress=events.append)}
        assert marker.is_file(), "the first attempt was meant to kill its worker"
        # Each cell's steps reach the driver through the progress actor (the killed attempt died before its first).
        for cell in grid.cells[:2]:
            _assert_progress(events, cell.name, (out / cell.name / "log.txt").read_text(), whole=False)
        assert [rows[c.name].status for c in grid.cells] == ["done", "done", "failed"]
        assert "does not exist" in (rows["missing__tiny-pronouns"].error or "")
        for cell in grid.cells[:2]:
            _assert_same(json.loads((out / cell.name / "results.json").read_text()), reference[cell.name], cell.name)
            assert "torch threads: 1" in (out / cell.name / "log.txt").read_text()
        doc = json.loads((out / "grid.json").read_text())
        assert doc["counts"] == {"done": 2, "skipped": 0, "failed": 1, "pending": 0}
        assert doc["execution"] == "ray auto" and (out / "compare.html").is_file()
        again = run_grid(grid, out, ray="auto", job=crash_once)
        assert [r.status for r in again] == ["skipped", "skipped", "failed"]
    finally:
        ray.shutdown()


def test_grid_joins_a_ray_cluster_started_elsewhere(env: Any, reference: dict[str, Any], tmp_path: Path) -> None:
    """`ray start --head` in its own processes (as on a cluster's head node), then `logitlab grid --ray ADDRESS`
    from another process: the driver joins the cluster, the cluster's workers run the cells, and the cells equal
    run_battery; the cluster outlives the driver."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'logitlab[ray]'): Ray grids untested")
    import signal
    import socket
    import subprocess
    ray_exe = Path(sys.executable).parent / "ray"
    if not ray_exe.is_file():
        pytest.skip(f"no ray command beside {sys.executable}")
    with socket.socket() as s:  # a free port for the head's GCS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    # Token authentication off at both ends: with it on, a head that finds ~/.ray/auth_token demands the token while
    # `ray status` does not send it.
    proc_env = {**os.environ, "LOGITLAB_CACHE": str(env.root / "cache"), "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled"}
    # --block keeps the head in this process group, so the test stops exactly this cluster (`ray stop` would stop
    # every Ray instance on the machine).
    head = subprocess.Popen([str(ray_exe), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1"],
                            env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def status() -> subprocess.CompletedProcess:
        return subprocess.run([str(ray_exe), "status", f"--address={address}"], env=proc_env, capture_output=True,
                              text=True, timeout=120)

    try:
        deadline = time.monotonic() + 180
        while status().returncode != 0:
            assert head.poll() is None, f"ray start failed:\n{head.stdout.read()[-3000:] if head.stdout else ''}"
            assert time.monotonic() < deadline, "the Ray head did not come up within 180 s"
            time.sleep(2)
        grid_file = tmp_path / "grid.yaml"
        grid_file.write_text(json.dumps(_grid_dict(env)), encoding="utf-8")
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, "-m", "logitlab", "grid", str(grid_file), "--out", str(out),
                               "--ray", address], env=proc_env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"logitlab grid --ray {address} failed:\n{done.stderr[-3000:]}"
        doc = json.loads((out / "grid.json").read_text())
        assert doc["execution"] == f"ray {address}" and doc["counts"]["done"] == len(reference)
        for name, want in reference.items():
            _assert_same(json.loads((out / name / "results.json").read_text()), want, name)
            assert "torch threads: 1" in (out / name / "log.txt").read_text()  # 2 CPUs shared by 2 cells
        assert status().returncode == 0, "the cluster did not outlive the driver"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # whatever of the cluster is left in its process group
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        # `ray start` named this cluster as the machine's current one; a later plain ray.init() must not join it.
        current = Path("/tmp/ray/ray_current_cluster")
        with contextlib.suppress(OSError):
            if current.read_text().strip().endswith(f":{port}"):
                current.unlink()


def test_ray_local_starts_its_own_instance(env: Any, reference: dict[str, Any], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--ray local starts a new Ray instance on this machine even where Ray would otherwise join another cluster
    (RAY_ADDRESS set, or a stale /tmp/ray/ray_current_cluster), and stops it at the end."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'logitlab[ray]'): Ray grids untested")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # nothing listens there: joining it would fail
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(json.dumps(_grid_dict(env)), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["grid", str(grid_file), "--out", str(out), "--ray", "local", "--threads", "1"]) == 0
    assert not ray.is_initialized(), "the instance logitlab started is shut down at the end"
    doc = json.loads((out / "grid.json").read_text())
    assert doc["execution"] == "ray local" and doc["counts"]["done"] == len(reference)
    for name, want in reference.items():
        _assert_same(json.loads((out / name / "results.json").read_text()), want, name)
