"""Task files: the built-in tasks, validation errors, and no crash but LogitlabError on any input."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logitlab.errors import LogitlabError
from logitlab.task import load_task, task_from_dict, tokenize_task

GOOD = {"name": "t", "templates": ["{} is here, isn’t"],
        "classes": {"she": {"answer": " she", "incorrect": [" he"]}, "he": {"answer": " he", "incorrect": " she"}},
        "subjects": [{"name": "Mary", "class": "she"}, {"name": "John", "class": "he"}]}


def test_builtin_pronouns_is_the_reference_set() -> None:
    t = load_task("pronouns")
    assert len(t.prompts) == 20
    assert t.prompts[:4] == ("Mary is a great friend, isn’t", "John is a great friend, isn’t",
                             "Dan is a great friend, isn’t", "Amy is a great friend, isn’t")
    assert t.prompts[4] == "Mary is an amazing person, isn’t"
    assert t.prompts[-1] == "Amy is an excellent student, isn’t"
    assert t.correct[:4] == (" she", " he", " he", " she") and t.incorrect[0] == (" he",)
    assert t.prepend_bos
    assert t.patch_pairs[0].clean == "Mary is a great friend, isn’t"
    assert t.patch_pairs[0].corrupted == "John is a great friend, isn’t" and t.patch_pairs[0].correct == " she"


def test_builtin_pronouns_large_is_balanced() -> None:
    t = load_task("pronouns-large")
    assert t.correct.count(" she") == t.correct.count(" he") >= 20 * 10
    assert t.correct.count(" it") > 0
    assert len({p.split(" is ")[0] for p in t.prompts}) >= 40


@pytest.mark.parametrize("change, message", [
    ({"subjects": [{"name": "Mary", "class": "they"}]}, "unknown class"),
    ({"colour": "red"}, "unknown key"),
    ({"templates": ["no placeholder"]}, "exactly one"),
    ({"subjects": [{"name": "Mary", "class": "she"}, {"name": "Mary", "class": "she"}]}, "duplicate prompt"),
    ({"templates": [], "subjects": []}, "non-empty"),
])
def test_invalid_tasks_name_the_problem(change: dict, message: str) -> None:
    with pytest.raises(LogitlabError, match=message):
        task_from_dict({**GOOD, **change})


def test_empty_file_and_bad_yaml_line(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(LogitlabError, match="empty"):
        load_task(tmp_path / "empty.yaml")
    (tmp_path / "bad.yaml").write_text("name: x\ntemplates: [\n  - a: b: c\n")
    with pytest.raises(LogitlabError, match="line"):
        load_task(tmp_path / "bad.yaml")


def test_multi_token_answer_shows_its_tokenisation(tiny_model) -> None:
    t = task_from_dict({**GOOD, "classes": {"she": {"answer": " friendship", "incorrect": [" he"]},
                                            "he": {"answer": " he", "incorrect": [" she"]}}})
    with pytest.raises(LogitlabError, match="not a single token.*tokenises as"):
        tokenize_task(t, tiny_model.tokenizer)


def test_pair_length_mismatch(tiny_model) -> None:
    t = task_from_dict({**GOOD, "patching": [{"clean": "Mary is here", "corrupted": "Dan is here", "class": "she"}]})
    with pytest.raises(LogitlabError, match="different token lengths"):
        tokenize_task(t, tiny_model.tokenizer)


yaml_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD) + ["patching", "prompts", "prepend_bos", "x"]), yaml_values,
                       max_size=6))
def test_any_structure_gives_a_task_or_logitlab_error(data: dict) -> None:
    try:
        task_from_dict(data)
    except LogitlabError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_file_text_gives_a_task_or_logitlab_error(text: str) -> None:
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        load_task(f.name)
    except LogitlabError:
        pass
    finally:
        Path(f.name).unlink()
