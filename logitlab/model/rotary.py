"""Rotary position embeddings as logitlab runs them: one frozen description per layer, read from a Hugging Face
config, with the scaled types (linear, dynamic, llama3, yarn, longrope) computed by logitlab's own formulas.

Each type's inverse frequencies (and the attention factor yarn and longrope multiply cos and sin by) follow the
Hugging Face implementation; the tests compare the forward pass with Hugging Face's on tiny models with prompts
longer than the original context, so a wrong formula shows up there. Unknown types or parameters raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from logitlab.errors import LogitlabError

__all__ = ["Rotary", "ROPE_TYPES", "read_rotary", "rope_cos_sin", "apply_rope", "cfg_value"]


def cfg_value(hf_config: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` that the config sets (not None), else ``default``."""
    for n in names:
        v = getattr(hf_config, n, None)
        if v is not None:
            return v
    return default


@dataclass(frozen=True, kw_only=True)
class Rotary:
    """How one layer's rotary embedding turns positions into angles: Hugging Face's ``rope_parameters``, checked.

    ``kind`` is the ``rope_type``. The inverse frequencies are computed here from the published formulas (not by
    calling transformers), so the forward-pass tests against Hugging Face check them independently:

    * ``default``: θ^(−2i/d);
    * ``linear``: default / ``factor`` (position interpolation);
    * ``dynamic``: default with θ raised to θ·(factor·n/N − (factor − 1))^(d/(d−2)) for a sequence of n > N
      positions (N = ``max_position``): static for a given sequence length, as Hugging Face computes it for a
      fresh model at that length (its cached frequencies otherwise depend on earlier, longer calls);
    * ``llama3``: wavelengths above N₀/low_freq_factor divided by ``factor``, below N₀/high_freq_factor kept,
      smoothly interpolated between (N₀ = ``original_max_position``);
    * ``yarn``: per-dimension blend of interpolated and extrapolated frequencies with a linear ramp between the
      correction dimensions of ``beta_fast`` and ``beta_slow`` rotations; cos and sin are scaled by
      ``attention_factor`` (0.1·ln(factor) + 1 by default);
    * ``longrope``: θ^(−2i/d) divided per dimension by ``long_factor`` when the sequence is longer than N₀, else by
      ``short_factor``; cos and sin scaled by ``attention_factor`` (√(1 + ln(factor)/ln N₀) by default).
    """

    kind: str
    theta: float
    dim: int  # rotated dimensions of each head
    factor: float = 1.0
    max_position: int = 0  # dynamic: the model's max_position_embeddings
    original_max_position: int = 0  # llama3, yarn, longrope
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    truncate: bool = True  # yarn: round the correction range outwards to whole dimensions
    short_factor: tuple[float, ...] = ()  # longrope
    long_factor: tuple[float, ...] = ()  # longrope
    attention_factor: float = 1.0  # multiplies cos and sin (yarn, longrope)

    def __post_init__(self) -> None:
        if self.kind not in ROPE_TYPES:
            raise LogitlabError(f"rotary embedding type {self.kind!r} is not supported",
                                f"supported rotary types: {', '.join(ROPE_TYPES)}")
        if self.kind == "longrope" and not (len(self.short_factor) == len(self.long_factor) == self.dim // 2):
            raise LogitlabError(f"longrope factors have lengths {len(self.short_factor)} and {len(self.long_factor)}, "
                                f"expected {self.dim // 2} (half the rotary dimension)")

    def inv_freq(self, seq_len: int) -> Tensor:
        """Inverse frequencies (dim/2,), float32 on the CPU, for sequences of ``seq_len`` positions."""
        d = self.dim
        exponent = torch.arange(0, d, 2, dtype=torch.int64).float() / d  # 2i/d
        theta = self.theta
        if self.kind == "dynamic":
            n, N = max(seq_len, self.max_position), self.max_position
            theta = theta * (self.factor * n / N - (self.factor - 1)) ** (d / (d - 2))
        base = 1.0 / (theta ** exponent)
        if self.kind in ("default", "dynamic"):
            return base
        if self.kind == "linear":
            return base / self.factor
        if self.kind == "longrope":
            ext = self.long_factor if seq_len > self.original_max_position else self.short_factor
            return 1.0 / (torch.tensor(ext, dtype=torch.float32) * theta ** exponent)
        if self.kind == "llama3":
            wavelength = 2 * math.pi / base
            n0 = self.original_max_position
            lo, hi = self.low_freq_factor, self.high_freq_factor
            # Share of the unscaled frequency kept: 0 for long wavelengths, 1 for short ones, linear in N0/λ between.
            keep = ((n0 / wavelength - lo) / (hi - lo))
            keep = torch.where(wavelength > n0 / lo, torch.zeros_like(keep),
                               torch.where(wavelength < n0 / hi, torch.ones_like(keep), keep))
            return (1 - keep) * base / self.factor + keep * base
        # yarn
        def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times over N0
            return d * math.log(self.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(self.theta))
        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        interpolated = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        return base / self.factor * interpolated + base * (1 - interpolated)

    def describe(self) -> str:
        return self.kind if self.kind == "default" else f"{self.kind} (factor {self.factor:g})"


#: Rotary types logitlab computes, and the ``rope_parameters`` keys each may carry (all of them change numbers).
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
_ROPE_KEYS = {
    "default": set(), "linear": {"factor"}, "dynamic": {"factor"},
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate"},
    "longrope": {"short_factor", "long_factor", "original_max_position_embeddings", "attention_factor", "factor"},
}
_ROPE_COMMON = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
_ROPE_REQUIRED = {"default": set(), "linear": {"factor"}, "dynamic": {"factor"},
                  "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
                  "yarn": {"original_max_position_embeddings"},
                  "longrope": {"short_factor", "long_factor", "original_max_position_embeddings"}}


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def read_rotary(hf_config: Any, layer_type: str | None, d_head: int, partial: float | None = None) -> Rotary:
    """One layer's :class:`Rotary` from a config's ``rope_parameters`` (per layer type where the model has them).

    ``partial``: the rotated share of each head where the family has one (GPT-NeoX); elsewhere a
    ``partial_rotary_factor`` other than 1 is refused. Unknown rotary types and keys are refused by name.
    """
    top = getattr(hf_config, "rope_parameters", None) or {}
    params = top
    if layer_type is not None and isinstance(top.get(layer_type), dict):
        params = top[layer_type]
    if not isinstance(params, dict):
        raise LogitlabError(f"unreadable rope_parameters {params!r}")
    kind = params.get("rope_type", params.get("type", "default"))
    if "type" in params and params.get("rope_type", params["type"]) != params["type"]:
        raise LogitlabError(f"rope_parameters name two rotary types: {params['type']!r} and {params['rope_type']!r}")
    if kind not in _ROPE_KEYS:
        raise LogitlabError(f"rotary embedding type {kind!r} is not supported",
                            f"supported rotary types: {', '.join(ROPE_TYPES)}")
    unknown = sorted(set(params) - _ROPE_COMMON - _ROPE_KEYS[kind])
    if unknown:
        raise LogitlabError(f"rope_parameters of type {kind!r} carry keys logitlab does not implement: "
                            f"{', '.join(unknown)}", "refused rather than guess what they change")
    missing = sorted(_ROPE_REQUIRED[kind] - set(params))
    if missing:
        raise LogitlabError(f"rope_parameters of type {kind!r} lack {', '.join(missing)}")
    prf = float(params.get("partial_rotary_factor", 1.0) if partial is None else partial)
    if partial is None and prf != 1.0:
        raise LogitlabError(f"partial_rotary_factor {prf} is not supported for {hf_config.model_type!r}")
    theta = params.get("rope_theta")
    theta = float(theta if theta is not None else cfg_value(hf_config, "rope_theta", default=10000.0))
    dim = int(d_head * prf)
    max_pos = int(cfg_value(hf_config, "max_position_embeddings", default=0))
    orig = params.get("original_max_position_embeddings")
    extra: dict[str, Any] = {}
    if kind in ("linear", "dynamic", "llama3"):
        extra["factor"] = float(params["factor"])
    if kind == "dynamic":
        extra["max_position"] = max_pos
    if kind in ("llama3", "yarn", "longrope"):
        extra["original_max_position"] = int(orig)
    if kind == "llama3":
        extra.update(low_freq_factor=float(params["low_freq_factor"]), high_freq_factor=float(params["high_freq_factor"]))
    if kind == "yarn":
        factor = float(params.get("factor") or max_pos / int(orig))
        att = params.get("attention_factor")
        if att is None:
            m, m_all = params.get("mscale"), params.get("mscale_all_dim")
            att = _yarn_mscale(factor, m) / _yarn_mscale(factor, m_all) if m and m_all else _yarn_mscale(factor)
        # As Hugging Face: `truncate` is read from the top level of rope_parameters (never per layer type).
        extra.update(factor=factor, attention_factor=float(att), beta_fast=float(params.get("beta_fast") or 32),
                     beta_slow=float(params.get("beta_slow") or 1), truncate=bool(top.get("truncate", True)))
    if kind == "longrope":
        factor = float(params.get("factor") or max_pos / int(orig))
        att = params.get("attention_factor")
        if att is None:
            att = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(int(orig)))
        extra.update(factor=factor, attention_factor=float(att),
                     short_factor=tuple(float(x) for x in params["short_factor"]),
                     long_factor=tuple(float(x) for x in params["long_factor"]))
    return Rotary(kind=kind, theta=theta, dim=dim, **extra)


def rope_cos_sin(rot: Rotary, T: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """cos and sin (T, rotary dim) of ``rot`` for a sequence of ``T`` positions, times its attention factor.

    The frequencies are those of ``rot`` for that length (dynamic and longrope scaling depend on it: a batch runs
    at its padded length, as Hugging Face runs a padded batch); cos and sin are multiplied by the rotary type's
    attention factor (yarn, longrope), as in Hugging Face.
    """
    inv = rot.inv_freq(T).to(device)
    freqs = torch.arange(T, device=device).float()[:, None] * inv[None, :]  # (T, dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, dim)
    cos, sin = emb.cos(), emb.sin()
    if rot.attention_factor != 1.0:
        cos, sin = cos * rot.attention_factor, sin * rot.attention_factor
    return cos, sin


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, T, heads, dh) by cos/sin: (T, rd) shared or (B, T, rd) per row.

    Rotate-half convention of the Hugging Face Llama/Gemma/GPT-NeoX code; only the leading rd dims rotate
    (GPT-NeoX, Phi-3: rd < dh).
    """
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    half = rd // 2
    rot = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    out = x_rot * cos[:, :, None, :] + rot * sin[:, :, None, :]
    return out if rd == x.shape[-1] else torch.cat([out, x_pass], dim=-1)
