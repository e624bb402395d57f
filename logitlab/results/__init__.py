"""The types of ``results.json``, defined once: the battery writes them, the report reads them, tests check them.

A run's results are a plain JSON object (numbers, strings, nested lists) so that any tool can read them. Its
shape is spelled out here as :class:`typing.TypedDict` s, one per section, and nowhere else: the battery
(``logitlab.battery``) annotates what it returns with :class:`Results`, the report and the formation code read
through the same types, the JSON Schema (``logitlab schema``) and the key table of ``docs/results.md``
(:func:`results_table`) are generated from them, and :func:`validate_results` checks a dict against them with
pydantic in strict mode: an unknown key, a missing key, a wrong type or a non-finite number is refused with
the path of the first offending value (``head_ablation.zero.loss[3][1]``). The battery validates every
results dict it writes: 0.06 ms for the built-in model's results, after building the validator once per process
(about 0.1 s).

Every field's docstring is its documentation: it becomes the field's ``description`` in the JSON Schema and
its row in ``docs/results.md``.

Example:
    >>> from logitlab.results import validate_results
    >>> validate_results(json.loads(Path("logitlab-out/results.json").read_text()))
"""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict  # pydantic needs typing_extensions' TypedDict before 3.12

from logitlab.errors import LogitlabError
from logitlab.results.circuit import AttributionPatching, Circuit, PathPatching

__all__ = [
    "SCHEMA_VERSION", "Results", "TaskSection", "PatchingPair", "ModelSection",
    "ConfigSection", "Prediction", "TopToken", "LogitDiff", "DLA", "LogitLens", "LayerAttribution",
    "HeadAttributionDetail", "HeadAttributionTop", "Attention", "AttentionHead", "HeadAblation", "AblationScores", "AblationTop", "ResidPatching",
    "AttnPatching", "MlpPatching", "HeadPatching", "PatchingSet", "HeadPatchingSet", "UnembedBias", "UnembedBiasPair",
    "Robustness", "RobustnessTemplate", "RobustnessSubject", "RobustnessHead", "KeyHeads", "HeadAgreement",
    "HeadTemplates", "results_schema", "validate_results",
    "results_table",
]

SCHEMA_VERSION = 5  # of a battery's results.json; formation's is logitlab.formation.schema's

# Strict: a string "1" is not an int and a bool is not a number; int is accepted where a float is expected.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)
section = with_config(_STRICT)  # the decorator every results TypedDict carries

Matrix = list[list[float]]
Cube = list[list[list[float]]]

# ---------------------------------------------------------------------------------------------------------
# The battery's results.json


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
class ConfigSection(TypedDict):
    """The run's full configuration (`logitlab.RunConfig`), also written as `config.json`."""

    model: str
    """`--model`"""
    task: str
    """`--task`: a built-in task's name or a task file"""
    device: str
    """`--device`"""
    dtype: Literal["float32", "bfloat16"]
    """`--dtype`"""
    top_k: int
    """top-k next tokens per example prompt"""
    n_attention_heads: int
    """how many top heads the attention section shows"""
    attention_prompt: int
    """the prompt whose attention patterns are shown"""
    n_predictions: int
    """how many prompts get top-k predictions"""
    max_memory: int | None
    """the sweeps' memory budget in bytes (null: half of the free memory)"""
    patching_pairs: int
    """patching pairs generated per template (0: the task's explicit pairs only)"""
    analyses: list[Literal["attention", "ablation", "patching", "atp", "path_patching", "robustness", "circuit"]]
    """the analyses run besides the always-run ones (`--analyses`, `--circuit`)"""
    circuit: CircuitSettings


@section
class CircuitSettings(TypedDict):
    """Settings of path patching and circuit discovery (`logitlab.battery.CircuitConfig`)."""

    pairs: int
    """clean/corrupted pairs used (the task's own first, then generated ones)"""
    ig_steps: int
    """integrated-gradient steps of the edge scores"""
    n_random: int
    """random circuits per size in the faithfulness baseline"""
    threshold: float
    """recovered fraction that defines the circuit"""
    n_senders: int
    """path patching: how many top heads send"""
    path_pairs: int
    """path patching: clean/corrupted pairs used"""


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


@section
class PatchingSet(TypedDict):
    """Patching per layer and position over one set of pairs: one template's generated pairs (of one token
    length) or all templates pooled. Pairs with |clean − corrupted| < 1 logit are left out and counted."""

    template: str | None
    """the template (`{}` = the subject); null for the pooled set"""
    tokens: list[str]
    """position labels: the subject's tokens as `{name}`, the other tokens as themselves (`[final]`: the final
    position where the pooled templates' tokens differ)"""
    values: Matrix
    """[L][P] mean over the used pairs of each pair's (patched − corrupted)/(clean − corrupted)"""
    stderr: Matrix
    """[L][P] standard error over the used pairs"""
    ci: Cube
    """[L][P][2] 95% bootstrap CI over the used pairs (2,000 resamples, seeded)"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out: |clean − corrupted| < 1 logit"""
    clean_logit_diff: NotRequired[float]
    """(resid only) mean clean logit difference over the used pairs"""
    corrupted_logit_diff: NotRequired[float]
    """(resid only) the same on the corrupted prompts"""


@section
class HeadPatchingSet(TypedDict):
    """Head patching over one set of pairs (one template, or all pooled)."""

    template: str | None
    """the template; null for the pooled set"""
    values: Matrix
    """[L][H] mean over the used pairs of the per-pair normalised value"""
    stderr: Matrix
    """[L][H]"""
    ci: Cube
    """[L][H][2] 95% bootstrap CI over the used pairs"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out (gap < 1 logit)"""


@section
class ResidPatching(TypedDict):
    """Patching `resid_pre`, clean into corrupted, per layer and position (absent when the task yields no pair:
    no explicit `patching:` pair and no two subjects of different classes with prompts of one token length).

    `values` holds the task's explicit `patching:` pairs when one of them has a gap of at least 1 logit
    (`pairs: "reference"`), else the pairs generated from the templates, pooled (`pairs: "pooled"`). Pairs whose
    |clean − corrupted| is below 1 logit are left out of every normalised number and counted in `n_excluded`; when
    no pair is left, `values`, `stderr` and `ci` are empty lists."""

    tokens: list[str]
    """the clean prompt's token strings (reference pairs), or the pooled position labels"""
    values: Matrix
    """[L][P] normalised: mean over the used pairs of each pair's (patched − corrupted)/(clean − corrupted), by its
    own gap; 0 = no effect, 1 = fully restored"""
    clean_logit_diff: float
    """mean over the used pairs (over all of them when none is used), the clean prompt's answers"""
    corrupted_logit_diff: float
    """the same on the corrupted prompts"""
    stderr: Matrix
    """[L][P] standard error of `values` over the used pairs (0 for one pair)"""
    ci: Cube
    """[L][P][2] 95% bootstrap CI of `values` over the used pairs ([v, v] for one pair)"""
    n_pairs: int
    """pairs used in `values`"""
    n_excluded: int
    """pairs of that set left out: |clean − corrupted| < 1 logit"""
    pairs: Literal["reference", "pooled"]
    """which pairs `values` holds"""
    pooled: PatchingSet | None
    """the generated pairs of every template, pooled on aligned positions: all positions when the templates'
    position labels agree, else those shared from the start (`<bos>`, `{name}`, …) and from the end (…, final);
    null when `values` already holds them or the task generates no pair"""
    per_template: list[PatchingSet]
    """the generated pairs, one set per template (and token length) with a pair of gap ≥ 1 logit"""


@section
class AttnPatching(TypedDict):
    """Patching one layer's attention output (after any post-attention norm) at one position."""

    tokens: list[str]
    """as `resid_patching.tokens`"""
    values: Matrix
    """[L][P] normalised as `resid_patching.values`"""
    stderr: Matrix
    """[L][P]"""
    ci: Cube
    """[L][P][2] 95% bootstrap CI"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out (gap < 1 logit)"""
    pairs: Literal["reference", "pooled"]
    """as `resid_patching.pairs`"""
    pooled: PatchingSet | None
    """as `resid_patching.pooled`"""
    per_template: list[PatchingSet]
    """as `resid_patching.per_template`"""


@section
class MlpPatching(TypedDict):
    """Patching one layer's MLP output at one position."""

    tokens: list[str]
    """as `resid_patching.tokens`"""
    values: Matrix
    """[L][P] normalised as `resid_patching.values`"""
    stderr: Matrix
    """[L][P]"""
    ci: Cube
    """[L][P][2] 95% bootstrap CI"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out (gap < 1 logit)"""
    pairs: Literal["reference", "pooled"]
    """as `resid_patching.pairs`"""
    pooled: PatchingSet | None
    """as `resid_patching.pooled`"""
    per_template: list[PatchingSet]
    """as `resid_patching.per_template`"""


@section
class HeadPatching(TypedDict):
    """Patching one head's `hook_z` output at every position."""

    values: Matrix
    """[L][H] normalised as `resid_patching.values`"""
    stderr: Matrix
    """[L][H]"""
    ci: Cube
    """[L][H][2] 95% bootstrap CI"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out (gap < 1 logit)"""
    pairs: Literal["reference", "pooled"]
    """as `resid_patching.pairs`"""
    pooled: HeadPatchingSet | None
    """every generated pair (heads pool over all templates); null as `resid_patching.pooled`"""
    per_template: list[HeadPatchingSet]
    """one set per template (and token length)"""


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


@section
class Results(TypedDict):
    """A battery run's `results.json`."""

    schema_version: Literal[5]
    """the version of this schema"""
    logitlab_version: str
    """the package version that wrote the file"""
    config: ConfigSection
    model: ModelSection
    task: TaskSection
    predictions: list[Prediction]
    """one per example prompt (the first `config.n_predictions`)"""
    logit_diff: LogitDiff
    dla: DLA
    logit_lens: LogitLens
    layer_attribution: LayerAttribution
    head_attribution: Matrix
    """[L][H] each query head's direct logit difference (mean over prompts); exact under post-attention norms
    (each head pushed through the post-norm with its scale frozen at the cached value); per layer the heads plus
    `head_attribution_detail.attn_bias[L]` sum to that layer's `L_attn_out` attribution"""
    head_attribution_detail: HeadAttributionDetail
    attention: NotRequired[Attention]
    head_ablation: NotRequired[HeadAblation]
    resid_patching: NotRequired[ResidPatching]
    attn_patching: NotRequired[AttnPatching]
    mlp_patching: NotRequired[MlpPatching]
    head_patching: NotRequired[HeadPatching]
    attribution_patching: NotRequired[AttributionPatching]
    path_patching: NotRequired[PathPatching]
    circuit: NotRequired[Circuit]
    unembed_bias: UnembedBias
    robustness: NotRequired[Robustness]


# ---------------------------------------------------------------------------------------------------------
# Schema, validation and documentation


@functools.cache
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _strip_titles(node: Any) -> Any:
    """The schema without pydantic's generated ``title`` s (names of properties are kept)."""
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "title" and isinstance(v, str):
            continue
        if k in ("properties", "$defs"):
            out[k] = {name: _strip_titles(s) for name, s in v.items()}
        else:
            out[k] = _strip_titles(v)
    return out


def results_schema(kind: type = Results) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json``, without titles and with ``$defs`` sorted by name.

    Args:
        kind: :class:`Results`, or :class:`logitlab.formation.schema.FormationResults`.
    """
    schema = _strip_titles(_adapter(kind).json_schema())
    defs = schema.pop("$defs", {})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
            "$defs": {name: defs[name] for name in sorted(defs)}}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_results(obj: object, kind: type = Results) -> None:
    """Check ``obj`` against the types of ``kind`` (default :class:`Results`).

    Raises:
        LogitlabError: naming the first offending path, e.g. ``logit_diff.per_prompt[2]: Input should be a
            valid number``, and how many other problems there are.
    """
    try:
        _adapter(kind).validate_python(obj)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise LogitlabError(f"results do not match the {kind.__name__} schema: {_path(first['loc'])}: "
                            f"{first['msg']}{more}",
                            "results.json written by another logitlab version? `logitlab schema` prints the "
                            "schema") from None


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


_PIPE = "\\|"  # a literal | inside a markdown table cell


def _type_name(node: dict[str, Any], defs: dict[str, Any]) -> str:
    node = _resolve(node, defs)
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "anyOf" in node:
        return " | ".join(_type_name(n, defs) for n in node["anyOf"])
    t = node.get("type")
    if t == "array":
        return f"list[{_type_name(node['items'], defs)}]"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"dict[str, {_type_name(node['additionalProperties'], defs)}]"
    return {"number": "float", "integer": "int", "string": "str", "boolean": "bool", "null": "null"}.get(t, "object")


def _objects(node: dict[str, Any], defs: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """The object schemas under ``node`` (itself, its list items, its non-null alternatives), with their paths."""
    node = _resolve(node, defs)
    if "properties" in node:
        return [(path, node)]
    if node.get("type") == "array":
        return _objects(node["items"], defs, path + "[]")
    return [o for alt in node.get("anyOf", []) for o in _objects(alt, defs, path)]


def _rows(obj: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    rows = []
    required = set(obj.get("required", []))
    for name, prop in obj["properties"].items():
        key = f"{path}.{name}" if path else name
        resolved = _resolve(prop, defs)
        text = " ".join(str(prop.get("description") or resolved.get("description") or "").split())
        if name not in required:
            text = f"*optional* — {text}" if text else "*optional*"
        rows.append(f"| `{key}` | {_type_name(prop, defs).replace('|', _PIPE)} | {text.replace('|', _PIPE)} |")
        for sub_path, sub in _objects(prop, defs, key):
            rows += _rows(sub, defs, sub_path)
    return rows


def results_table(kind: type = Results) -> str:
    """The key table of ``docs/results.md``, generated from the schema: one row per key, nested keys dotted
    (``[]`` marks a list's items)."""
    schema = results_schema(kind)
    lines = ["| key | type | meaning |", "|---|---|---|", *_rows(schema, schema["$defs"], "")]
    return "\n".join(lines) + "\n"

