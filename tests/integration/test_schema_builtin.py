"""The built-in model's whole battery output matches the results types, and validating it is cheap."""

from __future__ import annotations

import json
import time

import pytest

import logitlab.registry as registry
from logitlab.battery import RunConfig, run_battery
from logitlab.results import results_schema, validate_results
from logitlab.task import load_task

pytestmark = pytest.mark.slow


def test_builtin_battery_output_validates(builtin_model) -> None:  # noqa: ANN001
    results = run_battery(builtin_model, load_task("pronouns"), RunConfig())
    validate_results(results)
    validate_results(json.loads(json.dumps(results, ensure_ascii=False, allow_nan=False)))
    off = {a.name for a in registry.analyses() if not a.always and not a.default}  # circuit, features
    keys = {k for a in registry.analyses() if a.name in off for k in a.sections}
    assert set(results) | keys == set(results_schema()["properties"]), "pronouns has pairs: every default section"
    assert results["head_attribution_detail"]["naive"] is not None, "Gemma-3 has post-attention norms"
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        validate_results(results)
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.05, f"validation takes {min(times) * 1e3:.1f} ms; write_results runs it on every run"
