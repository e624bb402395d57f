"""The results type of head ablation (``head_ablation``), written by :mod:`logitlab.analyses.ablation`."""

from __future__ import annotations

from typing_extensions import TypedDict

from logitlab.results._base import Cube, Matrix, section

__all__ = ["AblationTop", "AblationScores", "HeadAblation"]


@section
class AblationTop(TypedDict):
    """The head whose ablation lowers the logit difference most, with the paired test against the others."""

    layer: int
    """its layer"""
    head: int
    """its head"""
    delta: float
    """mean over prompts of (ablated − baseline) logit difference"""
    ci: list[float]
    """[2] 95% bootstrap CI of `delta` over prompts"""
    runner_up: list[int]
    """[layer, head] of the second-largest drop"""
    difference: float
    """mean per-prompt difference runner-up delta − top delta (≥ 0)"""
    difference_ci: list[float]
    """[2] its 95% bootstrap CI; includes 0 when the top head is not separated from the runner-up"""
    tied: list[list[int]]
    """[[layer, head], …] heads whose paired difference to the top head has a CI including 0"""


@section
class AblationScores(TypedDict):
    """Mean over prompts with one head ablated, and the paired effects (each prompt against its own baseline).

    CIs are 95% percentile bootstrap intervals over prompts (2,000 resamples, seeded; the same resamples for
    every head)."""

    logit_diff: Matrix
    """[L][H]"""
    loss: Matrix
    """[L][H]"""
    logit_diff_stderr: Matrix
    """[L][H] stderr of the ablated values across prompts (unpaired; see `delta_logit_diff_stderr`)"""
    loss_stderr: Matrix
    """[L][H] unpaired, as `logit_diff_stderr`"""
    delta_logit_diff: Matrix
    """[L][H] mean over prompts of (ablated − baseline) logit difference"""
    delta_logit_diff_stderr: Matrix
    """[L][H] paired standard error of `delta_logit_diff`"""
    delta_logit_diff_ci: Cube
    """[L][H][2] 95% bootstrap CI of `delta_logit_diff`"""
    delta_logit_diff_per_prompt: Cube
    """[L][H][prompt] ablated − baseline logit difference"""
    delta_loss: Matrix
    """[L][H] mean over prompts of (ablated − baseline) loss"""
    delta_loss_stderr: Matrix
    """[L][H] paired standard error of `delta_loss`"""
    delta_loss_ci: Cube
    """[L][H][2] 95% bootstrap CI of `delta_loss`"""
    delta_loss_per_prompt: Cube
    """[L][H][prompt] ablated − baseline loss"""
    top_drop: AblationTop
    """the head that lowers the logit difference most, and whether that is separated from the others"""


@section
class HeadAblation(TypedDict):
    """Ablating each head at `hook_z`. Loss = −log p(correct answer) at the prompt's final position, averaged
    over prompts."""

    zero: AblationScores
    """the head's output set to 0 at every position"""
    mean: AblationScores
    """the head's output set to its mean over the task's prompts at each position"""
    baseline_logit_diff: float
    """mean logit diff without ablation"""
    baseline_loss: float
    """mean loss without ablation"""


