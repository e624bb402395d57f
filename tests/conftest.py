from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from tests.tiny import KINDS, TASK_YAML, make_model_folder

torch.set_grad_enabled(False)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_task_file(tiny_dir: Path) -> Path:
    path = tiny_dir / "task.yaml"
    path.write_text(TASK_YAML, encoding="utf-8")
    return path


_models: dict[str, object] = {}


@pytest.fixture(scope="session", params=KINDS)
def tiny_model(request: pytest.FixtureRequest, tiny_dir: Path):  # noqa: ANN201
    """Each architecture kind, loaded through logitlab's own loader (read-only: do not mutate)."""
    from logitlab.model.load import load_model
    kind = request.param
    if kind not in _models:
        folder = make_model_folder(kind, tiny_dir / kind)
        _models[kind] = load_model(str(folder), cache=False)
    return _models[kind]


@pytest.fixture(scope="session")
def builtin_model():  # noqa: ANN201
    """The built-in Gemma-3-270M (slow: dequantised once into the user cache)."""
    if os.environ.get("LOGITLAB_SKIP_SLOW") == "1":
        pytest.skip("LOGITLAB_SKIP_SLOW=1")
    from logitlab.model.load import load_model
    return load_model("builtin")
