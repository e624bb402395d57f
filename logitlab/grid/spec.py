"""The grid file: models × tasks (× checkpoints), each combination one independent cell.

A grid file is YAML with these keys (anything else is refused, naming the key)::

    name: pronoun-models                  # optional title of compare.html
    models:                               # each as `logitlab run --model` takes, or a mapping
      - builtin
      - {model: ./SmolLM2-135M-Instruct.Q4_1.gguf, name: smollm2, dtype: float32}
      - {model: ./toy, checkpoints: [0, 100, 1500]}           # step sub-folders of a training run
      - {model: EleutherAI/pythia-70m, revisions: [step1000, step143000]}
    tasks:                                # built-in task names or task files, or {task: ..., name: ...}
      - pronouns
      - {task: ./my-task.yaml, patching_pairs: 4}
    checkpoints: [0, 1500]                # optional: crossed with every model (or per model, as above)
    patching_pairs: 0                     # any other RunConfig option applies to every cell

Options are the fields of :class:`logitlab.battery.RunConfig` other than ``model`` and ``task``
(``max_memory`` in GiB, as ``--max-memory``). They may be set for the whole grid (top level), for a task or
for a model; a model's or task's own value replaces the grid's, and a model and a task that both set one
option to different values are refused. Relative paths are read from the grid file's folder. ``device: auto``
is resolved when the grid file is read (CUDA if this machine has it, else cpu), so each cell records its device.

Invariant: every cell has its own complete :class:`~logitlab.battery.RunConfig`, so a cell's numbers equal
those of ``run_battery`` with that config; two cells never share a config or a folder name.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from logitlab.battery import RunConfig
from logitlab.errors import LogitlabError
from logitlab.model.device import AUTO, resolve_device
from logitlab.task import Task, builtin_tasks, load_task

__all__ = ["Cell", "Grid", "load_grid", "grid_from_dict", "OPTION_KEYS"]

#: RunConfig fields a grid file may set (``model`` and ``task`` are the axes).
OPTION_KEYS = tuple(f.name for f in fields(RunConfig) if f.name not in ("model", "task"))
_DEFAULTS = {f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
             for f in fields(RunConfig)}
_TOP_KEYS = {"name", "models", "tasks", "checkpoints", "revisions", *OPTION_KEYS}
_MODEL_KEYS = {"model", "name", "checkpoints", "revisions", *OPTION_KEYS}
_TASK_KEYS = {"task", "name", *OPTION_KEYS}
_SPLIT_WORDS = {"balanced", "balanced_low_0", "sequential"}
_SPLIT_HINT = ("logitlab runs each model on one device (cpu, cuda or cuda:N): a model too large for one device "
               "cannot be analysed; see docs/scaling.md")


@dataclass(frozen=True)
class Cell:
    """One job of the grid: a full run configuration and where its results go."""

    name: str
    """the cell's folder under the grid's output folder"""
    config: RunConfig
    """what ``run_battery`` is called with (``config.model`` is the checkpoint to load)"""
    task: Task
    """the task, loaded once by the grid (workers need not see the task file)"""
    model_label: str
    """the model's name in tables and figures"""
    task_label: str
    step: int | None = None
    """the training step of a checkpoint cell"""
    revision: str | None = None
    """the hub revision of a revision cell"""

    def key(self) -> dict[str, Any]:
        """What identifies the cell's numbers: its config, the task's content and the model files' identity.

        A finished cell whose stored key differs (a changed task file, retrained weights) is run again.
        """
        return {"config": asdict(self.config), "task_sha256": _task_hash(self.task),
                "model": _fingerprint(self.config.model)}


@dataclass(frozen=True)
class Grid:
    """A parsed grid file."""

    name: str
    cells: tuple[Cell, ...]
    source: str


def _task_hash(task: Task) -> str:
    blob = json.dumps(asdict(task), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fingerprint(spec: str) -> dict[str, Any]:
    """Names, sizes and times of a local model's files (a retrained folder differs); a name stands for itself."""
    path = Path(spec)
    if path.is_file():
        st = path.stat()
        return {"spec": str(path.resolve()), "files": [[path.name, st.st_size, st.st_mtime_ns]]}
    if not path.is_dir():
        return {"spec": spec}
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".gguf"})
    return {"spec": str(path.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _safe(text: str) -> str:
    """A folder-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    if "device_map" in obj:
        raise LogitlabError(f"{where}: device_map is not supported: logitlab's runner does not split a model "
                            "across devices", _SPLIT_HINT)
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise LogitlabError(f"{where}: unknown key {unknown[0]!r}",
                            f"allowed here: {', '.join(sorted(allowed))}")


def _option(key: str, value: Any, where: str) -> Any:
    """One option as RunConfig takes it: type-checked against its default; a list for a tuple, a mapping for a
    nested settings dataclass (its unknown keys refused)."""
    default = _DEFAULTS[key]
    if is_dataclass(default):
        if not isinstance(value, dict):
            raise LogitlabError(f"{where}: {key} must be a mapping of its settings, got {value!r}",
                                f"its keys: {', '.join(f.name for f in fields(default))}")
        _check_keys(value, {f.name for f in fields(default)}, f"{where}: {key}")
        try:
            return replace(default, **value)
        except TypeError as e:
            raise LogitlabError(f"{where}: {key}: {e}") from e
        except LogitlabError as e:
            raise LogitlabError(f"{where}: {e}", e.hint) from e
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LogitlabError(f"{where}: {key} must be a list of names, got {value!r}")
        return tuple(value)
    if type(default) in (int, str) and (not isinstance(value, type(default)) or isinstance(value, bool)):
        raise LogitlabError(f"{where}: {key} must be {'an integer' if type(default) is int else 'a string'}, "
                            f"got {value!r}")
    return value


def _options(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """The RunConfig options set in ``obj`` (``max_memory`` converted from GiB to bytes)."""
    opts = {k: _option(k, obj[k], where) for k in OPTION_KEYS if k in obj}
    device = opts.get("device")
    if device == AUTO:  # resolved by the driver, once: a cell's config (and so its key) holds the device it runs on
        opts["device"] = device = resolve_device(device)
    if isinstance(device, str) and (device in _SPLIT_WORDS or "," in device):
        raise LogitlabError(f"{where}: device {device!r} would split a model across devices, which logitlab's "
                            "runner does not support", _SPLIT_HINT)
    if opts.get("max_memory") is not None:
        gib = opts["max_memory"]
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not gib > 0:
            raise LogitlabError(f"{where}: max_memory must be a positive number of GiB, got {gib!r}")
        opts["max_memory"] = int(gib * 2**30)
    return opts


def _entries(data: dict[str, Any], axis: str, main: str) -> list[dict[str, Any]]:
    """The entries of an axis as mappings (a plain string is ``{main: string}``)."""
    raw = data.get(axis)
    if raw is None:
        raise LogitlabError(f"the grid file has no {axis!r}", f"list at least one under {axis}:")
    if not isinstance(raw, list):
        raise LogitlabError(f"{axis!r} must be a list, got {type(raw).__name__}", f"e.g. {axis}: [a, b]")
    if not raw:
        raise LogitlabError(f"{axis!r} is empty", f"list at least one under {axis}:")
    out = []
    for i, e in enumerate(raw):
        where = f"{axis}[{i}]"
        if isinstance(e, str):
            e = {main: e}
        if not isinstance(e, dict):
            raise LogitlabError(f"{where} must be a string or a mapping, got {type(e).__name__}")
        if not isinstance(e.get(main), str) or not e[main].strip():
            raise LogitlabError(f"{where} has no {main!r}", f"e.g. {{{main}: ..., name: ...}}")
        if "name" in e and (not isinstance(e["name"], str) or not e["name"].strip()):
            raise LogitlabError(f"{where}: name must be a non-empty string")
        out.append({**e, "_where": where})
    return out


def _local(spec: str, base: Path) -> str:
    """``spec`` as an absolute path when it names a file or folder relative to ``base`` (else unchanged)."""
    path = Path(spec).expanduser()
    if path.is_absolute():
        return str(path)
    if (base / path).exists() or spec.startswith((".", "~")) or spec.endswith((".gguf", ".yaml", ".yml")):
        return str((base / path).resolve())
    return spec


def _model_label(spec: str) -> str:
    path = Path(spec)
    if spec.endswith(".gguf"):
        return path.stem
    if path.is_absolute():
        return path.name
    return spec.replace("/", "--")


def _checkpoint_list(value: Any, where: str) -> list[int] | str:
    if value == "all":
        return "all"
    def is_step(s: Any) -> bool:
        return isinstance(s, int) and not isinstance(s, bool) and s >= 0

    if isinstance(value, list) and value and all(is_step(s) for s in value):
        return sorted(set(value))
    raise LogitlabError(f"{where}: checkpoints must be 'all' or a non-empty list of training steps, got {value!r}",
                        "e.g. checkpoints: [0, 100, 1500]")


def _revision_list(value: Any, where: str) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(r, str) and r.strip() for r in value):
        return list(dict.fromkeys(value))
    raise LogitlabError(f"{where}: revisions must be a non-empty list of revision names, got {value!r}",
                        "e.g. revisions: [step1000, step143000]")


def _versions(spec: str, entry: dict[str, Any], top: dict[str, Any]) -> list[tuple[str, int | None, str | None]]:
    """(model to load, step, revision) for each checkpoint of a model entry (one item without checkpoints)."""
    where = entry["_where"]
    ckpt, revs = entry.get("checkpoints"), entry.get("revisions")
    if ckpt is None and revs is None:
        ckpt, revs = top.get("checkpoints"), top.get("revisions")
        where = "the grid's checkpoints/revisions"
    if ckpt is not None and revs is not None:
        raise LogitlabError(f"{where}: give checkpoints or revisions, not both")
    if revs is not None:
        revs = _revision_list(revs, where)
        if Path(spec).exists():
            raise LogitlabError(f"{entry['_where']}: revisions are hub branches, but {spec} is a local path",
                                "for a folder with one sub-folder per step use checkpoints: [steps] or all")
        return [(f"{spec}@{r}", _step_of(r), r) for r in revs]
    if ckpt is None:
        return [(spec, None, None)]
    steps = _checkpoint_list(ckpt, where)
    from logitlab.formation.formation import find_checkpoints, hub_checkpoints
    if Path(spec).is_dir():
        found = dict(find_checkpoints(Path(spec)))
        if steps == "all":
            steps = sorted(found)
        missing = [s for s in steps if s not in found]
        if missing:
            raise LogitlabError(f"{entry['_where']}: {spec} has no checkpoint for step(s) {missing}",
                                f"its steps: {sorted(found)}")
        return [(str(found[s]), s, None) for s in steps]
    if Path(spec).exists() or spec.endswith(".gguf") or spec in ("builtin", "gemma-3-270m", "gemma3-270m"):
        raise LogitlabError(f"{entry['_where']}: {spec} has no checkpoints",
                            "checkpoints need a folder with one model sub-folder per step, or a hub model "
                            "with step revisions; set checkpoints per model to leave this one out")
    pairs = hub_checkpoints(spec, None if steps == "all" else steps)
    return [(s_spec, s, s_spec.rsplit("@", 1)[1]) for s, s_spec in pairs]


def _step_of(revision: str) -> int | None:
    """The training step a revision name carries (``step1000``, ``checkpoint-1000``), if any."""
    m = re.search(r"(\d+)$", revision)
    return int(m.group(1)) if m else None


def grid_from_dict(data: Any, base: Path = Path("."), source: str = "grid") -> Grid:
    """Parse a grid (the YAML's contents) into its cells; relative paths are read from ``base``."""
    if not isinstance(data, dict):
        raise LogitlabError(f"{source} must be a mapping with models: and tasks:, got {type(data).__name__}")
    _check_keys(data, _TOP_KEYS, source)
    top = _options(data, source)
    models = _entries(data, "models", "model")
    tasks = _entries(data, "tasks", "task")
    for e in models:
        _check_keys({k: v for k, v in e.items() if k != "_where"}, _MODEL_KEYS, e["_where"])
    for e in tasks:
        _check_keys({k: v for k, v in e.items() if k != "_where"}, _TASK_KEYS, e["_where"])
    loaded: dict[str, Task] = {}
    cells: list[Cell] = []
    seen: dict[str, str] = {}  # config json → where
    names: dict[str, str] = {}  # folder name → where
    for m in models:
        spec = _local(m["model"], base)
        m_opts = _options(m, m["_where"])
        label = m.get("name") or _model_label(spec)
        for t in tasks:
            t_spec = t["task"] if t["task"] in builtin_tasks() else _local(t["task"], base)
            if t_spec not in loaded:
                loaded[t_spec] = load_task(t_spec)
            task = loaded[t_spec]
            t_opts = _options(t, t["_where"])
            clash = sorted(k for k in set(m_opts) & set(t_opts) if m_opts[k] != t_opts[k])
            if clash:
                raise LogitlabError(f"{m['_where']} and {t['_where']} set {clash[0]} to different values "
                                    f"({m_opts[clash[0]]!r} and {t_opts[clash[0]]!r})",
                                    "set it in one of them, or give the model twice with different names")
            t_label = t.get("name") or task.name
            for load_spec, step, rev in _versions(spec, m, data):
                where = f"{m['_where']} × {t['_where']}" + (f" at step {step}" if step is not None else "")
                try:
                    config = RunConfig(model=load_spec, task=t_spec, **{**top, **t_opts, **m_opts})
                except LogitlabError as e:
                    raise LogitlabError(f"{where}: {e}", e.hint) from e
                ident = json.dumps(asdict(config), sort_keys=True)
                if ident in seen:
                    raise LogitlabError(f"duplicate cell: {where} repeats {seen[ident]} (same model, task and "
                                        "options)", "remove one of them")
                seen[ident] = where
                suffix = f"step{step}" if step is not None else (rev or "")
                name = _safe(label) + "__" + _safe(t_label) + (f"__{_safe(suffix)}" if suffix else "")
                if name in names:
                    raise LogitlabError(f"two cells would share the folder {name!r}: {names[name]} and {where}",
                                        "give the models (or tasks) distinct names with name:")
                names[name] = where
                cells.append(Cell(name=name, config=config, task=task, model_label=label, task_label=t_label,
                                  step=step, revision=rev))
    title = data.get("name")
    if title is not None and not isinstance(title, str):
        raise LogitlabError(f"{source}: name must be a string")
    return Grid(name=title or Path(source).stem, cells=tuple(cells), source=source)


def load_grid(path: Path | str) -> Grid:
    """Read and parse a grid file (see the module docstring for its keys)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LogitlabError(f"cannot read grid file {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise LogitlabError(f"grid file {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from e
    return grid_from_dict(data, path.resolve().parent, str(path))
