"""What every results type shares: the strict pydantic configuration, the schema version, the array aliases.

A leaf module (it imports nothing from logitlab), so that the section modules, the analyses that produce them
and the formation schema all build on the same definitions.
"""

from __future__ import annotations

from pydantic import ConfigDict, with_config

__all__ = ["SCHEMA_VERSION", "section", "Matrix", "Cube", "MaybeMatrix", "MaybeCube", "Pair"]

SCHEMA_VERSION = 8  # of a battery's results.json; formation's is logitlab.formation.schema's

# Strict: a string "1" is not an int and a bool is not a number; int is accepted where a float is expected.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)
section = with_config(_STRICT)  # the decorator every results TypedDict carries

Matrix = list[list[float]]
Cube = list[list[list[float]]]
MaybeMatrix = list[list[float | None]]
MaybeCube = list[list[list[float | None]]]
Pair = list[float]
