"""The results type of the ``features`` analysis (attribution graphs over transcoder features across a task's
prompts), written by :mod:`logitlab.features.analysis`."""

from __future__ import annotations

from typing_extensions import TypedDict

from logitlab.results._base import section

__all__ = ["FeatureInfluence", "Features"]


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
class Features(TypedDict):
    """Attribution graphs of the task's prompts (target: the logit difference answer − mean incorrect)."""

    transcoders: str
    """the dictionaries' folder or name"""
    n_prompts: int
    """prompts attributed"""
    replacement: list[float]
    """per prompt: the graph's replacement score (token influence / (token + error influence))"""
    completeness: list[float]
    """per prompt: the graph's completeness score (influence-weighted share of non-error inputs)"""
    max_check: float
    """largest relative residual of the exactness invariant over prompts (Σ in-edges + bias − value)"""
    top: list[FeatureInfluence]
    """the features with the largest mean influence, largest first"""
