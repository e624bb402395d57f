"""The results type of head ablation (``head_ablation``), written by :mod:`logitlab.analyses.ablation`."""

from __future__ import annotations

from typing import Literal

from typing_extensions import NotRequired, TypedDict

from logitlab.results._base import Cube, Matrix, section

__all__ = ["AblationTop", "AblationScreen", "AblationScores", "HeadAblation"]


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
    above_bound: NotRequired[bool]
    """|`delta`| is larger than the screen's `bound` on every screened-out head (true without a screen when
    `delta` ≠ 0). False: a head computed only to first order may drop more. Top, runner-up and ties are chosen
    among the exact heads only"""


@section
class AblationScreen(TypedDict):
    """How a screened ablation chose its exact heads and how far its first-order estimate missed (logit
    difference; the `loss_…` keys: the same heads measured on the loss). Means over prompts per head."""

    estimator: str
    """"first-order": Σ over positions of (replacement − z) · ∂metric/∂z at the clean run"""
    n_cells: int
    """heads in the model (layers × heads)"""
    n_flagged: int
    """heads computed exactly for their large estimate (top by |Δ logit diff| ∪ top by |Δ loss|)"""
    n_sampled: int
    """further heads computed exactly, drawn at random (seeded) to measure the estimate"""
    n_exact: int
    """heads computed exactly (`n_flagged` + `n_sampled`)"""
    left_out_max_estimate: float | None
    """largest |estimated Δ logit diff| among the screened-out heads (0: none)"""
    sample_max_error: float | None
    """largest |exact − estimate| of Δ logit diff on the random sample"""
    sample_max_exact: float | None
    """largest |exact Δ logit diff| on the random sample"""
    max_error: float | None
    """largest |exact − estimate| of Δ logit diff over every exact head"""
    bound: float | None
    """how large a screened-out head's |Δ logit diff| can be expected to be: `left_out_max_estimate` +
    `sample_max_error`, at least `sample_max_exact`"""
    loss_left_out_max_estimate: float | None
    """as `left_out_max_estimate`, for Δ loss"""
    loss_sample_max_error: float | None
    """as `sample_max_error`, for Δ loss"""
    loss_sample_max_exact: float | None
    """as `sample_max_exact`, for Δ loss"""
    loss_max_error: float | None
    """as `max_error`, for Δ loss"""
    loss_bound: float | None
    """as `bound`, for Δ loss"""


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
    """the head that lowers the logit difference most (among the exact heads), and whether that is separated
    from the others"""
    method: NotRequired[list[list[Literal["exact", "estimated"]]]]
    """[L][H] "exact" (ablated) or "estimated" (screened out: baseline + first-order estimate, per prompt, in
    every key above); absent when every head was ablated exactly"""
    screen: NotRequired[AblationScreen]
    """the screen that chose the exact heads; absent when every head was ablated exactly"""


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


