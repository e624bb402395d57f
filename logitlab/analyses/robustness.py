"""Robustness across templates: does the effect, and do its key heads, hold on every prompt template?

A task built from templates × subjects averages over both. An average can hide a template on which the model
fails, or a top head that is only top on some templates. This analysis splits the clean run's prompts by their
origin (``Task.prompt_template``, ``Task.prompt_subject``; explicit prompts, template −1, are left out) and
reports, per template:

* the mean logit difference with its seeded 95% bootstrap CI over that template's prompts (n of them);
* the top head by direct logit attribution: the largest |mean| over the template's prompts, as
  :meth:`HeadAttributionResult.top`;
* the top head by each ablation: the head whose ablation lowers the template's mean logit difference most,
  from the per-prompt paired changes ``ablated − baseline`` (as the ablation's ``top_drop``: among the heads
  ablated exactly when the ablation was screened);

and, per subject, the mean logit difference over its templates. ``key_heads`` counts in how many templates
each head is the top one; ``agree`` is true when one head is top in every template.

Invariant (tested): a template's numbers are the plain means of the clean run's per-prompt values over that
template's prompts; the top heads are the argmax/argmin of those per-template means.

Example:
    >>> rob = robustness(run, head_attribution(run), {"zero": head_ablation(run, "zero")})
    >>> rob.to_dict()["key_heads"]["dla"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun
from logitlab.analyses.ablation import AblationResult
from logitlab.analyses.heads import HeadAttributionResult
from logitlab.errors import LogitlabError
from logitlab.results.robustness import HeadAgreement, Robustness, RobustnessTemplate
from logitlab.stats import paired

__all__ = ["GroupLogitDiff", "TemplateRobustness", "RobustnessResult", "robustness"]


@dataclass(frozen=True)
class GroupLogitDiff:
    """The logit difference over one group of prompts (a template or a subject)."""

    label: str
    prompts: tuple[int, ...]  # prompt indices of the group
    mean: float
    stderr: float
    ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.prompts), "mean": self.mean, "stderr": self.stderr, "ci": list(self.ci)}


@dataclass(frozen=True)
class TemplateRobustness:
    """One template: its logit difference and its top heads."""

    index: int
    logit_diff: GroupLogitDiff
    top_dla: tuple[int, int, float]  # (layer, head, mean attribution over the template's prompts)
    top_ablation: tuple[tuple[str, tuple[int, int, float]], ...]  # (kind, (layer, head, mean change))

    def to_dict(self) -> RobustnessTemplate:
        return cast(RobustnessTemplate, {"index": self.index, "template": self.logit_diff.label, **self.logit_diff.to_dict(),
                "top_dla": {"head": list(self.top_dla[:2]), "value": self.top_dla[2]},
                "top_ablation": {k: {"head": list(t[:2]), "value": t[2]} for k, t in self.top_ablation}})


def _agreement(tops: list[tuple[int, int]], indices: list[int]) -> HeadAgreement:
    """How often each head is the top one, most frequent first (ties: the earlier template's head first)."""
    by_head: dict[tuple[int, int], list[int]] = {}
    for head, idx in zip(tops, indices):
        by_head.setdefault(head, []).append(idx)
    ranked = sorted(by_head.items(), key=lambda kv: -len(kv[1]))  # stable: first appearance breaks ties
    head, temps = ranked[0]
    return {"head": list(head), "count": len(temps), "n_templates": len(tops), "agree": len(ranked) == 1,
            "heads": [{"head": list(h), "templates": t} for h, t in ranked]}


@dataclass(frozen=True)
class RobustnessResult:
    templates: tuple[TemplateRobustness, ...]
    subjects: tuple[tuple[GroupLogitDiff, str], ...]  # (subject's logit difference, its class)

    def to_dict(self) -> Robustness:
        idx = [t.index for t in self.templates]
        kinds = [k for k, _ in self.templates[0].top_ablation]
        return cast(Robustness, {
            "templates": [t.to_dict() for t in self.templates],
            "subjects": [{"subject": g.label, "subject_class": cls, **g.to_dict()} for g, cls in self.subjects],
            "key_heads": {
                "dla": _agreement([t.top_dla[:2] for t in self.templates], idx),
                "ablation": {k: _agreement([dict(t.top_ablation)[k][:2] for t in self.templates], idx)
                             for k in kinds},
            },
        })

    def to_frame(self) -> Any:
        import pandas as pd
        return pd.DataFrame([{"template_index": t.index, "template": t.logit_diff.label,
                              "n": len(t.logit_diff.prompts), "logit_diff": t.logit_diff.mean,
                              "ci_low": t.logit_diff.ci[0], "ci_high": t.logit_diff.ci[1],
                              "top_dla_layer": t.top_dla[0], "top_dla_head": t.top_dla[1],
                              **{f"top_{k}_ablation_{part}": v for k, (l, h, _) in t.top_ablation
                                 for part, v in (("layer", l), ("head", h))}} for t in self.templates])


def _n_templates(run: CleanRun) -> int:
    """How many templates the run's prompts come from (explicit prompts not counted)."""
    return len({t for t in run.task.task.prompt_template if t >= 0})


def _group(label: str, prompts: list[int], per_prompt: Float[Tensor, " batch"]) -> GroupLogitDiff:
    p = paired(per_prompt[prompts][None])
    return GroupLogitDiff(label, tuple(prompts), float(p.mean[0]), float(p.stderr[0]),
                          (float(p.ci[0, 0]), float(p.ci[0, 1])))


def robustness(run: CleanRun, heads: HeadAttributionResult,
               ablations: Mapping[str, AblationResult] | None = None) -> RobustnessResult:
    """Per-template and per-subject logit difference and each template's top heads.

    Args:
        run: The clean run (its task must record each prompt's template, ``Task.prompt_template``).
        heads: :func:`logitlab.analyses.head_attribution` of the same run.
        ablations: :func:`logitlab.analyses.head_ablation` results of the same run, by kind.

    Raises:
        LogitlabError: when the prompts come from fewer than two templates, or a result is of another run.
    """
    task = run.task.task
    origin = task.prompt_template
    B = run.task.n_prompts
    if len(origin) != B or _n_templates(run) < 2:
        raise LogitlabError(f"task {task.name!r}: robustness across templates needs prompts from two or more "
                            "templates", "give the task several templates")
    ablations = dict(ablations or {})
    if heads.values.shape[-1] != B or any(a.logit_diff.shape[-1] != B for a in ablations.values()):
        raise LogitlabError("robustness: head attribution / ablation results are not of this run's prompts")
    per_prompt = run.logit_diff.cpu().double()
    H = heads.values.shape[1]
    deltas = {k: (a.logit_diff - a.baseline_logit_diff).double() for k, a in ablations.items()}  # (L, H, B)
    exact = {k: a.exact.flatten() for k, a in ablations.items()}  # (L·H,) a screened ablation: its exact heads
    rows = []
    for ti in sorted({t for t in origin if t >= 0}):
        idx = [i for i, t in enumerate(origin) if t == ti]
        label = task.templates[ti] if ti < len(task.templates) else f"template {ti}"
        dla_mean = heads.values[..., idx].double().mean(-1).flatten()  # (L·H,)
        d = int(dla_mean.abs().argmax())  # largest |mean|, as HeadAttributionResult.top
        tops = []
        for kind, delta in deltas.items():
            m = delta[..., idx].mean(-1).flatten()  # (L·H,) mean change of this template's prompts
            # The largest drop among the exact heads, as AblationResult.top_drop (an estimate is no finding).
            a = int(m.masked_fill(~exact[kind], float("inf")).argmin())
            tops.append((kind, (a // H, a % H, float(m[a]))))
        rows.append(TemplateRobustness(ti, _group(label, idx, per_prompt), (d // H, d % H, float(dla_mean[d])),
                                       tuple(tops)))
    subjects: dict[str, list[int]] = {}
    for i, (t, s) in enumerate(zip(origin, task.prompt_subject or [""] * B)):
        if t >= 0:
            subjects.setdefault(s, []).append(i)
    classes = task.prompt_class or ("",) * B
    subj = tuple((_group(s, idx, per_prompt), classes[idx[0]]) for s, idx in subjects.items())
    return RobustnessResult(tuple(rows), subj)

