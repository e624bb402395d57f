"""join_caches: the table of each CleanCache field's batch dimension covers every field, agrees with the fields'
shape annotations, and joining the caches of disjoint prompts equals the cache of all of them run together."""

from __future__ import annotations

import typing
from dataclasses import fields

import pytest
import torch

from logitlab.analyses.pairset import join_caches, pair_caches
from logitlab.model.readout import CACHE_BATCH_DIM, CleanCache


def _dims(annotation: object) -> list[str]:
    """The dimension names of a jaxtyping annotation (``X | None`` read as ``X``)."""
    shaped = [a for a in (typing.get_args(annotation) or (annotation,)) if hasattr(a, "dim_str")]
    assert len(shaped) == 1, f"not one shaped tensor type: {annotation}"
    return shaped[0].dim_str.split()


def test_the_table_covers_every_field_and_agrees_with_the_annotations() -> None:
    names = [f.name for f in fields(CleanCache)]
    assert set(CACHE_BATCH_DIM) == set(names), (f"fields without an entry: {set(names) - set(CACHE_BATCH_DIM)}; "
                                                f"entries without a field: {set(CACHE_BATCH_DIM) - set(names)}")
    hints = typing.get_type_hints(CleanCache)
    for name in names:
        dims = _dims(hints[name])
        assert dims.count("batch") == 1 and dims.index("batch") == CACHE_BATCH_DIM[name], (name, dims)


@pytest.mark.parametrize("tiny_model", ["gpt2", "gemma3"], indirect=True)
def test_joined_caches_equal_one_run_of_all_prompts(tiny_model) -> None:  # noqa: ANN001
    """gpt2 has position embeddings, gemma3 post-attention norms: every optional field is filled by one of them."""
    g = torch.Generator().manual_seed(0)
    V = tiny_model.runner.w.W_U.shape[1]
    clean, corrupted = torch.randint(1, V, (5, 6), generator=g), torch.randint(1, V, (5, 6), generator=g)
    whole = pair_caches(tiny_model.runner, clean, corrupted)
    joined = join_caches([pair_caches(tiny_model.runner, clean[a:b], corrupted[a:b]) for a, b in ((0, 2), (2, 3), (3, 5))])
    for w, j in zip(whole, joined):
        for f in fields(CleanCache):
            x, y = getattr(w, f.name), getattr(j, f.name)
            assert (x is None) == (y is None), f.name
            if x is not None:
                assert x.shape == y.shape, (f.name, x.shape, y.shape)
                d = float((x - y).abs().max())
                assert d <= 1e-5 * max(1.0, float(x.abs().max())), f"{f.name}: max diff {d:.3g}"
