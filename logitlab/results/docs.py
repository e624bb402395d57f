"""The key table of ``docs/results.md``, generated from the JSON Schema (``logitlab schema --markdown``).

One row per key, nested keys dotted (``[]`` marks a list's items), with its type and its documentation (the
field's docstring, or the description its registration gives it).
"""

from __future__ import annotations

import json
from typing import Any

from logitlab.results.schema import results_schema

__all__ = ["results_table"]

_PIPE = "\\|"  # a literal | inside a markdown table cell


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _type_name(node: dict[str, Any], defs: dict[str, Any]) -> str:
    node = _resolve(node, defs)
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "anyOf" in node:
        return " | ".join(_type_name(n, defs) for n in node["anyOf"])
    t = node.get("type")
    if t == "array":
        return f"list[{_type_name(node['items'], defs)}]"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"dict[str, {_type_name(node['additionalProperties'], defs)}]"
    return {"number": "float", "integer": "int", "string": "str", "boolean": "bool", "null": "null"}.get(t, "object")


def _objects(node: dict[str, Any], defs: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """The object schemas under ``node`` (itself, its list items, its non-null alternatives), with their paths."""
    node = _resolve(node, defs)
    if "properties" in node:
        return [(path, node)]
    if node.get("type") == "array":
        return _objects(node["items"], defs, path + "[]")
    return [o for alt in node.get("anyOf", []) for o in _objects(alt, defs, path)]


def _rows(obj: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    rows = []
    required = set(obj.get("required", []))
    for name, prop in obj["properties"].items():
        key = f"{path}.{name}" if path else name
        resolved = _resolve(prop, defs)
        text = " ".join(str(prop.get("description") or resolved.get("description") or "").split())
        if name not in required:
            text = f"*optional* — {text}" if text else "*optional*"
        rows.append(f"| `{key}` | {_type_name(prop, defs).replace('|', _PIPE)} | {text.replace('|', _PIPE)} |")
        for sub_path, sub in _objects(prop, defs, key):
            rows += _rows(sub, defs, sub_path)
    return rows


def results_table(kind: type | None = None) -> str:
    """The key table of ``docs/results.md``, generated from the schema: one row per key, nested keys dotted
    (``[]`` marks a list's items)."""
    schema = results_schema(kind)
    lines = ["| key | type | meaning |", "|---|---|---|", *_rows(schema, schema["$defs"], "")]
    return "\n".join(lines) + "\n"

