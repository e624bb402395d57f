"""The coverage table in docs/models.md is the one generated from the test suite's collected tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("coverage_table", ROOT / "benchmarks" / "coverage_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_docs_table_is_the_generated_one() -> None:
    gen = _generator()
    doc = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    want = gen.table()
    assert gen.current(doc) == want, ("docs/models.md's coverage table differs from the test suite's: run "
                                      "python benchmarks/coverage_table.py --write\n" + want)


def test_cells_follow_the_collected_tests() -> None:
    """On made-up node ids: a column is ✓ only when all of its tests run on the family, partial checks are named."""
    gen = _generator()
    ids = ["tests/unit/test_runner.py::test_runner_matches_hf_and_bridge[gpt2]",
           "tests/unit/test_invariants.py::test_dla_reconstructs_and_components_sum[gpt2]",  # heads test missing
           "tests/unit/test_circuit.py::test_graph_forward_unpatched_and_fully_patched[gpt2]",
           "tests/unit/test_circuit.py::test_edge_scores_are_the_edge_derivative[gpt2]",
           "tests/unit/test_moe.py::test_gradients_match_finite_differences[olmoe]",
           "tests/unit/test_invariants.py::test_ablation_sweep_equals_one_forward_per_head[opt-zero]",
           "tests/unit/test_direct_load.py::test_direct_weights_equal_the_bridge_path[default-gemma3]"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in gen.table(ids).splitlines()[2:]}
    assert rows["`gpt2`"] == ["✓", "–", "–", "–", "✓ except IG completeness", "–", "–"]
    assert rows["`olmoe`"] == ["–", "–", "–", "✓", "–", "–", "–"]
    assert rows["`gemma3_text`"] == ["–", "–", "–", "–", "–", "–", "✓"]
    assert "| `opt` | fallback |" in gen.table(ids)  # a kind outside the staged allow-list
