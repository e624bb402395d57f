"""Direct logit attribution: DLA reconstruction, logit lens, layer attribution.

Each residual-stream vector at the final position is pushed through the final norm with its scale frozen at
the clean run's value and dotted with the answer direction ``W_U[:, correct] − W_U[:, incorrect]``
(TransformerLens's ``apply_ln_to_stack`` + ``residual_stack_to_logit_diff``). Because the map is linear:

* the final residual stream reconstructs the model's logit difference minus the bias term (b_U, norm bias);
* the layer components (embed, pos_embed, each attn_out, each mlp_out) sum to that reconstruction;
* the logit lens at ``final_post`` equals it.

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

__all__ = ["DLAResult", "ComponentResult", "dla", "logit_lens", "layer_attribution"]


@dataclass(frozen=True)
class DLAResult:
    reconstructed: Float[Tensor, " batch"]
    bias_term: Float[Tensor, " batch"]
    model: Float[Tensor, " batch"]

    @property
    def relative_error(self) -> float:
        m = float(self.model.mean())
        return abs(float(self.reconstructed.mean() + self.bias_term.mean()) - m) / max(abs(m), 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return {"reconstructed_mean": float(self.reconstructed.mean()), "bias_term": float(self.bias_term.mean()),
                "model_mean": float(self.model.mean()), "relative_error": self.relative_error,
                "reconstructed_per_prompt": self.reconstructed.tolist()}


@dataclass(frozen=True)
class ComponentResult:
    """Logit difference of labelled residual-stream components, per prompt."""

    labels: tuple[str, ...]
    values: Float[Tensor, "component batch"]

    @property
    def mean(self) -> list[float]:
        return self.values.mean(-1).tolist()

    def to_dict(self) -> dict[str, Any]:
        mean, se = mean_stderr(self.values)
        return {"labels": list(self.labels), "values": mean.tolist(), "stderr": se.tolist()}

    def to_frame(self) -> Any:
        import pandas as pd
        mean, se = mean_stderr(self.values)
        return pd.DataFrame({"component": self.labels, "logit_diff": mean.numpy(), "stderr": se.numpy()})


def dla(run: CleanRun) -> DLAResult:
    """Reconstruct the logit difference from the final residual stream."""
    rec = run.project(run.at_final(run.cache.resid_final))
    return DLAResult(reconstructed=rec.cpu(), bias_term=run.bias_term.cpu(), model=run.logit_diff.cpu())


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
