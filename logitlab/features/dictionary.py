"""The in-memory dictionary types: one layer's transcoder and a model's set of them.

A transcoder reads a layer's MLP input (after its pre-norm) and writes the MLP's output (after any post-MLP
norm): features = act(x @ W_enc + b_enc), output = features @ W_dec + b_dec (+ x @ W_skip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Transcoder", "DictionarySet"]


@dataclass(frozen=True, eq=False)
class Transcoder:
    """One layer's dictionary: features = act(x @ W_enc + b_enc); output = features @ W_dec + b_dec (+ x @ W_skip)."""

    W_enc: Tensor  # (d_in, n_features)
    b_enc: Tensor  # (n_features,)
    W_dec: Tensor  # (n_features, d_out)
    b_dec: Tensor  # (d_out,)
    activation: Literal["relu", "jumprelu", "topk"] = "relu"
    threshold: Tensor | None = None  # (n_features,) JumpReLU
    k: int | None = None  # TopK
    W_skip: Tensor | None = None  # (d_in, d_out)

    def pre(self, x: Tensor) -> Tensor:
        """Pre-activations x @ W_enc + b_enc, (..., n_features)."""
        return x @ self.W_enc.to(x.dtype) + self.b_enc.to(x.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations act(pre(x)), (..., n_features)."""
        pre = self.pre(x)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold.to(pre.dtype))
        assert self.k is not None
        top = torch.relu(pre).topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)

    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """f @ W_dec + b_dec, plus x @ W_skip when the transcoder has a skip connection and ``x`` is given."""
        out = f @ self.W_dec.to(f.dtype) + self.b_dec.to(f.dtype)
        if self.W_skip is not None and x is not None:
            out = out + x @ self.W_skip.to(x.dtype)
        return out


@dataclass(frozen=True, eq=False)
class DictionarySet:
    """Per-layer transcoders (one per layer, layer i reads layer i's MLP input and writes its MLP output)."""

    layers: tuple[Transcoder, ...]  # index = model layer
    kind: Literal["transcoder", "sae"] = "transcoder"
    input_point: Literal["mlp_in"] = "mlp_in"
    output_point: Literal["mlp_out"] = "mlp_out"
    model: str | None = None
    d_model: int = 0

    @property
    def n_features(self) -> int:
        """Features per layer (all layers have the same number)."""
        return int(self.layers[0].W_enc.shape[1])
