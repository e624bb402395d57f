"""The results types of the always-run analyses (task, model, predictions, logit difference, DLA, logit lens,
attributions, unembedding bias) and of the attention patterns.

Every field's docstring is its documentation: it becomes the field's ``description`` in the JSON Schema and its
row in ``docs/results.md``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from typing_extensions import NotRequired, TypedDict  # pydantic needs typing_extensions' TypedDict before 3.12

from logitlab.results._base import Cube, Matrix, section

__all__ = ["PatchingPair", "TaskSection", "ModelSection", "TopToken", "Prediction", "Predictions", "LogitDiff", "DLA",
           "LogitLens", "LayerAttribution", "HeadAttribution", "HeadAttributionTop", "HeadAttributionDetail",
           "HeadAttributionValues", "AttentionHead", "Attention", "UnembedBiasPair", "UnembedBias"]


@section
class PatchingPair(TypedDict):
    """One clean/corrupted pair, scored with the clean prompt's answers."""

    clean: str
    """the clean prompt"""
    corrupted: str
    """the corrupted prompt (same token length)"""
    correct: str
    """the clean prompt's correct answer"""
    incorrect: str
    """the incorrect answers joined by `" / "`"""


@section
class TaskSection(TypedDict):
    """The task as run: its prompts, answers and tokenisation."""

    name: str
    """the task's name"""
    prompts: list[str]
    """the prompts, in order (template-major)"""
    answers: list[list[str]]
    """`[correct, incorrect]` per prompt, as the model's token strings (several incorrect answers joined by `" / "`)"""
    patching_pairs: list[PatchingPair]
    """the clean/corrupted pairs of activation patching (empty without pairs)"""
    prompt_tokens: list[list[str]]
    """each prompt's token strings, BOS included"""


@section
class ModelSection(TypedDict):
    """The model and how it was run."""

    name: str
    """what `--model` named (`builtin`, a hub name, a folder or a `.gguf` file)"""
    architecture: str
    """the Hugging Face `model_type`"""
    n_layers: int
    """L"""
    n_heads: int
    """H, query heads per layer"""
    n_kv_heads: int
    """key/value heads per layer (< H on grouped-KV models)"""
    d_model: int
    """residual stream width"""
    d_head: int
    """head dimension"""
    d_vocab: int
    """vocabulary size"""
    normalization: Literal["LN", "RMS"]
    """LayerNorm or RMSNorm"""
    post_attention_norm: bool
    """whether each attention output passes through its own norm (Gemma 2/3)"""
    parallel_attn_mlp: bool
    """whether attention and MLP read the same residual stream (GPT-NeoX)"""
    dtype: str
    """the dtype the model ran in"""
    device: str
    """the torch device it ran on"""


@section
class TopToken(TypedDict):
    """One of the top-k next tokens."""

    token: str
    """the token string"""
    logit: float
    """its logit"""
    prob: float
    """its probability"""


@section
class Prediction(TypedDict):
    """The model's top-k next tokens after one of the task's first prompts."""

    prompt: str
    """the prompt"""
    tokens: list[str]
    """its token strings, BOS included"""
    top: list[TopToken]
    """the top-k next tokens, most likely first"""
    answer: str
    """the correct answer"""
    answer_rank: int
    """the correct answer's rank (0 = top)"""
    answer_prob: float
    """the correct answer's probability"""


@section
class LogitDiff(TypedDict):
    """The logit difference correct − incorrect at each prompt's own final position, and the answer loss."""

    per_prompt: list[float]
    """[n_prompts]"""
    mean: float
    """mean over prompts"""
    stderr: float
    """standard error across prompts (sample std / √n)"""
    ci: list[float]
    """[2] 95% percentile bootstrap CI of `mean` over prompts (2,000 resamples, seeded)"""
    prob_ratio: list[float]
    """[n_prompts] exp(logit diff) = p(correct) / p(incorrect); with several incorrect answers, over their geometric mean (capped at float64's largest value)"""
    prob_ratio_of_mean: float
    """exp(mean)"""
    accuracy: float
    """share of prompts with logit diff > 0: the correct answer's logit beats the (mean) incorrect one's; not
    whether the correct answer is the top prediction"""
    loss_per_prompt: list[float]
    """[n_prompts] −log p(correct) at the final position"""
    loss_mean: float
    """mean answer loss"""


@section
class DLA(TypedDict):
    """Direct logit attribution check: the final residual stream reconstructs the model's logit difference."""

    reconstructed_mean: float
    """mean over prompts of the final residual stream, through the frozen final-norm scale, dotted with the answer
    residual direction (excludes the unembedding bias, as TransformerLens's `apply_ln_to_stack` does)"""
    bias_term: float
    """mean b_U[correct] − b_U[incorrect] plus the final norm's bias (0 if none)"""
    model_mean: float
    """the model's own mean logit diff; on a model with a final-logit soft-cap (Gemma-2) the mean logit diff
    *before* the cap, which is what the attributions decompose (the capped one: `model_capped_mean`)"""
    final_logit_softcap: NotRequired[float]
    """the model's final-logit soft-cap c (logits = c·tanh(pre-cap logits / c)); present only when it has one"""
    model_capped_mean: NotRequired[float]
    """the model's own mean logit diff after the soft-cap (as `logit_diff.mean`); present only with a cap"""
    relative_error: float
    """the check: max over prompts of `relative_error_per_prompt` (per prompt, so errors cannot cancel and a
    mean near 0 cannot blow it up)"""
    max_abs_error: float
    """max over prompts of |reconstructed + bias − logit diff|"""
    relative_error_per_prompt: list[float]
    """[n_prompts] |reconstructed + bias − logit diff| / max(1, |logit diff|)"""
    reconstructed_per_prompt: list[float]
    """[n_prompts]"""


@section
class LogitLens(TypedDict):
    """Mean logit diff of the accumulated residual stream through the frozen final norm. On parallel-block
    models (GPT-NeoX) `L_mid` is resid_pre + attn_out."""

    labels: list[str]
    """`"0_pre"`, `"0_mid"`, `"1_pre"`, …, `"final_post"`, as TransformerLens's `accumulated_resid(incl_mid=True)`"""
    values: list[float]
    """[2·n_layers+1]"""
    stderr: list[float]
    """standard error across prompts"""
    ci: Matrix
    """[2·n_layers+1][2] 95% bootstrap CI over prompts"""


@section
class LayerAttribution(TypedDict):
    """Logit diff of each component the residual stream is the sum of; the values sum to `dla.reconstructed_mean`."""

    labels: list[str]
    """`"embed"`, `"pos_embed"` (learned positions only), `"0_attn_out"`, `"0_mlp_out"`, …"""
    values: list[float]
    """mean over prompts, one per label"""
    stderr: list[float]
    """standard error across prompts"""
    ci: Matrix
    """[component][2] 95% bootstrap CI over prompts"""


@section
class HeadAttributionTop(TypedDict):
    """The head with the largest |direct effect|, with the paired test against the others: per prompt each
    head's attribution is signed towards its own mean, so the difference top − other has mean
    |mean_top| − |mean_other|."""

    layer: int
    """its layer"""
    head: int
    """its head"""
    value: float
    """its mean attribution over prompts"""
    ci: list[float]
    """[2] 95% bootstrap CI of `value` over prompts"""
    runner_up: list[int]
    """[layer, head] of the second-largest |mean|"""
    runner_up_value: float
    """the runner-up's mean attribution"""
    difference: float
    """|value| − |runner_up_value| (mean of the paired per-prompt differences, ≥ 0)"""
    difference_ci: list[float]
    """[2] its 95% bootstrap CI; includes 0 when the top head is not separated from the runner-up"""
    tied: list[list[int]]
    """[[layer, head], …] heads whose paired difference to the top head has a CI including 0"""


@section
class HeadAttributionDetail(TypedDict):
    """What goes with `head_attribution`."""

    stderr: Matrix
    """[L][H]"""
    ci: Cube
    """[L][H][2] 95% bootstrap CI over prompts (2,000 resamples, seeded; the same resamples for every head)"""
    top: HeadAttributionTop
    """the head with the largest |direct effect| and whether that is separated from the others"""
    attn_bias: list[float]
    """[L] the attention output bias b_O's share (0 if none)"""
    naive: Matrix | None
    """[L][H] on post-norm models, what TransformerLens's `stack_head_results` gives (z·W_O before the
    post-norm), for comparison, not used; null on other models"""


class HeadAttributionValues(HeadAttributionDetail):
    """What head attribution's ``to_dict()`` returns: ``head_attribution`` (``values``) with its detail (the two
    results keys are split from it; not a section itself)."""

    values: Matrix
    """[L][H] mean over prompts"""


@section
class AttentionHead(TypedDict):
    """One top head's attention pattern."""

    layer: int
    """layer index"""
    head: int
    """query head index"""
    attribution: float
    """the head's `head_attribution`"""
    pattern: Matrix
    """[query][key]"""


@section
class Attention(TypedDict):
    """Attention patterns of the top-k heads by |attribution| on one prompt."""

    prompt_index: int
    """the prompt shown (`config.attention_prompt`)"""
    tokens: list[str]
    """the prompt's token strings"""
    heads: list[AttentionHead]
    """the top heads, largest |attribution| first"""


@section
class UnembedBiasPair(TypedDict):
    """b_U of one distinct (correct, incorrect answers) pair of the task."""

    correct: str
    """the correct answer"""
    incorrect: str
    """its incorrect answer(s), joined by `" / "`"""
    b_U_correct: float
    """b_U of the correct answer"""
    b_U_incorrect: float
    """mean over the incorrect answers"""
    difference: float
    """b_U_correct − b_U_incorrect: the bias share of these prompts' logit difference"""
    n_prompts: int
    """how many prompts ask this pair"""


@section
class UnembedBias(TypedDict):
    """The unembedding bias that LayerNorm folding creates; the top-level keys are the first prompt's answers."""

    present: bool
    """whether the model has a nonzero b_U after processing"""
    correct: str
    """the first prompt's correct answer"""
    incorrect: str
    """its incorrect answer(s), joined by `" / "`"""
    b_U_correct: float
    """b_U of the correct answer"""
    b_U_incorrect: float
    """mean over the incorrect answers"""
    difference: float
    """b_U_correct − b_U_incorrect"""
    prob_ratio: float
    """exp(difference): the odds the bias alone gives the correct answer"""
    note: str
    """the same in words"""
    pairs: list[UnembedBiasPair]
    """every distinct answer pair of the task, in order of first appearance (the first is the keys above)"""


Predictions = Annotated[list[Prediction], Field(description="one per example prompt (the first "
                                                             "`config.n_predictions`)")]
HeadAttribution = Annotated[Matrix, Field(description=(
    "[L][H] each query head's direct logit difference (mean over prompts); exact under post-attention norms (each "
    "head pushed through the post-norm with its scale frozen at the cached value); per layer the heads plus "
    "`head_attribution_detail.attn_bias[L]` sum to that layer's `L_attn_out` attribution"))]
