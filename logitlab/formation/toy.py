"""A toy GPT-2 trained from scratch on synthetic pronoun text, checkpointed so circuit formation can be watched.

The corpus is generated, not downloaded: short sentences in which a name is followed by its pronoun
("Mary went home because she was tired.", "When John arrived, he sat down."), plus tag questions in the style
of logitlab's ``pronouns`` task ("Mary is a great friend, isn’t she?"). A byte-level BPE tokenizer with a
``<bos>`` token is trained on that corpus first, then a small ``GPT2LMHeadModel`` is trained with next-token
loss on ``<bos>`` + sentence. Checkpoints are saved at steps spaced log-uniformly (step 0 included, where the
logit difference is ~0), each a loadable Hugging Face folder ``out/step{N}/``.

Generalisation split (what makes the evaluation honest):

* **held-out templates** never occur in training, with any name;
* **held-out names** never occur in *any* tag question; they occur only in the other sentence forms, so their
  gender is learnable, but every evaluated prompt ``held-out name × held-out template`` is unseen text.

``out/heldout-task.yaml`` (held-out names × held-out templates) and ``out/train-task.yaml`` (training names ×
training templates) are logitlab task files; ``out/toy.json`` records the split, the config and the timings.
The same config and seed give byte-identical checkpoints (CPU, dropout off, seeded torch and RNGs).

Example:
    >>> paths = train_toy(Path("toy"), ToyConfig(steps=1500))
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from logitlab._io import atomic_dir, write_text_atomic
from logitlab.errors import LogitlabError

__all__ = ["ToyConfig", "Split", "SPLIT", "train_toy", "checkpoint_steps", "make_corpus", "HELDOUT_TASK",
           "TRAIN_TASK", "TOY_JSON", "quiet_single_thread"]

log = logging.getLogger(__name__)

HELDOUT_TASK = "heldout-task.yaml"
TRAIN_TASK = "train-task.yaml"
TOY_JSON = "toy.json"
APOS = "’"  # the typographic apostrophe of logitlab's pronoun task ("isn’t")


@dataclass(frozen=True)
class ToyConfig:
    """Model size, training length and checkpoint schedule of the toy run.

    The defaults train in about 30 s on one CPU core and learn the task, held-out prompts included.
    """

    steps: int = 1500
    seed: int = 0
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_ctx: int = 32
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
    vocab_size: int = 1024
    n_sentences: int = 20000
    tag_share: float = 0.35  # share of tag questions in the corpus
    n_checkpoints: int = 24

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise LogitlabError("steps must be at least 1")
        if self.n_checkpoints < 2:
            raise LogitlabError("n_checkpoints must be at least 2 (step 0 and the last step)")
        if min(self.n_layers, self.n_heads, self.d_model) < 1:
            raise LogitlabError(f"the toy needs at least one layer, one head and d_model ≥ 1, got n_layers "
                                f"{self.n_layers}, n_heads {self.n_heads}, d_model {self.d_model}")
        if self.d_model % self.n_heads:
            raise LogitlabError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0 < self.tag_share < 1:
            raise LogitlabError("tag_share must lie strictly between 0 and 1")


@dataclass(frozen=True)
class Split:
    """Which names and templates are trained on and which are held out."""

    female_train: tuple[str, ...]
    male_train: tuple[str, ...]
    female_heldout: tuple[str, ...]
    male_heldout: tuple[str, ...]
    templates_train: tuple[str, ...]  # "{} is a great friend, isn’t" (answer: the subject's pronoun)
    templates_heldout: tuple[str, ...]

    def gender(self, name: str) -> str:
        return "she" if name in self.female_train + self.female_heldout else "he"


def _tag(predicate: str) -> str:
    return "{} is " + predicate + ", isn" + APOS + "t"


# Training names include those of the built-in ``pronouns`` task; two of its templates are held out.
SPLIT = Split(
    female_train=("Mary", "Amy", "Sarah", "Anna", "Emma", "Lisa", "Julia", "Laura", "Alice", "Rose"),
    male_train=("John", "Dan", "Tom", "Mike", "Peter", "James", "David", "Henry", "Jack", "Paul"),
    female_heldout=("Lucy", "Kate", "Helen"),
    male_heldout=("Mark", "Adam", "Eric"),
    templates_train=tuple(_tag(p) for p in (
        "a great friend", "an amazing person", "a fantastic colleague", "really tall", "a good cook",
        "very kind", "a talented singer")),
    templates_heldout=tuple(_tag(p) for p in ("a wonderful partner", "an excellent student", "very funny")),
)

# Predicates of the held-out templates occur in training only inside "{name} thinks that {she} is …", where
# the pronoun comes *before* them: their words are known, the tag-question form with them is not.
_PREDICATES = ("a great friend", "an amazing person", "a fantastic colleague", "really tall", "a good cook",
               "very kind", "a talented singer", "a wonderful partner", "an excellent student", "very funny")
_PLACES = ("home", "to the park", "to work", "to the shop", "to school", "outside")
_STATES = ("tired", "happy", "hungry", "late", "bored", "sick")
_OBJECTS = ("keys", "phone", "book", "bag", "ticket", "coat")
_RELATIVES = ("mother", "father", "sister", "brother", "friend", "teacher")
_FORMS: tuple[Callable[[random.Random, str, dict[str, str]], str], ...] = (
    lambda r, n, p: f"{n} went {r.choice(_PLACES)} because {p['s']} was {r.choice(_STATES)}.",
    lambda r, n, p: f"{n} said that {p['s']} would come {r.choice(('soon', 'later', 'today', 'tomorrow'))}.",
    lambda r, n, p: f"{n} lost {p['pos']} {r.choice(_OBJECTS)}, so {p['s']} looked for it.",
    lambda r, n, p: f"When {n} arrived, {p['s']} sat down.",
    lambda r, n, p: f"{n} smiled because {p['s']} was {r.choice(_STATES)}.",
    lambda r, n, p: f"{n} called {p['pos']} {r.choice(_RELATIVES)} after {p['s']} got home.",
    lambda r, n, p: f"Everyone likes {n} because {p['s']} is {r.choice(_PREDICATES)}.",
    lambda r, n, p: f"{n} thinks that {p['s']} is {r.choice(_PREDICATES)}.",
    lambda r, n, p: f"I saw {n} {r.choice(_PLACES)} and waved at {p['obj']}.",
)
_PRONOUNS = {"she": {"s": "she", "pos": "her", "obj": "her"}, "he": {"s": "he", "pos": "his", "obj": "him"}}


def make_corpus(n: int, seed: int, split: Split = SPLIT, tag_share: float = 0.35) -> list[str]:
    """``n`` synthetic sentences: tag questions (training names × training templates) and other forms (all names)."""
    rng = random.Random(seed)
    train_names = split.female_train + split.male_train
    all_names = train_names + split.female_heldout + split.male_heldout
    out = []
    for _ in range(n):
        if rng.random() < tag_share:
            name = rng.choice(train_names)
            out.append(rng.choice(split.templates_train).format(name) + f" {split.gender(name)}?")
        else:
            name = rng.choice(all_names)
            out.append(rng.choice(_FORMS)(rng, name, _PRONOUNS[split.gender(name)]))
    return out


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` distinct steps from 0 to ``steps``: 0, then log-uniform from 1 (fewer if ``steps`` is small)."""
    if steps + 1 <= n:
        return list(range(steps + 1))
    k = n - 1
    while True:
        # Rounding merges the small steps, so ask for more points until n distinct remain.
        xs = torch.logspace(0, torch.log10(torch.tensor(float(steps))), k, dtype=torch.float64)
        picked = sorted({0, *(int(round(float(x))) for x in xs)} | {steps})
        if len(picked) >= n or k > 10 * n:
            return picked
        k += 1


def _train_tokenizer(corpus: list[str], vocab_size: int, split: Split) -> Any:
    """Byte-level BPE with ``<bos>``/``<pad>``; checks that names and answers are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    names = split.female_train + split.male_train + split.female_heldout + split.male_heldout
    # Every name at a sentence start and after a space, so a short corpus still merges them into one token.
    lexicon = [f"{n} and{s} {n} or {p}" for n in names for s, p in ((" she", "her"), (" he", "his"))] * 20
    tok.train_from_iterator(corpus + lexicon, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", eos_token="<bos>")
    # Names start prompts (no space) and the patching pairs swap them, so both forms must be one token.
    must = [" she", " he"] + list(names) + [f" {n}" for n in names]
    bad = [w for w in must if len(fast(w, add_special_tokens=False)["input_ids"]) != 1]
    if bad:
        raise LogitlabError(f"the toy tokenizer splits {bad} into several tokens", "raise ToyConfig.vocab_size")
    return fast


def _encode(tokenizer: Any, corpus: list[str], n_ctx: int) -> torch.Tensor:
    """``<bos>`` + sentence, right-padded with ``<pad>`` to ``n_ctx``: (n_sentences, n_ctx)."""
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    rows = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    too_long = max(len(r) for r in rows) + 1
    if too_long > n_ctx:
        raise LogitlabError(f"a toy sentence needs {too_long} tokens but n_ctx is {n_ctx}", "raise ToyConfig.n_ctx")
    return torch.tensor([[bos] + r + [pad] * (n_ctx - 1 - len(r)) for r in rows], dtype=torch.long)


def _task_yaml(name: str, description: str, names_f: tuple[str, ...], names_m: tuple[str, ...],
               templates: tuple[str, ...]) -> str:
    """A logitlab task file; patching pairs swap a she-name and a he-name in the first template."""
    def q(s: str) -> str:
        return json.dumps(s, ensure_ascii=False)  # JSON strings are valid YAML flow scalars
    t0 = templates[0]
    lines = [f"name: {q(name)}", f"description: {q(description)}", "prepend_bos: true", "templates:"]
    lines += [f"  - {q(t)}" for t in templates]
    lines += ["classes:", '  she: {answer: " she", incorrect: [" he"]}', '  he: {answer: " he", incorrect: [" she"]}',
              "subjects:"]
    lines += [f"  - {{name: {q(n)}, class: she}}" for n in names_f] + [f"  - {{name: {q(n)}, class: he}}" for n in names_m]
    lines.append("patching:")
    for f, m in zip(names_f, names_m):
        lines.append(f"  - {{clean: {q(t0.format(f))}, corrupted: {q(t0.format(m))}, class: she}}")
        lines.append(f"  - {{clean: {q(t0.format(m))}, corrupted: {q(t0.format(f))}, class: he}}")
    return "\n".join(lines) + "\n"


def _save_checkpoint(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save an HF folder atomically: a half-written checkpoint never carries the final name."""
    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    atomic_dir(folder, write)


@contextmanager
def quiet_single_thread() -> Iterator[None]:
    """One torch thread and no HF progress bars for the duration; both restored afterwards.

    A model this small gains nothing from intra-op threads, and on a busy machine their spin-waiting makes
    each step many times slower. One thread also makes the float reductions, and so the checkpoints,
    independent of the machine's core count.
    """
    from transformers.utils import logging as hf_logging
    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def _remove_previous(out: Path) -> None:
    """Delete the checkpoint folders an earlier toy run in ``out`` listed, so no stale step survives."""
    old = out / TOY_JSON
    if not old.is_file():
        return
    try:
        listed = [str(c["path"]) for c in json.loads(old.read_text(encoding="utf-8"))["checkpoints"]]
    except (OSError, ValueError, KeyError, TypeError):
        listed = []
    for name in listed:
        if re.fullmatch(r"step\d+", name) and (out / name).is_dir():
            shutil.rmtree(out / name)
    old.unlink()


def train_toy(out: Path, config: ToyConfig = ToyConfig(), progress: Callable[[int], None] | None = None,
              split: Split = SPLIT) -> list[Path]:
    """Train the toy model, saving checkpoints ``out/step{N}/``, the two task files and ``out/toy.json``.

    Args:
        out: Output folder (created; a previous toy run there is replaced).
        config: Model, training and checkpoint settings.
        progress: Called with 1 after every optimiser step.
        split: The names/templates split (the default is :data:`SPLIT`).
    Returns:
        The checkpoint folders, in step order.
    """
    with quiet_single_thread(), torch.enable_grad():  # callers (and test suites) may have turned grad off
        return _train(out, config, progress, split)


def _train(out: Path, config: ToyConfig, progress: Callable[[int], None] | None, split: Split) -> list[Path]:
    """:func:`train_toy` without the thread and grad settings."""
    from transformers import GPT2Config, GPT2LMHeadModel
    t0 = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LogitlabError(f"cannot create output folder {out}: {e}", "choose a writable --out folder") from e
    _remove_previous(out)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    corpus = make_corpus(config.n_sentences, config.seed, split, config.tag_share)
    tokenizer = _train_tokenizer(corpus, config.vocab_size, split)
    data = _encode(tokenizer, corpus, config.n_ctx)  # (n_sentences, n_ctx)
    labels_all = data.masked_fill(data == tokenizer.pad_token_id, -100)  # no loss on padding
    used = int((data != tokenizer.pad_token_id).sum(1).max())  # trim columns that are padding everywhere
    data, labels_all = data[:, :used], labels_all[:, :used]
    gcfg = GPT2Config(vocab_size=len(tokenizer), n_positions=config.n_ctx, n_embd=config.d_model,
                      n_layer=config.n_layers, n_head=config.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id,
                      pad_token_id=tokenizer.pad_token_id, architectures=["GPT2LMHeadModel"])
    model = GPT2LMHeadModel(gcfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    # Linear warm-up then cosine decay to 10 %: stable at this high learning rate for a tiny model.
    def lr_at(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(config.seed)
    save_at = set(checkpoint_steps(config.steps, config.n_checkpoints))
    saved: list[Path] = []
    losses: dict[int, float] = {}
    t_train = time.perf_counter()
    for step in range(config.steps + 1):
        if step in save_at:
            folder = out / f"step{step}"
            _save_checkpoint(model, tokenizer, folder)
            saved.append(folder)
        if step == config.steps:
            break
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen)
        x, y = data[idx], labels_all[idx]  # (batch, pos)
        logits = model(input_ids=x, attention_mask=(y != -100).long()).logits  # (batch, pos, vocab)
        # Position t predicts token t+1; padding is never a target.
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), y[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step + 1 in save_at:
            losses[step + 1] = loss.item()
            log.info("step %d: loss %.3f", step + 1, losses[step + 1])
        if progress is not None:
            progress(1)
    train_s = time.perf_counter() - t_train
    write_text_atomic(out / HELDOUT_TASK, _task_yaml(
        "toy-heldout", "Held-out names x held-out templates: none of these prompts occurs in training.",
        split.female_heldout, split.male_heldout, split.templates_heldout))
    write_text_atomic(out / TRAIN_TASK, _task_yaml(
        "toy-train", "Training names x training templates: these tag questions occur in training.",
        split.female_train, split.male_train, split.templates_train))
    info = {
        "kind": "toy", "config": asdict(config), "split": asdict(split),
        "split_notes": {
            "templates_heldout": "never occur in training, with any name",
            "names_heldout": "never occur in any tag question; only in other sentence forms (gender learnable)",
            "sentence_forms": [f(random.Random(0), "{name}", {"s": "{she/he}", "pos": "{her/his}", "obj": "{her/him}"})
                               for f in _FORMS],
        },
        "tasks": {"heldout": HELDOUT_TASK, "train": TRAIN_TASK},
        "checkpoints": [{"step": int(p.name[4:]), "path": p.name, "train_loss": losses.get(int(p.name[4:]))}
                        for p in saved],
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "seconds": {"total": round(time.perf_counter() - t0, 2), "training": round(train_s, 2)},
    }
    write_text_atomic(out / TOY_JSON, json.dumps(info, indent=1, ensure_ascii=False))
    log.info("trained the toy model in %.1f s (%d checkpoints)", info["seconds"]["total"], len(saved))
    return saved
