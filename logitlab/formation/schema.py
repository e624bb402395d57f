"""The types of a formation run's ``results.json`` (``"kind": "formation"``; docs/formation.md).

Defined with the battery's own types (:mod:`logitlab.results`): the same strict pydantic configuration, the same
model and patching-pair sections, and the same :func:`~logitlab.results.validate_results` /
:func:`~logitlab.results.results_schema` with ``kind=FormationResults``. :func:`logitlab.formation.run_formation`
validates what it writes.
"""

from __future__ import annotations

from typing import Literal

from typing_extensions import NotRequired, TypedDict

from logitlab.results import Matrix, ModelSection, PatchingPair, section

__all__ = ["SCHEMA_VERSION", "FormationResults", "FormationCheckpoint", "FormationTask", "FormationHead", "SwitchOn",
           "TopHeadAblation", "ComponentValues", "ResidPatchingSummary"]

SCHEMA_VERSION = 1




@section
class ComponentValues(TypedDict):
    """Labelled values (means over prompts)."""

    labels: list[str]
    values: list[float]


@section
class TopHeadAblation(TypedDict):
    """A followed head at one checkpoint."""

    layer: int
    head: int
    attribution: float
    effect: float
    """zero-ablation effect: ablated minus baseline mean logit diff"""


@section
class ResidPatchingSummary(TypedDict):
    """`resid_pre` patching per layer at the subject and final positions; the normalised values are null when
    the run cannot normalise (clean and corrupted too close)."""

    tokens: NotRequired[list[str]]
    """the clean prompt's token strings (absent when patching failed)"""
    subject_position: int
    """the first position where clean and corrupted tokens differ"""
    clean_logit_diff: float | None
    """mean logit diff of the clean prompts (null when patching failed)"""
    corrupted_logit_diff: float | None
    """the same on the corrupted prompts"""
    normalised: bool
    """whether the values below could be normalised"""
    max_per_layer: list[float] | None
    """[L] maximum over positions"""
    subject: list[float] | None
    """[L] at the subject position"""
    final: list[float] | None
    """[L] at the final position"""


@section
class FormationCheckpoint(TypedDict):
    """One checkpoint's summary."""

    step: int
    """the training step"""
    checkpoint: str
    """the model folder or `name@revision`"""
    logit_diff_mean: float
    """mean logit diff over prompts"""
    logit_diff_stderr: float
    """its standard error across prompts"""
    accuracy: float
    """share of prompts with logit diff > 0"""
    loss_mean: float
    """mean answer loss"""
    logit_diff_per_prompt: list[float]
    """[n_prompts]"""
    layer_attribution: ComponentValues
    """as the battery's `layer_attribution`, without stderr"""
    head_attribution: Matrix
    """[L][H]"""
    zero_ablation_effect: Matrix
    """[L][H]"""
    top_heads_ablation: list[TopHeadAblation]
    """the followed heads' attribution and zero-ablation effect"""
    resid_patching_summary: ResidPatchingSummary | None
    """null without patching pairs"""


@section
class FormationTask(TypedDict):
    """The task evaluated at every checkpoint."""

    name: str
    prompts: list[str]
    answers: list[list[str]]
    patching_pairs: list[PatchingPair]
    description: str
    """the task file's description"""


@section
class FormationHead(TypedDict):
    """A head followed through training, with its final numbers."""

    layer: int
    head: int
    final_attribution: float
    final_ablation_effect: float


@section
class SwitchOn(TypedDict):
    """A followed head's switch-on step (null: none)."""

    layer: int
    head: int
    step: int | None
    """the switch-on step"""


@section
class FormationResults(TypedDict):
    """A formation run's `results.json`."""

    kind: Literal["formation"]
    """marks a formation run's results"""
    schema_version: Literal[1]
    """the version of the formation schema"""
    logitlab_version: str
    """the package version that wrote the file"""
    model: ModelSection
    """the final checkpoint's model"""
    task: FormationTask
    heldout: bool
    """whether the task is a held-out split (the command line sets it for `heldout-task.yaml`)"""
    top_k_heads: int
    """how many heads are followed"""
    definitions: dict[str, str]
    """the definitions of the summary's numbers, in words"""
    checkpoints: list[FormationCheckpoint]
    """in step order"""
    top_heads: list[FormationHead]
    """the final checkpoint's top-k heads by |attribution|"""
    switch_on: list[SwitchOn]
    """per top head: the first step from which its attribution stays on the final value's side above half of its
    magnitude"""
    ablation_heads: list[FormationHead]
    """the final checkpoint's top-k heads by |zero-ablation effect|"""
    ablation_switch_on: list[SwitchOn]
    """switch-on steps of the ablation heads' zero-ablation effect"""
    seconds: float
    """wall time of the run"""
