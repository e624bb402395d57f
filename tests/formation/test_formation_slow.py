"""End to end: the default toy run learns the task, and the behaviour shows up on held-out prompts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from logitlab.formation.formation import find_checkpoints, run_formation
from logitlab.formation.report import write_formation_report
from logitlab.formation.toy import ToyConfig, train_toy
from logitlab.task import load_task


@pytest.mark.slow
def test_default_toy_forms_a_circuit_that_generalises(tmp_path: Path) -> None:
    if os.environ.get("LOGITLAB_SKIP_SLOW") == "1":
        pytest.skip("LOGITLAB_SKIP_SLOW=1")
    t0 = time.perf_counter()
    paths = train_toy(tmp_path / "toy", ToyConfig())
    train_s = time.perf_counter() - t0
    assert len(paths) >= 15 and paths[0].name == "step0"
    task = load_task(tmp_path / "toy" / "heldout-task.yaml")
    t1 = time.perf_counter()
    res = run_formation([(s, str(p)) for s, p in find_checkpoints(tmp_path / "toy")], task, tmp_path / "out",
                        heldout=True)
    formation_s = time.perf_counter() - t1
    write_formation_report(tmp_path / "out", res)
    first, last = res["checkpoints"][0], res["checkpoints"][-1]
    summary = {"train_s": round(train_s, 1), "formation_s": round(formation_s, 1),
               "first": [first["step"], first["logit_diff_mean"], first["accuracy"]],
               "last": [last["step"], last["logit_diff_mean"], last["accuracy"]],
               "switch_on": res["switch_on"], "ablation_switch_on": res["ablation_switch_on"]}
    print(json.dumps(summary))  # shown with -s: the numbers quoted in the docs
    # Held-out names × held-out templates: from chance at initialisation to clearly right.
    assert abs(first["logit_diff_mean"]) < 0.5
    assert last["logit_diff_mean"] > 5.0 and last["accuracy"] == 1.0
    # The head whose ablation matters most at the end did nothing at the start.
    main = res["ablation_heads"][0]
    assert abs(main["final_ablation_effect"]) > 1.0
    assert abs(first["zero_ablation_effect"][main["layer"]][main["head"]]) < 0.1
    assert res["ablation_switch_on"][0]["step"] is not None
    assert train_s < 180
