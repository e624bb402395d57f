"""Contrastive next-token tasks: prompts, each with a correct and an incorrect single-token answer.

A task file (YAML) holds prompt templates, subjects with their class, each class's answer and incorrect
answer(s), and clean/corrupted prompt pairs for activation patching::

    name: pronouns
    prepend_bos: true
    templates: ["{} is a great friend, isn’t"]
    classes:
      she: {answer: " she", incorrect: [" he"]}
      he: {answer: " he", incorrect: [" she"]}
    subjects: [{name: Mary, class: she}, {name: John, class: he}]
    patching: [{clean: "Mary is a great friend, isn’t", corrupted: "John is a great friend, isn’t", class: she}]

Prompts are ``template.format(subject)`` in template-major order (subjects inner). With several incorrect
answers the logit difference is ``correct − mean(incorrect)`` (linear, so attributions stay exact); prompts may
have different numbers of incorrect answers (``logitlab.answers``).

Example:
    >>> task = load_task("pronouns")
    >>> task.prompts[0]
    'Mary is a great friend, isn’t'
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import yaml
from jaxtyping import Int
from torch import Tensor

from logitlab.answers import PAD
from logitlab.errors import LogitlabError

__all__ = ["Task", "TokenizedTask", "PatchPair", "PairGroup", "load_task", "builtin_tasks", "tokenize_task",
           "generated_pairs", "MAX_PAIRS_PER_TEMPLATE", "SUBJECT_ROLE"]

_TOP_KEYS = {"name", "description", "prepend_bos", "templates", "classes", "subjects", "patching", "prompts"}
_CLASS_KEYS = {"answer", "incorrect"}
_SUBJECT_KEYS = {"name", "class"}
_PAIR_KEYS = {"clean", "corrupted", "class", "correct", "incorrect"}
_PROMPT_KEYS = {"prompt", "correct", "incorrect"}


@dataclass(frozen=True)
class PatchPair:
    """A clean/corrupted prompt pair scored with the clean prompt's answers."""

    clean: str
    corrupted: str
    correct: str
    incorrect: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """A contrastive next-token task as strings (model-independent)."""

    name: str
    prompts: tuple[str, ...]
    correct: tuple[str, ...]
    incorrect: tuple[tuple[str, ...], ...]
    patch_pairs: tuple[PatchPair, ...] = ()
    prepend_bos: bool = True
    description: str = ""
    # Where each prompt came from (empty tuples: unknown). Template prompts: the template's index in
    # ``templates``, the subject's name and class; explicit prompts: -1, "" and "".
    templates: tuple[str, ...] = ()
    prompt_template: tuple[int, ...] = ()
    prompt_subject: tuple[str, ...] = ()
    prompt_class: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("prompt_template", "prompt_subject", "prompt_class"):
            if getattr(self, name) and len(getattr(self, name)) != len(self.prompts):
                raise LogitlabError(f"task {self.name!r}: {name} and prompts differ in number")
        if not self.prompts:
            raise LogitlabError(f"task {self.name!r} has no prompts", "add templates and subjects (or prompts)")
        if not (len(self.prompts) == len(self.correct) == len(self.incorrect)):
            raise LogitlabError(f"task {self.name!r}: prompts and answers differ in number")
        seen: set[str] = set()
        for p in self.prompts:
            if p in seen:
                raise LogitlabError(f"task {self.name!r}: duplicate prompt {p!r}", "each prompt must appear once")
            seen.add(p)
        for inc in self.incorrect:
            if not inc:
                raise LogitlabError(f"task {self.name!r}: a prompt has no incorrect answer")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompts": list(self.prompts),
            "answers": [[c, " / ".join(i)] for c, i in zip(self.correct, self.incorrect)],
            "patching_pairs": [
                {"clean": p.clean, "corrupted": p.corrupted, "correct": p.correct, "incorrect": " / ".join(p.incorrect)}
                for p in self.patch_pairs
            ],
        }


@dataclass(frozen=True)
class TokenizedTask:
    """A task tokenised for one model: right-padded token ids and each prompt's own final position."""

    task: Task
    tokens: Int[Tensor, "batch pos"]
    final_pos: Int[Tensor, " batch"]
    correct_ids: Int[Tensor, " batch"]
    incorrect_ids: Int[Tensor, "batch n_incorrect"]  # padded with answers.PAD (fewer incorrect answers)
    str_tokens: tuple[tuple[str, ...], ...]
    # Patching: clean and corrupted token ids (all pairs share one length), scored with clean answers.
    clean_tokens: Int[Tensor, "pair pos"] | None
    corrupted_tokens: Int[Tensor, "pair pos"] | None
    pair_correct_ids: Int[Tensor, " pair"] | None
    pair_incorrect_ids: Int[Tensor, "pair n_incorrect"] | None

    @property
    def n_prompts(self) -> int:
        return int(self.tokens.shape[0])


def builtin_tasks() -> list[str]:
    """Names of the tasks that ship with logitlab."""
    return sorted(p.name[: -len(".yaml")] for p in files("logitlab.tasks").iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str | Path) -> Task:
    """Load a built-in task by name or a task file (YAML) by path."""
    spec = str(name_or_path)
    if spec in builtin_tasks():
        text = files("logitlab.tasks").joinpath(f"{spec}.yaml").read_text(encoding="utf-8")
        source = f"built-in task {spec!r}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise LogitlabError(
                f"no task named {spec!r}: not a built-in task and no such file",
                f"built-in tasks: {', '.join(builtin_tasks())}; or pass the path of a task YAML file",
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LogitlabError(f"cannot read task file {path}: {e}") from e
        source = f"task file {path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise LogitlabError(f"{source} is not valid YAML{where}: {getattr(e, 'problem', e)}") from e
    return task_from_dict(data, source)


def _require(cond: bool, source: str, msg: str, hint: str | None = None) -> None:
    if not cond:
        raise LogitlabError(f"{source}: {msg}", hint)


def _check_keys(obj: Any, allowed: set[str], where: str, source: str) -> None:
    _require(isinstance(obj, dict), source, f"{where} must be a mapping, got {type(obj).__name__}")
    unknown = sorted(set(map(str, obj)) - allowed)
    _require(not unknown, source, f"unknown key(s) {unknown} in {where}", f"allowed keys: {sorted(allowed)}")


def _str(value: Any, where: str, source: str, allow_empty: bool = False) -> str:
    _require(isinstance(value, str), source, f"{where} must be a string, got {type(value).__name__}")
    _require(allow_empty or value != "", source, f"{where} is empty")
    return value


def _str_list(value: Any, where: str, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _require(isinstance(value, list) and len(value) > 0, source, f"{where} must be a non-empty list of strings")
    return tuple(_str(v, f"{where}[{i}]", source) for i, v in enumerate(value))


def task_from_dict(data: Any, source: str = "task") -> Task:
    """Build and validate a task from parsed YAML."""
    _require(data is not None, source, "is empty", "a task needs templates, classes and subjects (or prompts)")
    _check_keys(data, _TOP_KEYS, "the task", source)
    name = _str(data.get("name", "task"), "name", source)
    prepend_bos = data.get("prepend_bos", True)
    _require(isinstance(prepend_bos, bool), source, "prepend_bos must be true or false")
    classes_raw = data.get("classes") or {}
    _require(isinstance(classes_raw, dict), source, "classes must be a mapping of class name to answers")
    classes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for cname, c in classes_raw.items():
        _check_keys(c, _CLASS_KEYS, f"class {cname!r}", source)
        _require("answer" in c and "incorrect" in c, source, f"class {cname!r} needs 'answer' and 'incorrect'")
        classes[str(cname)] = (_str(c["answer"], f"class {cname!r} answer", source),
                               _str_list(c["incorrect"], f"class {cname!r} incorrect", source))

    def answers_of(cls: Any, where: str) -> tuple[str, tuple[str, ...]]:
        _require(str(cls) in classes, source, f"{where}: unknown class {cls!r}", f"known classes: {sorted(classes)}")
        return classes[str(cls)]

    prompts: list[str] = []
    correct: list[str] = []
    incorrect: list[tuple[str, ...]] = []
    origin: list[tuple[int, str, str]] = []  # (template index, subject, class) per prompt
    templates = data.get("templates")
    subjects = data.get("subjects")
    if templates is not None or subjects is not None:
        templates = _str_list(templates, "templates", source)
        _require(isinstance(subjects, list) and len(subjects) > 0, source, "subjects must be a non-empty list")
        parsed = []
        for i, s in enumerate(subjects):
            _check_keys(s, _SUBJECT_KEYS, f"subjects[{i}]", source)
            _require("name" in s and "class" in s, source, f"subjects[{i}] needs 'name' and 'class'")
            parsed.append((_str(str(s["name"]) if isinstance(s["name"], (int, float)) else s["name"],
                                f"subjects[{i}].name", source), answers_of(s["class"], f"subjects[{i}]")))
        for ti, t in enumerate(templates):
            _require(t.count("{}") == 1, source, f"template {t!r} must contain exactly one '{{}}'")
            for (subj, (ans, inc)), s in zip(parsed, subjects):
                prompts.append(t.replace("{}", subj))
                correct.append(ans)
                incorrect.append(inc)
                origin.append((ti, subj, str(s["class"])))
    explicit = data.get("prompts")
    _require(explicit is None or isinstance(explicit, list), source,
             "prompts must be a list of {prompt, correct, incorrect}")
    for i, p in enumerate(explicit or []):
        _check_keys(p, _PROMPT_KEYS, f"prompts[{i}]", source)
        _require("prompt" in p and "correct" in p and "incorrect" in p, source,
                 f"prompts[{i}] needs 'prompt', 'correct' and 'incorrect'")
        prompts.append(_str(p["prompt"], f"prompts[{i}].prompt", source))
        correct.append(_str(p["correct"], f"prompts[{i}].correct", source))
        incorrect.append(_str_list(p["incorrect"], f"prompts[{i}].incorrect", source))
        origin.append((-1, "", ""))
    _require(len(prompts) > 0, source, "has no prompts", "give templates + subjects, or a prompts list")

    pairs = []
    patching = data.get("patching") or []
    _require(isinstance(patching, list), source, "patching must be a list of {clean, corrupted, class} pairs")
    for i, p in enumerate(patching):
        _check_keys(p, _PAIR_KEYS, f"patching[{i}]", source)
        _require("clean" in p and "corrupted" in p, source, f"patching[{i}] needs 'clean' and 'corrupted'")
        if "class" in p:
            ans, inc = answers_of(p["class"], f"patching[{i}]")
        else:
            _require("correct" in p and "incorrect" in p, source,
                     f"patching[{i}] needs 'class', or 'correct' and 'incorrect'")
            ans = _str(p["correct"], f"patching[{i}].correct", source)
            inc = _str_list(p["incorrect"], f"patching[{i}].incorrect", source)
        clean = _str(p["clean"], f"patching[{i}].clean", source)
        corrupted = _str(p["corrupted"], f"patching[{i}].corrupted", source)
        _require(clean != corrupted, source, f"patching[{i}]: clean and corrupted prompts are identical")
        pairs.append(PatchPair(clean, corrupted, ans, inc))
    return Task(name=name, prompts=tuple(prompts), correct=tuple(correct), incorrect=tuple(incorrect),
                patch_pairs=tuple(pairs), prepend_bos=prepend_bos,
                description=str(data.get("description", "")), templates=tuple(templates or ()),
                prompt_template=tuple(o[0] for o in origin), prompt_subject=tuple(o[1] for o in origin),
                prompt_class=tuple(o[2] for o in origin))


def single_token_id(tokenizer: Any, answer: str) -> int:
    """The id of an answer that must be exactly one token for this tokenizer."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        shown = [tokenizer.decode([i]) for i in ids]
        raise LogitlabError(
            f"answer {answer!r} is not a single token for this model: it tokenises as {shown} (ids {ids})",
            "choose an answer that is one token (mind the leading space, e.g. ' she')",
        )
    return int(ids[0])


def encode_prompt(tokenizer: Any, prompt: str, prepend_bos: bool) -> list[int]:
    """Token ids of a prompt, with the model's BOS token first if asked."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if prepend_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise LogitlabError("the task asks for a BOS token but this tokenizer has none",
                                "set 'prepend_bos: false' in the task file")
        ids = [int(bos)] + ids
    if not ids:
        raise LogitlabError(f"prompt {prompt!r} tokenises to nothing")
    return ids


def _pad(rows: list[list[int]], pad_id: int) -> Tensor:
    # Right padding: causal attention means padding after a prompt's end never changes its positions.
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


def _answer_ids(rows: list[list[int]]) -> Tensor:
    """Incorrect-answer ids (n, k_max), padded with ``answers.PAD`` where a prompt has fewer answers."""
    k = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (k - len(r)) for r in rows], dtype=torch.long)


def tokenize_task(task: Task, tokenizer: Any) -> TokenizedTask:
    """Tokenise and validate a task for one model's tokenizer."""
    rows = [encode_prompt(tokenizer, p, task.prepend_bos) for p in task.prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else rows[0][0]
    cache: dict[str, int] = {}

    def tid(a: str) -> int:
        if a not in cache:
            cache[a] = single_token_id(tokenizer, a)
        return cache[a]

    correct_ids = torch.tensor([tid(a) for a in task.correct])
    incorrect_ids = _answer_ids([[tid(a) for a in inc] for inc in task.incorrect])
    if bool((incorrect_ids == correct_ids[:, None]).any()):
        raise LogitlabError(f"task {task.name!r}: a prompt's incorrect answer equals its correct answer")
    str_tokens = tuple(tuple(tokenizer.decode([i]) for i in r) for r in rows)
    clean = corrupted = pc = pi = None
    if task.patch_pairs:
        c_rows = [encode_prompt(tokenizer, p.clean, task.prepend_bos) for p in task.patch_pairs]
        x_rows = [encode_prompt(tokenizer, p.corrupted, task.prepend_bos) for p in task.patch_pairs]
        for p, c, x in zip(task.patch_pairs, c_rows, x_rows):
            if len(c) != len(x):
                raise LogitlabError(
                    f"patching pair has different token lengths: clean {p.clean!r} has {len(c)} tokens, "
                    f"corrupted {p.corrupted!r} has {len(x)}",
                    "patching compares positions one to one; choose prompts that tokenise to the same length",
                )
        if len({len(c) for c in c_rows}) != 1:
            raise LogitlabError("all patching pairs must share one token length (positions are compared across pairs)")
        clean, corrupted = torch.tensor(c_rows), torch.tensor(x_rows)
        pc = torch.tensor([tid(p.correct) for p in task.patch_pairs])
        pi = _answer_ids([[tid(a) for a in p.incorrect] for p in task.patch_pairs])
    return TokenizedTask(
        task=task, tokens=_pad(rows, pad_id), final_pos=torch.tensor([len(r) - 1 for r in rows]),
        correct_ids=correct_ids, incorrect_ids=incorrect_ids, str_tokens=str_tokens,
        clean_tokens=clean, corrupted_tokens=corrupted, pair_correct_ids=pc, pair_incorrect_ids=pi,
    )


# ---------------------------------------------------------------------------------------------------------
# Patching pairs generated from the templates

#: At most this many generated patching pairs per template. A template with more candidates keeps a seeded
#: random sample of them (``torch.Generator`` seeded with the template's index, so the choice is the same on
#: every machine), in enumeration order. Every pair costs L·(3·T + H) sweep items (about 25 times the work of
#: one prompt's head ablation), so the cap bounds patching's cost by the number of templates: ``pronouns``
#: yields 40 pairs (8 per template, under the cap), ``pronouns-large`` 120 (10 templates).
MAX_PAIRS_PER_TEMPLATE = 12

#: Position label of the subject's tokens in a generated group's role sequence.
SUBJECT_ROLE = "{name}"


@dataclass(frozen=True)
class PairGroup:
    """Generated clean/corrupted pairs of one template whose prompts share one token length.

    Pair ``i`` is prompt ``clean_index[i]`` (clean) against prompt ``corrupted_index[i]`` (corrupted): the same
    template, subjects of different classes, scored with the clean prompt's answers. ``roles`` labels each
    position: :data:`SUBJECT_ROLE` where the token depends on the subject (it differs between the group's
    prompts), the token string elsewhere.
    """

    template: int
    template_text: str
    clean_index: tuple[int, ...]
    corrupted_index: tuple[int, ...]
    clean_tokens: Int[Tensor, "pair pos"]
    corrupted_tokens: Int[Tensor, "pair pos"]
    correct_ids: Int[Tensor, " pair"]
    incorrect_ids: Int[Tensor, "pair n_incorrect"]  # padded with answers.PAD
    roles: tuple[str, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.clean_index)


def generated_pairs(tt: TokenizedTask, max_per_template: int = MAX_PAIRS_PER_TEMPLATE) -> tuple[PairGroup, ...]:
    """Every subject paired with every subject of another class whose prompt has the same token length.

    Within each template (explicit prompts never take part), each ordered pair (clean i, corrupted j) with
    ``prompt_class[i] != prompt_class[j]`` and equal token lengths is a candidate; above ``max_per_template``
    candidates a seeded sample is kept (:data:`MAX_PAIRS_PER_TEMPLATE`). Returns one group per (template, token
    length), in template order, then length; empty when the task records no template origins or no pairs.
    """
    task = tt.task
    if not task.prompt_template or max_per_template < 1:
        return ()
    lengths = (tt.final_pos + 1).tolist()
    groups: list[PairGroup] = []
    for t, text in enumerate(task.templates):
        idx = [i for i, ti in enumerate(task.prompt_template) if ti == t]
        cands = [(i, j) for i in idx for j in idx
                 if i != j and task.prompt_class[i] != task.prompt_class[j] and lengths[i] == lengths[j]]
        if len(cands) > max_per_template:
            keep = torch.randperm(len(cands), generator=torch.Generator().manual_seed(t))[:max_per_template]
            cands = [cands[k] for k in sorted(keep.tolist())]
        for n in sorted({lengths[i] for i, _ in cands}):
            pairs = [(i, j) for i, j in cands if lengths[i] == n]
            ci, xi = [i for i, _ in pairs], [j for _, j in pairs]
            members = sorted(set(ci) | set(xi))
            toks = tt.tokens[members, :n]  # (prompts of the group, n)
            varies = (toks != toks[:1]).any(0)  # positions whose token depends on the subject
            roles = tuple(SUBJECT_ROLE if bool(v) else tt.str_tokens[members[0]][p] for p, v in enumerate(varies))
            groups.append(PairGroup(
                template=t, template_text=text, clean_index=tuple(ci), corrupted_index=tuple(xi),
                clean_tokens=tt.tokens[ci, :n].clone(), corrupted_tokens=tt.tokens[xi, :n].clone(),
                correct_ids=tt.correct_ids[ci].clone(), incorrect_ids=tt.incorrect_ids[ci].clone(), roles=roles))
    return tuple(groups)
