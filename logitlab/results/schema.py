"""The schema of ``results.json``, derived from the registry; validation, and loading with migration.

:func:`results_type` builds the TypedDict a battery's ``results.json`` must match: the header (schema version,
logitlab version, the run's config, model and task), then every registered analysis's keys with their types
(:mod:`logitlab.registry`), required for the always-run analyses. Its config section is derived from
:class:`logitlab.config.RunConfig` (itself derived from the analyses' settings), so a setting or an analysis is
written once. :func:`validate_results` checks a dict against it with pydantic in strict mode: an unknown key, a
missing key, a wrong type or a non-finite number is refused with the path of the first offending value
(``head_ablation.zero.loss[3][1]``): 0.06 ms for the built-in model's results, after building the validator once
per registry state (about 0.1 s). :func:`load_results` reads a file, migrates an older schema version once or
refuses it naming the version it needs, then validates.

Example:
    >>> results = load_results("logitlab-out/results.json")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

import logitlab.registry as registry
from logitlab.errors import LogitlabError
from logitlab.results._base import SCHEMA_VERSION, section
from logitlab.results.core import ModelSection, TaskSection

__all__ = ["results_type", "config_section_type", "results_schema", "validate_results", "load_results",
           "MIGRATIONS"]


def _typed(name: str, fields: dict[str, Any], doc: str) -> type:
    """A strict results TypedDict built from ``fields`` (its docstring: ``doc``)."""
    kind = TypedDict(name, fields)  # type: ignore[misc]  # built at run time from the registry
    kind.__doc__ = doc
    return section(kind)


def _doc(kind: Any, text: str | None) -> Any:
    return Annotated[kind, Field(description=text)] if text else kind


def _config_field(f: dataclasses.Field[Any], kind: Any) -> Any:
    """The config section's type of RunConfig field ``f`` (of type ``kind``), with its documentation."""
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        group = {g.name: _config_field(g, hints[g.name]) for g in dataclasses.fields(kind)}
        members = sorted((a for a in registry.analyses() if a.group == f.name), key=lambda a: a.name != f.name)
        names = " and ".join(a.name.replace("_", " ") for a in members)
        return _typed(getattr(kind, "__name__", f.name), group, f"Settings of {names} (`RunConfig.{f.name}`).")
    if f.name == "analyses":
        kind = list[Literal[registry.selectable()]]  # type: ignore[misc, valid-type]
    return _doc(kind, f.metadata.get("doc"))


@functools.cache
def _config_section(generation: int) -> type:
    del generation  # the cache key: the analyses' names are part of the type
    run_config = registry.run_config()
    hints = typing.get_type_hints(run_config)
    fields = {f.name: _config_field(f, hints[f.name]) for f in dataclasses.fields(run_config)}
    return _typed("ConfigSection", fields,
                  "The run's full configuration (`logitlab.RunConfig`), also written as `config.json`.")


def config_section_type() -> type:
    """The TypedDict of ``results.json``'s ``config`` (and ``config.json``): :class:`logitlab.config.RunConfig`'s
    fields, its settings groups as nested objects, ``analyses`` limited to the registered names."""
    return _config_section(registry.generation())


@functools.cache
def _results(generation: int) -> type:
    fields: dict[str, Any] = {
        "schema_version": _doc(Literal[SCHEMA_VERSION], "the version of this schema"),
        "logitlab_version": _doc(str, "the package version that wrote the file"),
        "config": _config_section(generation), "model": ModelSection, "task": TaskSection,
    }
    for analysis in registry.analyses():
        for key, kind in analysis.sections.items():
            fields[key] = kind if analysis.always else NotRequired[kind]
    return _typed("Results", fields, "A battery run's `results.json`.")


def results_type() -> type:
    """The TypedDict of a battery's ``results.json`` as the registry stands now (cached until it changes)."""
    return _results(registry.generation())


@functools.cache
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _kind(kind: type | None) -> type:
    from_static = kind is not None and kind.__name__ == "Results" and kind.__module__ == "logitlab.results"
    return results_type() if kind is None or from_static else kind


def _strip_titles(node: Any) -> Any:
    """The schema without pydantic's generated ``title`` s (names of properties are kept)."""
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "title" and isinstance(v, str):
            continue
        if k in ("properties", "$defs"):
            out[k] = {name: _strip_titles(s) for name, s in v.items()}
        else:
            out[k] = _strip_titles(v)
    return out


def results_schema(kind: type | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json``, without titles and with ``$defs`` sorted by name.

    Args:
        kind: None (or :class:`logitlab.results.Results`) for a battery's results as registered now, or
            :class:`logitlab.formation.schema.FormationResults`.
    """
    schema = _strip_titles(_adapter(_kind(kind)).json_schema())
    defs = schema.pop("$defs", {})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
            "$defs": {name: defs[name] for name in sorted(defs)}}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_results(obj: object, kind: type | None = None) -> None:
    """Check ``obj`` against the types of ``kind`` (default: a battery's results, :func:`results_type`).

    Raises:
        LogitlabError: naming the first offending path, e.g. ``logit_diff.per_prompt[2]: Input should be a
            valid number``, and how many other problems there are.
    """
    kind = _kind(kind)
    try:
        _adapter(kind).validate_python(obj)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise LogitlabError(f"results do not match the {kind.__name__} schema: {_path(first['loc'])}: "
                            f"{first['msg']}{more}",
                            "results.json written by another logitlab version? `logitlab schema` prints the "
                            "schema") from None


def _v5_to_v6(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 6 added the features analysis: its settings in ``config`` (here at their defaults, which a version-5
    run could not have changed) and the optional ``features`` section and soft-cap keys of ``dla``."""
    config = dict(obj.get("config") or {})
    for key, value in (("transcoders", ""), ("feature_prompts", 16), ("feature_top", 20)):
        config.setdefault(key, value)
    return {**obj, "config": config}


def _v6_to_v7(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 7 added screening and precision-targeted patching pairs: their settings in ``config``. A version-6
    run computed every ablation and patching cell exactly, on every generated pair: ``exact`` true, target 0."""
    config = dict(obj.get("config") or {})
    for key, value in (("exact", True), ("screen_top", 8), ("screen_sample", 8), ("patching_target", 0.0)):
        config.setdefault(key, value)
    return {**obj, "config": config}


def _v7_to_v8(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 8 added the features analysis's check of the graphs against the real model: ``feature_check`` in
    ``config``, 0 for an older run (it checked nothing), and the optional ``features.check``."""
    return {**obj, "config": {**(obj.get("config") or {}), "feature_check": 0}}


#: Migrations of an older results.json: ``MIGRATIONS[v]`` turns a version-``v`` dict into version ``v + 1``.
#: Versions before 5 changed sections' meaning (not only their keys), so they are refused.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {5: _v5_to_v6, 6: _v6_to_v7, 7: _v7_to_v8}


def load_results(source: str | Path | Mapping[str, Any]) -> Any:
    """A battery's results (a ``results.json`` path, or the dict read from one), migrated to this schema version
    once and validated (returned as :class:`logitlab.results.Results`).

    Raises:
        LogitlabError: the file cannot be read, is of a schema version that cannot be migrated (naming the version
            needed), or does not match the schema (naming the first offending path).
    """
    if isinstance(source, Mapping):
        obj, where = dict(source), "results"
    else:
        where = str(source)
        try:
            obj = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LogitlabError(f"cannot read {where}: {getattr(e, 'strerror', None) or e}") from e
        if not isinstance(obj, dict):
            raise LogitlabError(f"{where} is not a logitlab results.json (not a JSON object)")
    version = obj.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise LogitlabError(f"{where} has no schema_version: not a battery's results.json",
                            f"this logitlab reads schema version {SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise LogitlabError(f"{where} is of schema version {version}, newer than this logitlab's "
                            f"{SCHEMA_VERSION}", "update logitlab to read it")
    while version < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(version)
        if migrate is None:
            raise LogitlabError(f"{where} is of schema version {version}; this logitlab reads version "
                                f"{SCHEMA_VERSION}" + (f" (and migrates from {min(MIGRATIONS)})" if MIGRATIONS else ""),
                                "run the battery again (`logitlab run`) to write it in the current version")
        obj = migrate(obj)
        version += 1
        obj["schema_version"] = version
    validate_results(obj)
    return obj
