"""Fixtures of the formation tests: one tiny toy training run and its formation results, shared per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from logitlab.formation.toy import ToyConfig

# A few dozen steps: enough for distinct checkpoints, far too few to learn the task (that is the slow test).
TINY = ToyConfig(steps=40, n_checkpoints=6, n_sentences=2000, batch_size=16)


@pytest.fixture(scope="session")
def tiny_config() -> ToyConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy folder: checkpoints step0 … step40, task files and toy.json (read-only: copy before mutating)."""
    from logitlab.formation.toy import train_toy
    out = tmp_path_factory.mktemp("toy") / "toy"
    train_toy(out, TINY)
    return out


@pytest.fixture(scope="session")
def tiny_formation(tiny_toy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """run_formation on the tiny toy's checkpoints and held-out task: (out folder, results)."""
    from logitlab.formation.formation import find_checkpoints, run_formation
    from logitlab.task import load_task
    out = tmp_path_factory.mktemp("formation")
    ckpts = [(s, str(p)) for s, p in find_checkpoints(tiny_toy)]
    return out, run_formation(ckpts, load_task(tiny_toy / "heldout-task.yaml"), out, top_k_heads=2, heldout=True)
