"""The toy model: checkpoint schedule, an honest generalisation split, loadable and reproducible checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from logitlab.formation.toy import SPLIT, ToyConfig, checkpoint_steps, make_corpus, train_toy
from logitlab.task import load_task, tokenize_task


def test_checkpoint_steps_log_uniform() -> None:
    steps = checkpoint_steps(1500, 20)
    assert len(steps) == 20 and steps == sorted(set(steps))
    assert steps[:2] == [0, 1] and steps[-1] == 1500
    ratios = [b / a for a, b in zip(steps[5:], steps[6:])]
    assert max(ratios) / min(ratios) < 1.3  # evenly spaced on a log axis once rounding stops mattering
    assert checkpoint_steps(4, 20) == [0, 1, 2, 3, 4]
    assert len(checkpoint_steps(ToyConfig().steps, ToyConfig().n_checkpoints)) >= 15


def test_split_is_honest() -> None:
    """Held-out templates never occur; held-out names never occur in a tag question but do occur elsewhere."""
    corpus = make_corpus(20000, seed=0)
    heldout_names = SPLIT.female_heldout + SPLIT.male_heldout
    name_re = {n: re.compile(rf"\b{n}\b") for n in heldout_names}
    tag_prefixes = [t.split("{}")[1] for t in SPLIT.templates_heldout]  # " is a wonderful partner, isn’t"
    seen = {n: 0 for n in heldout_names}
    for s in corpus:
        assert not any(p in s for p in tag_prefixes), s
        for n, r in name_re.items():
            if r.search(s):
                assert "isn’t" not in s and not s.startswith(f"{n} is "), s
                seen[n] += 1
    assert min(seen.values()) > 50, seen
    assert set(SPLIT.female_heldout).isdisjoint(SPLIT.female_train)
    assert set(SPLIT.templates_heldout).isdisjoint(SPLIT.templates_train)


def test_tiny_toy_folder(tiny_toy: Path, tiny_config: ToyConfig) -> None:
    from logitlab.model.load import load_model
    info = json.loads((tiny_toy / "toy.json").read_text())
    steps = [c["step"] for c in info["checkpoints"]]
    assert steps == checkpoint_steps(tiny_config.steps, tiny_config.n_checkpoints) and steps[0] == 0
    assert info["split"]["female_heldout"] == list(SPLIT.female_heldout)
    for s in steps:
        cfg = json.loads((tiny_toy / f"step{s}" / "config.json").read_text())
        assert cfg["architectures"] == ["GPT2LMHeadModel"] and (tiny_toy / f"step{s}" / "model.safetensors").is_file()
    assert not list(tiny_toy.glob(".*"))  # no temporary files or folders left
    model = load_model(str(tiny_toy / "step0"), cache=False)
    for name, n_prompts in (("heldout-task.yaml", 18), ("train-task.yaml", 140)):
        task = load_task(tiny_toy / name)
        tt = tokenize_task(task, model.tokenizer)
        assert tt.n_prompts == n_prompts and tt.clean_tokens is not None
        assert int(tt.tokens[0, 0]) == model.tokenizer.bos_token_id
    heldout = load_task(tiny_toy / "heldout-task.yaml")
    assert all(p.split(" ")[0] in SPLIT.female_heldout + SPLIT.male_heldout for p in heldout.prompts)


def test_same_config_same_checkpoints(tmp_path: Path) -> None:
    cfg = ToyConfig(steps=6, n_checkpoints=3, n_sentences=500, batch_size=8)
    a = train_toy(tmp_path / "a", cfg)
    b = train_toy(tmp_path / "b", cfg)
    c = train_toy(tmp_path / "c", ToyConfig(steps=6, n_checkpoints=3, n_sentences=500, batch_size=8, seed=1))
    assert [p.name for p in a] == [p.name for p in b] == ["step0", "step1", "step6"]
    for pa, pb in zip(a, b):
        for f in ("model.safetensors", "tokenizer.json", "config.json"):
            assert (pa / f).read_bytes() == (pb / f).read_bytes(), (pa.name, f)
    assert (a[-1] / "model.safetensors").read_bytes() != (c[-1] / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "heldout-task.yaml").read_text() == (tmp_path / "b" / "heldout-task.yaml").read_text()


def test_retraining_replaces_the_previous_run(tmp_path: Path) -> None:
    train_toy(tmp_path, ToyConfig(steps=8, n_checkpoints=4, n_sentences=300, batch_size=4))
    assert (tmp_path / "step8").is_dir()
    train_toy(tmp_path, ToyConfig(steps=3, n_checkpoints=4, n_sentences=300, batch_size=4))
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step0", "step1", "step2", "step3"]


def test_bad_config_is_a_user_error() -> None:
    from logitlab.errors import LogitlabError
    with pytest.raises(LogitlabError):
        ToyConfig(steps=0)
    with pytest.raises(LogitlabError):
        ToyConfig(d_model=66, n_heads=4)
