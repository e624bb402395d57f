"""Feature cards' logit effects read the unembedding in column blocks: the same top and bottom tokens and values
as the product with the whole unembedding (float32 and bfloat16 models), and no float32 tensor as large as the
unembedding is made on a bfloat16 model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import logitlab.features.cards as cards
from logitlab.model.load import load_model
from tests.tiny import random_dictionaries

_bf16: dict[str, Any] = {}


def _model(tiny_model: Any, dtype: str) -> Any:
    if dtype == "float32":
        return tiny_model
    key = tiny_model.spec.model_type + tiny_model.source
    if key not in _bf16:
        _bf16[key] = load_model(tiny_model.source, dtype="bfloat16", cache=False)
    return _bf16[key]


def _dense(model: Any, dictionaries: Any, keys: list[tuple[int, int]], k: int) -> dict[tuple[int, int], Any]:
    """The product with the whole unembedding widened to float32 at once (the implementation before blocks)."""
    w, spec = model.runner.w, model.runner.spec
    W_U = w.W_U.float()  # (D, V)
    out = {}
    for layer, f in keys:
        row = dictionaries.layers[layer].W_dec[[f]].float()  # (1, D)
        if spec.normalization == "LN":
            row = row - row.mean(-1, keepdim=True)
        if w.lnf_w is not None:
            row = row * w.lnf_w.float()
        eff = (row @ W_U)[0]  # (V,)
        out[(layer, f)] = (eff.topk(k), eff.topk(k, largest=False))
    return out


class _Float32Sizes(TorchDispatchMode):
    """Records the element count of the largest float32 tensor any operation returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("tiny_model", ["gpt2", "gemma3"], indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cols", [4, 7, 64, 100_000])
def test_blocks_equal_the_whole_unembedding(tiny_model: Any, dtype: str, cols: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks smaller than k (4), with a partial last block (7, 64) and one block for the whole vocabulary."""
    m = _model(tiny_model, dtype)
    assert m.runner.w.W_U.dtype == getattr(torch, dtype)
    d = random_dictionaries(m.spec.d_model, m.spec.n_layers, "relu", n_features=16)
    keys = [(0, 3), (0, 5), (m.spec.n_layers - 1, 7), (1, 0), (1, 15)]
    monkeypatch.setattr(cards, "_VOCAB_COLS", cols)
    k = 5
    got = cards.logit_effects(m, d, keys, k=k, chunk=2)
    want = _dense(m, d, keys, k)
    V = m.runner.w.W_U.shape[1]
    assert cols >= V or cols == 4 or V % cols, f"no partial last block: {V} tokens in blocks of {cols}"
    for key in keys:
        for side, ref in zip(("top", "bottom"), want[key]):
            assert [e["token"] for e in got[key][side]] == ref.indices.tolist(), f"{key} {side}"
            diff = max(abs(e["value"] - v) for e, v in zip(got[key][side], ref.values.tolist()))
            scale = float(ref.values.abs().max())
            assert diff <= 1e-6 * scale, f"{key} {side}: max diff {diff:.2e} (scale {scale:.2e})"
        assert got[key]["top"][0]["text"] == m.tokenizer.decode([got[key]["top"][0]["token"]])


@pytest.mark.parametrize("tiny_model", ["llama_gqa"], indirect=True)
def test_bfloat16_model_makes_no_float32_unembedding(tiny_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(tiny_model, "bfloat16")
    d = random_dictionaries(m.spec.d_model, m.spec.n_layers, "relu", n_features=16)
    keys = [(0, 1), (0, 2), (m.spec.n_layers - 1, 4)]
    n_unembed = m.runner.w.W_U.numel()
    monkeypatch.setattr(cards, "_VOCAB_COLS", 32)
    with _Float32Sizes() as sizes:
        cards.logit_effects(m, d, keys, k=5)
    assert sizes.largest < n_unembed // 4, (f"a float32 tensor of {sizes.largest} elements was made "
                                            f"(the unembedding has {n_unembed})")
    # The measurement can fail: the whole unembedding widened at once is seen.
    with _Float32Sizes() as dense:
        _dense(m, d, keys, 5)
    assert dense.largest >= n_unembed, dense.largest
