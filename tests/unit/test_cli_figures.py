"""`--figures`: static PNG/SVG export is opt-in; the HTML report is always written."""

from pathlib import Path

import pytest

from logitlab.cli import main
from logitlab.report.write import find_browser
from tests.tiny import make_model_folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder("gpt2", tmp_path_factory.mktemp("figs") / "gpt2")


def test_report_without_static_figures_by_default(gpt2_dir: Path, tiny_task_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", "--model", str(gpt2_dir), "--task", str(tiny_task_file), "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and not (out / "figures").exists()
    assert main(["report", str(out), "--figures", "jpeg"]) == 2, "an unknown format is a user error"
    if find_browser() is None:
        pytest.skip("no Chrome/Chromium for the static export")
    assert main(["report", str(out), "--figures", "png"]) == 0
    files = sorted(p.suffix for p in (out / "figures").iterdir())
    assert files and set(files) == {".png"}, f"--figures png writes PNG only: {set(files)}"
