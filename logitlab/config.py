"""A run's configuration, :class:`RunConfig`: a few fields of its own and every registered analysis's settings.

``RunConfig`` is a frozen dataclass built once, at import, from :mod:`logitlab.registry` (after the built-in
analyses of :mod:`logitlab.analyses.registered` are declared): ``model``, ``task``, ``device``, ``dtype``,
then each analysis's settings as fields of their own (``top_k``, ``patching_pairs``, …), ``max_memory`` and
``analyses``, then each settings group as one nested dataclass (``circuit``: :class:`CircuitConfig`, holding
circuit discovery's and path patching's settings). ``asdict(config)`` is ``config.json``; a grid file's options
are its fields. An analysis registered after this import runs with its settings' defaults.

Example:
    >>> config = RunConfig(patching_pairs=0, circuit=CircuitConfig(ig_steps=2))
    >>> settings_of(config, PatchingSettings).patching_pairs
    0
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import fields, make_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import logitlab.registry as registry
from logitlab.analyses import registered as _registered  # noqa: F401  # declares the built-in analyses
from logitlab.errors import LogitlabError
from logitlab.registry import settings_of

__all__ = ["RunConfig", "CircuitConfig", "ANALYSES", "DEFAULT_ANALYSES", "settings_of"]

#: Analyses ``RunConfig.analyses`` can select when logitlab is imported (:func:`logitlab.registry.selectable`
#: is the live list); the always-run ones cost one forward pass.
ANALYSES = registry.selectable()
#: What ``logitlab run`` runs unless told otherwise: everything but circuit discovery (``--circuit``).
DEFAULT_ANALYSES = registry.default_selection()

# RunConfig's own fields (name, type, default, documentation), before and after the analyses' settings.
_HEAD: list[tuple[str, Any, Any, str]] = [
    ("model", str, "builtin", "`--model`"),
    ("task", str, "pronouns", "`--task`: a built-in task's name or a task file"),
    ("device", str, "cpu", "`--device`"),
    ("dtype", Literal["float32", "bfloat16"], "float32", "`--dtype`"),
]
_TAIL: list[tuple[str, Any, Any, str]] = [
    ("max_memory", int | None, None, "the sweeps' memory budget in bytes (null: half of the free memory)"),
    ("analyses", tuple[str, ...], DEFAULT_ANALYSES,
     "the analyses run besides the always-run ones (`--analyses`, `--circuit`)"),
]


def _settings_fields(kind: type) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(kind)
    return [(f.name, hints[f.name], dataclasses.field(default=f.default, metadata=f.metadata)) for f in fields(kind)]


def _check_core(config: Any) -> None:
    unknown = [a for a in config.analyses if a not in registry.selectable()]
    if unknown:
        raise LogitlabError(f"unknown analysis {unknown[0]!r}", f"choose from {', '.join(registry.selectable())}")
    if config.max_memory is not None and config.max_memory <= 0:
        raise LogitlabError("max_memory must be positive", "give the sweep memory budget in GiB, e.g. --max-memory 4")
    if config.dtype not in ("float32", "bfloat16"):
        raise LogitlabError(f"unknown dtype {config.dtype!r}", "choose float32 or bfloat16")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", config.device):
        raise LogitlabError(f"unknown device {config.device!r}", "use cpu, cuda or cuda:N")


def _validator(parts: list[type], core: bool) -> Any:
    """A ``__post_init__`` that builds each analysis's settings from the fields (their own checks run)."""
    def __post_init__(self: Any) -> None:  # noqa: N807
        for kind in parts:
            kind(**{f.name: getattr(self, f.name) for f in fields(kind)})
        if core:
            _check_core(self)
    return __post_init__


def _build() -> tuple[type, dict[str, type]]:
    flat: list[type] = []
    groups: dict[str, list[registry.Analysis]] = {}
    for a in registry.analyses():
        if a.settings is not None:
            (flat.append(a.settings) if a.group is None else groups.setdefault(a.group, []).append(a))
    group_types: dict[str, type] = {}
    for name, members in groups.items():
        members.sort(key=lambda a: a.name != name)  # the analysis named like the group first
        kinds = [a.settings for a in members if a.settings is not None]
        cls_name = "".join(w.title() for w in name.split("_")) + "Config"
        group_types[name] = make_dataclass(
            cls_name, [f for k in kinds for f in _settings_fields(k)], frozen=True,
            namespace={"__post_init__": _validator(kinds, core=False),
                       "__doc__": f"Settings of {', '.join(a.name for a in members)} (RunConfig.{name})."})
    group_types[name].__module__ = __name__
    own = [(n, t, dataclasses.field(default=d, metadata={"doc": doc})) for n, t, d, doc in _HEAD]
    tail = [(n, t, dataclasses.field(default=d, metadata={"doc": doc})) for n, t, d, doc in _TAIL]
    groups_f = [(n, t, dataclasses.field(default=t(), metadata={"group": True})) for n, t in group_types.items()]
    run_config = make_dataclass(
        "RunConfig", own + [f for k in flat for f in _settings_fields(k)] + tail + groups_f, frozen=True,
        namespace={"__post_init__": _validator(flat, core=True),
                   "__doc__": "Everything that decides a run's numbers (written next to the results as "
                              "config.json): the model, task, device, dtype, every registered analysis's "
                              "settings, the sweeps' memory budget and the analyses to run."})
    run_config.__module__ = __name__
    return run_config, group_types


if TYPE_CHECKING:  # what a type checker sees: the run's own fields typed, the settings (derived) as Any
    class RunConfig:
        __dataclass_fields__: ClassVar[dict[str, Any]]
        model: str
        task: str
        device: str
        dtype: Literal["float32", "bfloat16"]
        max_memory: int | None
        analyses: tuple[str, ...]

        def __init__(self, **fields: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...

    class CircuitConfig:
        __dataclass_fields__: ClassVar[dict[str, Any]]

        def __init__(self, **fields: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...
else:
    RunConfig, _GROUPS = _build()
    CircuitConfig = _GROUPS["circuit"]
    registry.set_run_config(RunConfig)

