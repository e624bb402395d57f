"""The ``features`` analysis: attribution graphs over transcoder features for each of a task's prompts, and the
features that matter for the logit difference across prompts (Ameisen et al. 2025's influence, with a
bootstrap CI over prompts). Off by default; ``logitlab run --analyses default,features --transcoders DIR``.

A feature is identified across prompts by (layer, index); its influence on a prompt is circuit-tracer's
normalised influence on the logit-difference target (direct and through other nodes), summed over the positions
where it is active, and 0 on prompts where it is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from logitlab.errors import LogitlabError
from logitlab.registry import setting
from logitlab.stats import paired

__all__ = ["FeatureSettings", "task_features"]


@dataclass(frozen=True)
class FeatureSettings:
    """Settings of the features analysis."""

    transcoders: str = setting("", "folder or release name of the per-layer transcoders", flag="--transcoders",
                               help="Transcoders (folder or release name) for the features analysis.")
    feature_prompts: int = setting(16, "prompts attributed (the task's first ones)")
    feature_top: int = setting(20, "features listed, by mean influence")

    def __post_init__(self) -> None:
        if self.feature_prompts < 1 or self.feature_top < 1:
            raise LogitlabError("features settings: feature_prompts and feature_top must be ≥ 1")


def task_features(model: Any, tt: Any, dictionaries: Any, name: str, n_prompts: int = 16, top: int = 20,
                  progress: Any = None) -> dict[str, Any]:
    """The ``features`` section: per prompt a graph on the logit difference; across prompts the top features."""
    from logitlab import answers
    from logitlab.features.graph import attribute
    from logitlab.features.influence import compute_influence
    from logitlab.features.prune import check_graph

    n = min(n_prompts, tt.n_prompts)
    per: list[dict[tuple[int, int], tuple[float, float]]] = []
    reps, comps, checks = [], [], []
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
        checks.append(max(check_graph(g).values()))
        mine: dict[tuple[int, int], tuple[float, float]] = {}
        for j, (l, _p, f) in enumerate(g.features.tolist()):
            a, d = mine.get((l, f), (0.0, 0.0))
            mine[(l, f)] = (a + float(inf[j]), d + float(A[-1, j]))
        per.append(mine)
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
    return {"transcoders": name, "n_prompts": n, "replacement": reps, "completeness": comps,
            "max_check": float(max(checks)), "top": rows}
