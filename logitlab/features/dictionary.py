"""Sparse dictionaries over a model's MLPs: per-layer transcoders and SAEs, in one in-memory type.

A :class:`Transcoder` replaces one layer's MLP with sparse features: ``f = act(x @ W_enc + b_enc)`` read from
the MLP's input, ``out = f @ W_dec + b_dec (+ x @ W_skip)`` written where the MLP writes. An SAE is the same
map with its input and output at one point (here: the MLP's output). A :class:`DictionarySet` holds one per
layer, says where they read and write, and which model they were trained on; :meth:`DictionarySet.check`
refuses a model whose layers, width or name do not match.

Activations (the same numbers as circuit-tracer and SAELens compute, see ``docs/features.md``):

* ``relu``: ``max(pre, 0)``.
* ``jumprelu``: ``pre · [pre > threshold]`` (circuit-tracer's definition; SAELens's ``relu(pre) · [pre >
  threshold]`` is the same with the threshold clamped at 0, which the SAELens loader does).
* ``topk``: the ``k`` largest pre-activations of each row, through a ReLU (SAELens; circuit-tracer keeps a
  negative value among the top k, the only case where the two differ).

Shapes: n_features F, input width d_in, output width d_out (both d_model here).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.errors import LogitlabError

__all__ = ["Transcoder", "DictionarySet", "ACTIVATIONS", "POINTS"]

ACTIVATIONS = ("relu", "jumprelu", "topk")
#: Where a dictionary reads or writes: the MLP's input after its pre-norm, or what the MLP adds to the residual
#: stream (after a post-MLP norm where the model has one).
POINTS = ("mlp_in", "mlp_out")


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

    def __post_init__(self) -> None:
        def bad(msg: str) -> LogitlabError:
            return LogitlabError(f"inconsistent transcoder: {msg}")
        if self.W_enc.ndim != 2 or self.W_dec.ndim != 2:
            raise bad(f"W_enc {tuple(self.W_enc.shape)} and W_dec {tuple(self.W_dec.shape)} must be matrices")
        d_in, F = self.W_enc.shape
        if self.W_dec.shape[0] != F:
            raise bad(f"W_enc {tuple(self.W_enc.shape)} has {F} features, W_dec {tuple(self.W_dec.shape)} "
                      f"{self.W_dec.shape[0]}")
        if tuple(self.b_enc.shape) != (F,):
            raise bad(f"b_enc {tuple(self.b_enc.shape)} should be ({F},)")
        if tuple(self.b_dec.shape) != (self.W_dec.shape[1],):
            raise bad(f"b_dec {tuple(self.b_dec.shape)} should be ({self.W_dec.shape[1]},)")
        if self.activation not in ACTIVATIONS:
            raise bad(f"unknown activation {self.activation!r} (known: {', '.join(ACTIVATIONS)})")
        if self.activation == "jumprelu":
            if self.threshold is None or tuple(self.threshold.shape) != (F,):
                got = None if self.threshold is None else tuple(self.threshold.shape)
                raise bad(f"a JumpReLU transcoder needs a threshold of shape ({F},), got {got}")
        elif self.threshold is not None:
            raise bad(f"a threshold is given but the activation is {self.activation!r}")
        if self.activation == "topk":
            if not isinstance(self.k, int) or not 0 < self.k <= F:
                raise bad(f"a TopK transcoder needs an integer k in 1…{F}, got {self.k!r}")
        elif self.k is not None:
            raise bad(f"k is given but the activation is {self.activation!r}")
        if self.W_skip is not None and tuple(self.W_skip.shape) != (d_in, self.W_dec.shape[1]):
            raise bad(f"W_skip {tuple(self.W_skip.shape)} should be ({d_in}, {self.W_dec.shape[1]})")

    @property
    def n_features(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    def pre(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_features"]:
        """The pre-activation ``x @ W_enc + b_enc``."""
        return x @ self.W_enc + self.b_enc

    def act(self, pre: Float[Tensor, "... n_features"]) -> Float[Tensor, "... n_features"]:
        """The activation function applied to pre-activations."""
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold).to(pre.dtype)
        assert self.k is not None
        values, idx = pre.topk(self.k, dim=-1, sorted=False)  # (..., k)
        return torch.zeros_like(pre).scatter_(-1, idx, values.relu())

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_features"]:
        """Feature activations ``act(pre(x))``."""
        return self.act(self.pre(x))

    def decode(self, f: Float[Tensor, "... n_features"], x: Tensor | None = None) -> Float[Tensor, "... d_out"]:
        """``f @ W_dec + b_dec``, plus ``x @ W_skip`` when the transcoder has a skip connection and ``x`` is given."""
        out = f @ self.W_dec + self.b_dec
        if self.W_skip is not None and x is not None:
            out = out + x @ self.W_skip
        return out

    def __call__(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The reconstruction: ``decode(encode(x), x)``."""
        return self.decode(self.encode(x), x)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Transcoder:
        """A copy with every tensor on ``device`` in ``dtype`` (either may be None: unchanged)."""
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, W_enc=move(self.W_enc), b_enc=move(self.b_enc), W_dec=move(self.W_dec),
                       b_dec=move(self.b_dec), threshold=move(self.threshold), W_skip=move(self.W_skip))

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor that is set, by field name."""
        names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True, eq=False)
class DictionarySet:
    """Per-layer transcoders (one per layer, layer i reads layer i's MLP input and writes its MLP output).

    ``input_point``/``output_point``: ``"mlp_in"`` is what the MLP reads in logitlab's staged runner (its
    pre-norm's output without the norm's weight, which is folded into the MLP: ``Runner.pre_norm(layer, 2,
    resid_mid)``, of resid_pre in parallel blocks; TransformerLens's ``ln2.hook_normalized``, while ``mlp.hook_in``
    on an unfolded model is after the weight: see :mod:`logitlab.features.formats`); ``"mlp_out"`` is what it adds
    to the residual stream (``CleanCache.mlp_out``: after Gemma's post-MLP norm; ``hook_mlp_out``). A transcoder
    set reads ``mlp_in`` and writes ``mlp_out``; an SAE set (``kind="sae"``) reads and writes ``mlp_out``.
    """

    layers: tuple[Transcoder, ...]  # index = model layer
    kind: Literal["transcoder", "sae"] = "transcoder"
    input_point: Literal["mlp_in", "mlp_out"] = "mlp_in"
    output_point: Literal["mlp_out"] = "mlp_out"
    model: str | None = None  # the model it was trained on
    d_model: int = 0

    def __post_init__(self) -> None:
        if not self.layers:
            raise LogitlabError("a dictionary set needs at least one layer")
        if self.kind not in ("transcoder", "sae"):
            raise LogitlabError(f"unknown dictionary kind {self.kind!r} (known: transcoder, sae)")
        want = ("mlp_in", "mlp_out") if self.kind == "transcoder" else ("mlp_out", "mlp_out")
        if (self.input_point, self.output_point) != want:
            raise LogitlabError(f"a {self.kind} set reads {want[0]} and writes {want[1]}; got "
                                f"{self.input_point} → {self.output_point}")
        F = self.layers[0].n_features
        for i, tc in enumerate(self.layers):
            if not isinstance(tc, Transcoder):
                raise LogitlabError(f"layer {i} is a {type(tc).__name__}, not a Transcoder")
            if tc.n_features != F:
                raise LogitlabError(f"every layer needs the same number of features: layer 0 has {F}, "
                                    f"layer {i} has {tc.n_features}")
            if tc.d_in != self.d_model or tc.d_out != self.d_model:
                raise LogitlabError(f"layer {i} maps width {tc.d_in} to {tc.d_out}; the set's d_model is "
                                    f"{self.d_model}")

    @property
    def n_features(self) -> int:
        """Features per layer (all layers have the same number)."""
        return self.layers[0].n_features

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> Transcoder:
        return self.layers[layer]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DictionarySet:
        """A copy with every layer on ``device`` in ``dtype``."""
        return replace(self, layers=tuple(tc.to(device, dtype) for tc in self.layers))

    def check(self, model: Any, check_name: bool = True) -> None:
        """Raise a :class:`LogitlabError` unless this set fits ``model`` (a loaded logitlab ``Model``).

        Checked: one dictionary per layer, the width, and (with ``check_name``) the model it was trained on.
        """
        spec, name = model.spec, getattr(model, "name", None)
        if self.n_layers != spec.n_layers:
            raise LogitlabError(
                f"the dictionaries cover {self.n_layers} layers; model {name!r} has {spec.n_layers}",
                "a set needs one dictionary per layer of the model it is used with")
        if self.d_model != spec.d_model:
            raise LogitlabError(f"the dictionaries have width {self.d_model}; model {name!r} has d_model "
                                f"{spec.d_model}", "they were trained on another model")
        if check_name and self.model and name and not same_model(self.model, name):
            raise LogitlabError(
                f"the dictionaries were trained on {self.model!r}, not on the loaded model {name!r}",
                "load the model they were trained on (or pass check_name=False if it is the same model "
                "under another name)")


def same_model(a: str, b: str) -> bool:
    """Whether two model names denote the same model: compared without an owner prefix ("google/"), a
    description in brackets, a "-pt" suffix, case, or a trailing slash (a folder path)."""
    def norm(s: str) -> str:
        s = s.split(" (")[0].strip().rstrip("/").lower()
        s = s.rsplit("/", 1)[-1]
        return s.removesuffix("-pt")
    return norm(a) == norm(b)
