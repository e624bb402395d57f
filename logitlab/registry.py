"""The battery's analyses as registered units: one declaration each, read by everything that lists analyses.

An :class:`Analysis` names what an analysis is to the rest of logitlab: its name (``--analyses``), the
``results.json`` key(s) it writes with their results types, the function that computes them from the run
(:class:`logitlab.analyses.context.RunContext`), the earlier analyses it reads, whether it runs by default (or
always) and its settings, a small frozen dataclass. From these declarations and nothing else:

- :func:`logitlab.battery.run_battery` runs the analyses, in registration order;
- :class:`logitlab.config.RunConfig` gets one field per setting (a grid file's options, ``config.json``);
- ``logitlab run`` / ``logitlab circuit`` get the settings marked with :func:`setting` ``(flag=...)`` as options,
  and ``--analyses`` its choices;
- the results schema (:func:`logitlab.results.results_type`) gets each key, and its config section each setting.

The built-in analyses are declared in :mod:`logitlab.analyses.registered`. This module is a leaf: it imports
nothing from logitlab at run time, so any module may register an analysis without an import cycle.

Example (a toy analysis registered from a test; ``MeanLogit`` is a results TypedDict):
    >>> register(Analysis(name="mean_logit", sections={"mean_logit": MeanLogit},
    ...                   compute=lambda ctx: {"mean_logit": {"value": float(ctx.run.logits.mean())}}))
    >>> unregister("mean_logit")
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Analysis", "register", "unregister", "get", "analyses", "selectable", "default_selection", "generation",
           "setting", "cli_settings", "settings_of",
           "set_run_config", "run_config"]

S = TypeVar("S")
# The argument is a logitlab.analyses.context.RunContext; it is typed Any here because that module imports this
# one (the registry stays a leaf, for the type checker too).
Compute = Callable[[Any], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Analysis:
    """One analysis of the battery, as the CLI, the config, the schema and the battery see it."""

    name: str
    """its name in ``--analyses`` and ``config.analyses`` (an identifier)"""
    sections: Mapping[str, Any]
    """each ``results.json`` key it may write → its results type (a TypedDict, or an ``Annotated`` one with a
    description), in the order written"""
    compute: Compute
    """run context → the sections it wrote (a subset of ``sections``; None or empty: it had nothing to write,
    e.g. no clean/corrupted pair); it may keep a value for later analyses with ``ctx.keep(name, value)``"""
    needs: tuple[str, ...] = ()
    """earlier analyses whose kept value it reads when they ran (``ctx.value(name)`` is None otherwise)"""
    default: bool = True
    """whether ``--analyses default`` (and ``RunConfig()``) selects it"""
    always: bool = False
    """whether it runs in every battery: not selectable, and its sections are required in ``results.json``"""
    settings: type | None = None
    """its settings: a frozen dataclass whose ``__post_init__`` validates; each field is a RunConfig option"""
    group: str | None = None
    """the RunConfig field that holds its settings as a nested dataclass (shared by analyses naming the same
    group, the one named like the group first); None: each setting is a RunConfig field of its own"""
    summary: str = ""
    """what it computes, in a few words (``--analyses`` help)"""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name) or self.name in ("default", "all"):
            raise ValueError(f"analysis name {self.name!r}: lower-case letters, digits and _, not default/all")
        if not self.sections:
            raise ValueError(f"analysis {self.name!r} declares no results section")
        if self.settings is not None:
            params = getattr(self.settings, "__dataclass_params__", None)
            if params is None or not params.frozen:
                raise ValueError(f"analysis {self.name!r}: settings must be a frozen dataclass")
        if self.group is not None and self.settings is None:
            raise ValueError(f"analysis {self.name!r}: a settings group without settings")


_registry: dict[str, Analysis] = {}
_generation = [0]
_run_config: list[type] = []  # logitlab.config.RunConfig, once built from the registry


def register(analysis: Analysis) -> Analysis:
    """Add ``analysis`` after the ones registered so far (the battery runs them in this order).

    Raises:
        ValueError: its name or one of its keys is taken, or it needs an analysis not registered before it.
    """
    if analysis.name in _registry:
        raise ValueError(f"an analysis named {analysis.name!r} is already registered")
    taken = {key: a.name for a in _registry.values() for key in a.sections}
    for key in analysis.sections:
        if key in taken:
            raise ValueError(f"results key {key!r} of {analysis.name!r} is already written by {taken[key]!r}")
    missing = [n for n in analysis.needs if n not in _registry]
    if missing:
        raise ValueError(f"analysis {analysis.name!r} needs {missing[0]!r}, which is not registered before it")
    if analysis.settings is not None:
        names = {f.name for a in _registry.values() if a.settings is not None and a.group == analysis.group
                 for f in dataclasses.fields(a.settings)}
        clash = [f.name for f in dataclasses.fields(analysis.settings) if f.name in names]
        if clash:
            raise ValueError(f"setting {clash[0]!r} of {analysis.name!r} is already a setting of another analysis")
    _registry[analysis.name] = analysis
    _generation[0] += 1
    return analysis


def unregister(name: str) -> None:
    """Remove the analysis ``name`` (a test's toy analysis, say); refused while a later one needs it."""
    users = [a.name for a in _registry.values() if name in a.needs]
    if users:
        raise ValueError(f"analysis {users[0]!r} needs {name!r}")
    del _registry[name]
    _generation[0] += 1


def get(name: str) -> Analysis:
    """The analysis registered as ``name`` (KeyError if none)."""
    return _registry[name]


def analyses() -> tuple[Analysis, ...]:
    """Every registered analysis, in run order."""
    return tuple(_registry.values())


def selectable() -> tuple[str, ...]:
    """The names ``--analyses`` / ``RunConfig.analyses`` accept, in run order."""
    return tuple(a.name for a in _registry.values() if not a.always)


def default_selection() -> tuple[str, ...]:
    """What runs unless told otherwise, besides the always-run analyses."""
    return tuple(a.name for a in _registry.values() if not a.always and a.default)


def generation() -> int:
    """A number that changes whenever the registry does (for caches of derived types)."""
    return _generation[0]


def setting(default: Any, doc: str, *, flag: str | None = None, help: str | None = None,  # noqa: A002
            commands: tuple[str, ...] = ("run",)) -> Any:
    """A settings field: its default and its meaning (``doc``: the config section's documentation).

    With ``flag`` (e.g. ``"--ig-steps"``) it is also an option of the CLI ``commands``, with ``help`` (``doc``
    if not given) as its help text and ``default`` as its default.
    """
    meta: dict[str, Any] = {"doc": doc}
    if flag is not None:
        meta.update(flag=flag, help=help or doc, commands=commands)
    return field(default=default, metadata=meta)


def cli_settings(command: str) -> list[tuple[Analysis, dataclasses.Field[Any]]]:
    """The settings that are options of the CLI ``command``, in run order, with the analysis declaring each."""
    return [(a, f) for a in _registry.values() if a.settings is not None
            for f in dataclasses.fields(a.settings) if command in f.metadata.get("commands", ())]


def settings_of(config: Any, kind: type[S]) -> S:
    """The settings ``kind`` (a registered analysis's settings dataclass) as ``config`` (a RunConfig) holds them;
    their defaults for fields ``config`` lacks (an analysis registered after RunConfig was built)."""
    owner = next((a for a in _registry.values() if a.settings is kind), None)
    if owner is None:
        raise ValueError(f"{kind.__name__} are not the settings of a registered analysis")
    source = getattr(config, owner.group, None) if owner.group is not None else config
    have = {f.name for f in dataclasses.fields(source)} if dataclasses.is_dataclass(source) else set()
    wanted = dataclasses.fields(owner.settings) if owner.settings is not None else ()
    return kind(**{f.name: getattr(source, f.name) for f in wanted if f.name in have})


def set_run_config(kind: type) -> None:
    """Record the RunConfig dataclass built from the registry (:mod:`logitlab.config` calls this once)."""
    _run_config[:] = [kind]
    _generation[0] += 1


def run_config() -> type:
    """The RunConfig dataclass (its fields: the run's own and every analysis's settings)."""
    if not _run_config:
        raise RuntimeError("logitlab.config has not built RunConfig yet (import logitlab first)")
    return _run_config[0]
