"""The ``features`` analysis: attribution graphs over transcoder features for each of a task's prompts, and the
features that matter for the logit difference across prompts (Ameisen et al. 2025's influence, with a
bootstrap CI over prompts). Off by default; ``logitlab run --analyses default,features --transcoders DIR``.

A feature is identified across prompts by (layer, index); its influence on a prompt is circuit-tracer's
normalised influence on the logit-difference target (direct and through other nodes), summed over the positions
where it is active, and 0 on prompts where it is not.

The check (``feature_check`` = k > 0): on every prompt the graph's top-k features by influence are zeroed in the
real model (:func:`~logitlab.features.interventions.check_top_features`), and the agreement of the graph's
predicted changes of the logit difference with the actual ones (Spearman, sign agreement) is summarised over
prompts with a bootstrap CI, for the measures in :data:`CHECK_MEASURES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from logitlab.errors import LogitlabError
from logitlab.registry import setting
from logitlab.stats import paired

__all__ = ["FeatureSettings", "task_features", "CHECK_MEASURES"]

#: The check's measures: name → what the graph's predicted change of the logit difference is compared with.
CHECK_MEASURES = {
    "zeroing": "zeroing, the replacement downstream (transcoders, clean errors; attention and norms live)",
    "model_zeroing": "zeroing in the real model (its own MLPs downstream)",
    "model_derivative": "a·dΔ/da in the real model (its own MLPs; scaled by 1 + 10⁻³)",
    "model_derivative_attention_held": "a·dΔ/da in the real model with attention patterns held",
    "model_derivative_attention_norms_held": "a·dΔ/da in the real model with attention patterns and norm scales "
                                             "held (only the MLPs' response differs from the graph's)",
    "model_zeroing_by_model_derivative": "not the graph: zeroing in the real model against the real model's own "
                                         "first-order prediction −a·dΔ/da (how far any exact linear attribution "
                                         "could agree with zeroing)",
}


@dataclass(frozen=True)
class FeatureSettings:
    """Settings of the features analysis."""

    transcoders: str = setting("", "folder or release name of the per-layer transcoders", flag="--transcoders",
                               help="Transcoders (folder or release name) for the features analysis.")
    feature_prompts: int = setting(16, "prompts attributed (the task's first ones)")
    feature_top: int = setting(20, "features listed, by mean influence")
    feature_check: int = setting(5, "top features per prompt zeroed in the real model to check the graph (0 = none)")

    def __post_init__(self) -> None:
        if self.feature_prompts < 1 or self.feature_top < 1 or self.feature_check < 0:
            raise LogitlabError("features settings: feature_prompts and feature_top must be ≥ 1, feature_check ≥ 0")


def task_features(model: Any, tt: Any, dictionaries: Any, name: str, n_prompts: int = 16, top: int = 20,
                  progress: Any = None, check: int = 0) -> dict[str, Any]:
    """The ``features`` section: per prompt a graph on the logit difference; across prompts the top features;
    with ``check`` > 0 the graphs' predictions for their top ``check`` features against the real model."""
    from logitlab import answers
    from logitlab.features.graph import attribute
    from logitlab.features.influence import compute_influence
    from logitlab.features.prune import check_graph

    n = min(n_prompts, tt.n_prompts)
    per: list[dict[tuple[int, int], tuple[float, float]]] = []
    reps, comps, checks, frozen = [], [], [], []
    agree: list[dict[str, tuple[float, float]]] = []  # per prompt: measure → (Spearman, sign agreement)
    checked: list[list[list[int]]] = []  # per prompt: the checked features' [layer, position, feature]
    linear_err = 0.0
    for i in range(n):
        ids = tt.tokens[i, : int(tt.final_pos[i]) + 1].tolist()
        inc = [int(c) for c in tt.incorrect_ids[i].tolist() if c != answers.PAD]
        g = attribute(model, ids, dictionaries, answer=int(tt.correct_ids[i]), contrast=inc, max_logits=1)
        w = g.logit_weights("logit_diff")
        A = g.adjacency
        norm = A.abs() / A.abs().sum(1, keepdim=True).clamp(min=1e-10)
        inf = compute_influence(norm, w)
        r, c = g.scores("logit_diff")
        reps.append(r)
        comps.append(c)
        frozen.append(g.frozen_positions)
        checks.append(max(check_graph(g).values()))
        mine: dict[tuple[int, int], tuple[float, float]] = {}
        for j, (l, _p, f) in enumerate(g.features.tolist()):
            a, d = mine.get((l, f), (0.0, 0.0))
            mine[(l, f)] = (a + float(inf[j]), d + float(A[-1, j]))
        per.append(mine)
        if check > 0:
            c = _check(model, ids, dictionaries, g, check, int(tt.correct_ids[i]), inc)
            agree.append(c[0])
            linear_err = max(linear_err, c[1])
            checked.append(c[2])
        if progress is not None:
            progress(1)
    keys = sorted({k for m in per for k in m})
    if not keys:
        raise LogitlabError("no transcoder feature is active on any prompt")
    infl = torch.tensor([[m.get(k, (0.0, 0.0))[0] for m in per] for k in keys], dtype=torch.float64)  # (feature, prompt)
    direct = torch.tensor([[m.get(k, (0.0, 0.0))[1] for m in per] for k in keys], dtype=torch.float64)
    stats = paired(infl)
    order = stats.mean.argsort(descending=True)[:top].tolist()
    rows = [{"layer": keys[j][0], "feature": keys[j][1], "mean": float(stats.mean[j]),
             "ci": [float(stats.ci[j, 0]), float(stats.ci[j, 1])], "direct": float(direct[j].mean()),
             "n_active": sum(1 for m in per if keys[j] in m)} for j in order]
    out = {"transcoders": name, "n_prompts": n, "replacement": reps, "completeness": comps, "frozen_positions": frozen,
           "max_check": float(max(checks)), "top": rows}
    if check > 0:
        out["check"] = {"k": check, "linear_model_error": linear_err, "features": checked,
                        "measures": {m: {"spearman": _summary([a[m][0] for a in agree]),
                                         "sign_agreement": _summary([a[m][1] for a in agree])}
                                     for m in CHECK_MEASURES}}
    return out


def _check(model: Any, ids: list[int], dictionaries: Any, g: Any, k: int, answer: int,
           contrast: list[int]) -> tuple[dict[str, tuple[float, float]], float, list[list[int]]]:
    """One prompt's check: measure → (Spearman, sign agreement), the largest difference between the graph's
    prediction and zeroing with attention, norms and gates held (the graph's own linear model: rounding), and the
    checked features ([layer, position, feature] each)."""
    from logitlab.features.interventions import check_top_features
    c = check_top_features(model, ids, dictionaries, g, k, answer=answer, contrast=contrast)
    ms = c.model
    out = {"zeroing": (c.spearman, c.sign_agreement)}
    for m, key in (("model_zeroing", "zeroed"), ("model_derivative", "derivative"),
                   ("model_derivative_attention_held", "derivative_attention_held"),
                   ("model_derivative_attention_norms_held", "derivative_attention_norms_held")):
        out[m] = (ms["spearman"][key], ms["sign_agreement"][key])
    own = ms["own_first_order"]
    out["model_zeroing_by_model_derivative"] = (own["spearman"], own["sign_agreement"])
    err = max((abs(a - b) for a, b in zip(c.actual_all_held, c.predicted)), default=0.0)
    return out, float(err), c.features


def _summary(values: list[float]) -> dict[str, Any]:
    """Per-prompt values (NaN where undefined: fewer than two features, or ties only), their mean over the defined
    ones and its 95% bootstrap CI (NaN-free: the mean and CI are None when none is defined)."""
    ok = torch.tensor([v for v in values if v == v], dtype=torch.float64)
    if not len(ok):
        return {"per_prompt": [None if v != v else v for v in values], "n": 0, "mean": None, "ci": None}
    s = paired(ok[None])
    return {"per_prompt": [None if v != v else float(v) for v in values], "n": len(ok), "mean": float(s.mean[0]),
            "ci": [float(s.ci[0, 0]), float(s.ci[0, 1])]}
