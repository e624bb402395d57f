"""Direct logit attribution: DLA reconstruction, logit lens, layer attribution.

Each residual-stream vector at the final position is pushed through the final norm with its scale frozen at
the clean run's value and dotted with the answer direction ``W_U[:, correct] − W_U[:, incorrect]``
(TransformerLens's ``apply_ln_to_stack`` + ``residual_stack_to_logit_diff``). Because the map is linear:

* the final residual stream reconstructs the model's logit difference minus the bias term (b_U, norm bias);
* the layer components (embed, pos_embed, each attn_out, each mlp_out) sum to that reconstruction;
* the logit lens at ``final_post`` equals it.

The reconstruction check is taken per prompt: ``|reconstructed + bias − logit diff| / max(1, |logit diff|)``,
and the check reports its maximum over prompts. A relative error of the *means* hides per-prompt errors that
cancel, and blows up when the mean logit difference is near 0 (she and he prompts pulling opposite ways); the
floor of 1 logit keeps a prompt with a logit difference near 0 from doing the same.

On a model with a final-logit soft-cap (Gemma-2: logits → tanh(logits / cap) · cap) the logit difference is not
linear in the residual stream. The attributions then decompose the logit difference *before* the cap
(:attr:`CleanRun.attributed_logit_diff`), exactly and by construction, and the reconstruction check compares
against that pre-cap value; the model's own (capped) logit difference is reported next to it
(``model_capped``).

Every mean over prompts comes with its standard error and a seeded 95% bootstrap CI
(:func:`logitlab.stats.paired`).

Example:
    >>> res = layer_attribution(run); res.labels[:2], res.mean[:2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun, mean_stderr
from logitlab.stats import paired
from logitlab.results.core import DLA, LayerAttribution, LogitLens

__all__ = ["DLAResult", "ComponentResult", "dla", "logit_lens", "layer_attribution"]


@dataclass(frozen=True)
class DLAResult:
    reconstructed: Float[Tensor, " batch"]
    bias_term: Float[Tensor, " batch"]
    model: Float[Tensor, " batch"]  # the logit difference decomposed: the model's own, or pre-cap if soft-capped
    model_capped: Float[Tensor, " batch"] | None = None  # the model's own (capped) logit difference, if soft-capped
    final_logit_softcap: float | None = None

    @property
    def abs_error_per_prompt(self) -> Tensor:
        """|reconstructed + bias − model| per prompt (float64)."""
        return (self.reconstructed.double() + self.bias_term.double() - self.model.double()).abs()

    @property
    def relative_error_per_prompt(self) -> Tensor:
        """Per-prompt error relative to max(1, |logit diff|): a prompt near 0 does not blow it up."""
        return self.abs_error_per_prompt / self.model.double().abs().clamp(min=1.0)

    @property
    def relative_error(self) -> float:
        """The check's number: the largest per-prompt relative error."""
        return float(self.relative_error_per_prompt.max())

    @property
    def max_abs_error(self) -> float:
        return float(self.abs_error_per_prompt.max())

    def to_dict(self) -> DLA:
        return {"reconstructed_mean": float(self.reconstructed.mean()), "bias_term": float(self.bias_term.mean()),
                "model_mean": float(self.model.mean()), "relative_error": self.relative_error,
                "max_abs_error": self.max_abs_error,
                "relative_error_per_prompt": self.relative_error_per_prompt.tolist(),
                "reconstructed_per_prompt": self.reconstructed.tolist(),
                **({} if self.model_capped is None else {"final_logit_softcap": self.final_logit_softcap,
                                                         "model_capped_mean": float(self.model_capped.mean())})}


@dataclass(frozen=True)
class ComponentResult:
    """Logit difference of labelled residual-stream components, per prompt."""

    labels: tuple[str, ...]
    values: Float[Tensor, "component batch"]

    @property
    def mean(self) -> list[float]:
        return self.values.mean(-1).tolist()

    def to_dict(self) -> LogitLens | LayerAttribution:
        mean, se = mean_stderr(self.values)
        return {"labels": list(self.labels), "values": mean.tolist(), "stderr": se.tolist(),
                "ci": paired(self.values).ci.tolist()}

    def to_frame(self) -> Any:
        import pandas as pd
        mean, se = mean_stderr(self.values)
        ci = paired(self.values).ci
        return pd.DataFrame({"component": self.labels, "logit_diff": mean.numpy(), "stderr": se.numpy(),
                             "ci_low": ci[:, 0].numpy(), "ci_high": ci[:, 1].numpy()})


def dla(run: CleanRun) -> DLAResult:
    """Reconstruct the logit difference (pre-cap on a soft-capped model) from the final residual stream."""
    rec = run.project(run.at_final(run.cache.resid_final))
    capped = run.pre_cap_logit_diff is not None
    return DLAResult(reconstructed=rec.cpu(), bias_term=run.bias_term.cpu(), model=run.attributed_logit_diff.cpu(),
                     model_capped=run.logit_diff.cpu() if capped else None,
                     final_logit_softcap=run.model.spec.final_softcap if capped else None)


def logit_lens(run: CleanRun) -> ComponentResult:
    """Logit difference of the accumulated residual stream before each layer, mid-layer, and at the end."""
    c = run.cache
    labels, vecs = [], []
    for layer in range(run.model.spec.n_layers):
        labels += [f"{layer}_pre", f"{layer}_mid"]
        vecs += [run.at_final(c.resid_pre[layer]), run.at_final(c.resid_mid[layer])]
    labels.append("final_post")
    vecs.append(run.at_final(c.resid_final))
    return ComponentResult(tuple(labels), run.project(torch.stack(vecs)).cpu())


def layer_attribution(run: CleanRun) -> ComponentResult:
    """Logit difference of each component the residual stream is the sum of."""
    c = run.cache
    labels, vecs = ["embed"], [run.at_final(c.embed)]
    if c.pos_embed is not None:
        labels.append("pos_embed")
        vecs.append(run.at_final(c.pos_embed))
    for layer in range(run.model.spec.n_layers):
        labels += [f"{layer}_attn_out", f"{layer}_mlp_out"]
        vecs += [run.at_final(c.attn_out[layer]), run.at_final(c.mlp_out[layer])]
    return ComponentResult(tuple(labels), run.project(torch.stack(vecs)).cpu())
