"""The results type of the ``features`` analysis (attribution graphs over transcoder features across a task's
prompts), written by :mod:`logitlab.features.analysis`."""

from __future__ import annotations

from typing_extensions import NotRequired, TypedDict

from logitlab.results._base import section

__all__ = ["FeatureInfluence", "AgreementSummary", "CheckMeasure", "FeatureCheck", "Features"]


@section
class FeatureInfluence(TypedDict):
    """One transcoder feature's influence on the logit difference across prompts."""

    layer: int
    """its layer"""
    feature: int
    """its index in the layer's dictionary"""
    mean: float
    """mean over prompts of its influence (direct and through other nodes, circuit-tracer's normalised influence,
    summed over the positions where it is active; 0 on prompts where it is inactive)"""
    ci: list[float]
    """[2] 95% bootstrap CI of the mean over prompts"""
    direct: float
    """mean over prompts of its direct edge into the logit-difference target (signed, logits)"""
    n_active: int
    """prompts on which it is active (at a position other than 0)"""


@section
class AgreementSummary(TypedDict):
    """One agreement statistic of the graphs with the real model, per prompt and over prompts."""

    per_prompt: list[float | None]
    """per prompt (null where undefined: fewer than two features, or only ties)"""
    n: int
    """prompts where it is defined"""
    mean: float | None
    """mean over those prompts (null when none)"""
    ci: list[float] | None
    """[2] 95% bootstrap CI of the mean over prompts (null when none)"""


@section
class CheckMeasure(TypedDict):
    """The graphs' predicted changes of the logit difference for their top-k features against one actual measure."""

    spearman: AgreementSummary
    """rank correlation of predicted and actual over each prompt's top-k"""
    sign_agreement: AgreementSummary
    """fraction of each prompt's top-k whose predicted and actual changes agree in sign"""


@section
class FeatureCheck(TypedDict):
    """On every prompt the graph's top-k features (by influence) zeroed or scaled in the real model."""

    k: int
    """features checked per prompt"""
    linear_model_error: float
    """largest |prediction − zeroing with attention, norms and gates held| over prompts and features (the graph's own
    linear model run by the model's code: rounding)"""
    features: NotRequired[list[list[list[int]]]]
    """per prompt the checked features, [layer, position, feature] each, in order of influence (absent in files
    written before it)"""
    measures: dict[str, CheckMeasure]
    """per measure (zeroing: the replacement downstream; model_zeroing, model_derivative: the real model's own MLPs;
    model_derivative_attention_held: also attention patterns held; model_derivative_attention_norms_held: also norm
    scales held, so only the MLPs differ from the graph's linear model; absent in files written before it):
    agreement with the graph; and model_zeroing_by_model_derivative, which compares no graph: the real model's own
    first-order prediction −a·dΔ/da against its zeroing, how far any exact linear attribution could agree (absent
    in files written before it)"""


@section
class Features(TypedDict):
    """Attribution graphs of the task's prompts (target: the logit difference answer − mean incorrect)."""

    transcoders: str
    """the dictionaries' folder or name"""
    n_prompts: int
    """prompts attributed"""
    frozen_positions: NotRequired[list[list[int]]]
    """per prompt the positions the graph freezes like BOS (BOS and massive activations: no nodes, MLP outputs
    constant; absent in files written before it)"""
    replacement: list[float]
    """per prompt: the graph's replacement score (token influence / (token + error influence))"""
    completeness: list[float]
    """per prompt: the graph's completeness score (influence-weighted share of non-error inputs)"""
    max_check: float
    """largest relative residual of the exactness invariant over prompts (Σ in-edges + bias − value)"""
    top: list[FeatureInfluence]
    """the features with the largest mean influence, largest first"""
    check: NotRequired[FeatureCheck]
    """the graphs' predictions against the real model (absent with feature_check 0)"""
