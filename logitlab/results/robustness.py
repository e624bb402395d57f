"""The results types of head robustness across templates and subjects (``robustness``), written by
:mod:`logitlab.analyses.robustness`."""

from __future__ import annotations

from typing_extensions import TypedDict

from logitlab.results._base import section

__all__ = ["RobustnessHead", "RobustnessTemplate", "RobustnessSubject", "HeadTemplates", "HeadAgreement", "KeyHeads",
           "Robustness"]


@section
class RobustnessHead(TypedDict):
    """A template's top head by one method."""

    head: list[int]
    """[layer, head]"""
    value: float
    """DLA: its mean attribution over the template's prompts; ablation: the mean per-prompt change of the logit
    difference (ablated − baseline)"""


@section
class RobustnessTemplate(TypedDict):
    """One template's logit difference and top heads."""

    index: int
    """the template's index in the task file's `templates`"""
    template: str
    """the template"""
    n: int
    """its prompts"""
    mean: float
    """mean logit difference over its prompts"""
    stderr: float
    """standard error over its prompts"""
    ci: list[float]
    """[2] 95% bootstrap CI over its prompts"""
    top_dla: RobustnessHead
    """the head with the largest |mean| direct logit attribution on its prompts"""
    top_ablation: dict[str, RobustnessHead]
    """by ablation kind (`zero`, `mean`): the head whose ablation lowers its mean logit difference most"""


@section
class RobustnessSubject(TypedDict):
    """One subject's logit difference over the templates."""

    subject: str
    """the subject's name"""
    subject_class: str
    """its class"""
    n: int
    """its prompts (one per template)"""
    mean: float
    """mean logit difference"""
    stderr: float
    """standard error"""
    ci: list[float]
    """[2] 95% bootstrap CI"""


@section
class HeadTemplates(TypedDict):
    """One head and the templates it is top in."""

    head: list[int]
    """[layer, head]"""
    templates: list[int]
    """template indices"""


@section
class HeadAgreement(TypedDict):
    """Whether one method names the same top head in every template."""

    head: list[int]
    """[layer, head] the head that is top in the most templates (the earlier template's on a tie)"""
    count: int
    """in how many templates it is top"""
    n_templates: int
    """how many templates there are"""
    agree: bool
    """one head is top in every template"""
    heads: list[HeadTemplates]
    """every head that is top somewhere, most templates first"""


@section
class KeyHeads(TypedDict):
    """The top heads' agreement across templates."""

    dla: HeadAgreement
    """by direct logit attribution"""
    ablation: dict[str, HeadAgreement]
    """by ablation kind"""


@section
class Robustness(TypedDict):
    """The logit difference and the top heads per template and per subject (absent with fewer than two
    templates; explicit prompts are left out). CIs as everywhere: 95% bootstrap over the group's prompts."""

    templates: list[RobustnessTemplate]
    """one per template, in the task's order"""
    subjects: list[RobustnessSubject]
    """one per subject, in the task's order"""
    key_heads: KeyHeads
    """how often each head is the top one across templates"""


