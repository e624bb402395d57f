"""The battery's built-in analyses, one declaration each, in the order they run and write ``results.json``
(and ``--analyses`` lists them).

Each :func:`logitlab.registry.register` call names the analysis, its results key(s) and type(s), its compute step
(run context → sections, below each declaration's function), what it reads from earlier analyses, whether it
runs by default or always, and its settings dataclass (declared next to the analysis). The CLI options,
``--analyses`` choices, :class:`logitlab.config.RunConfig` and the results schema are derived from these.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from logitlab.analyses.ablation_screen import screened_ablations
from logitlab.analyses.atp import attribution_patching
from logitlab.analyses.attribution import dla, layer_attribution, logit_lens
from logitlab.analyses.circuit import CircuitSettings, eap_ig_circuit
from logitlab.analyses.context import RunContext
from logitlab.analyses.heads import AttentionSettings, attention_patterns, head_attribution
from logitlab.analyses.logit_diff import logit_diff
from logitlab.analyses.patching import MIN_GAP, PatchingSettings, activation_patching
from logitlab.analyses.path_patching import PathPatchingSettings, path_items, path_patching, top_senders
from logitlab.analyses.predict import PredictionSettings, task_predictions
from logitlab.analyses.robustness import robustness
from logitlab.analyses.unembed_bias import unembed_bias
from logitlab.errors import LogitlabError
from logitlab.features.analysis import FeatureSettings
from logitlab.model.backend import GRAD, SWEEP, has
from logitlab.registry import Analysis, register
from logitlab.screen import ScreenSettings
from logitlab.results.ablation import HeadAblation
from logitlab.results.circuit import AttributionPatching, Circuit, PathPatching
from logitlab.results.features import Features
from logitlab.results.core import (
    DLA, Attention, HeadAttribution, HeadAttributionDetail, LayerAttribution, LogitDiff, LogitLens, Predictions,
    UnembedBias,
)
from logitlab.results.patching import AttnPatchingSection, HeadPatching, MlpPatchingSection, ResidPatchingSection
from logitlab.results.robustness import Robustness

__all__: list[str] = []

log = logging.getLogger(__name__)
Sections = Mapping[str, Any]


def _predictions(ctx: RunContext) -> Sections:
    s = ctx.settings(PredictionSettings)
    return {"predictions": [p.to_dict() for p in task_predictions(ctx.run, s.n_predictions, k=s.top_k)]}


register(Analysis("predictions", {"predictions": Predictions}, _predictions, always=True,
                  settings=PredictionSettings, summary="top-k next tokens of the first prompts"))
register(Analysis("logit_diff", {"logit_diff": LogitDiff}, lambda ctx: {"logit_diff": logit_diff(ctx.run).to_dict()},
                  always=True, summary="logit difference and answer loss"))
register(Analysis("dla", {"dla": DLA}, lambda ctx: {"dla": dla(ctx.run).to_dict()}, always=True,
                  summary="direct logit attribution check"))
register(Analysis("logit_lens", {"logit_lens": LogitLens}, lambda ctx: {"logit_lens": logit_lens(ctx.run).to_dict()},
                  always=True, summary="logit lens"))
register(Analysis("layer_attribution", {"layer_attribution": LayerAttribution},
                  lambda ctx: {"layer_attribution": layer_attribution(ctx.run).to_dict()}, always=True,
                  summary="logit difference per component"))


def _head_attribution(ctx: RunContext) -> Sections:
    heads = head_attribution(ctx.run)
    ctx.keep("head_attribution", heads)
    values = heads.to_dict()
    return {"head_attribution": values["values"],
            "head_attribution_detail": {k: v for k, v in values.items() if k != "values"}}


register(Analysis("head_attribution", {"head_attribution": HeadAttribution,
                                       "head_attribution_detail": HeadAttributionDetail},
                  _head_attribution, always=True, summary="direct logit difference per head"))


def _attention(ctx: RunContext) -> Sections:
    s, spec = ctx.settings(AttentionSettings), ctx.model.spec
    return {"attention": attention_patterns(
        ctx.run, ctx.value("head_attribution"), k=min(s.n_attention_heads, spec.n_layers * spec.n_heads),
        prompt_index=min(s.attention_prompt, ctx.tt.n_prompts - 1)).to_dict()}


register(Analysis("attention", {"attention": Attention}, _attention, needs=("head_attribution",),
                  settings=AttentionSettings, summary="attention patterns of the top heads"))


def _ablation(ctx: RunContext) -> Sections:
    run, screen = ctx.run, ctx.settings(ScreenSettings)
    # The progress bar counts the items actually swept (the screen's exact heads × prompts).
    ablations = screened_ablations(run, ("zero", "mean"), screen, lambda k, n: ctx.sweep(f"{k}-ablating heads", n))
    ctx.keep("ablation", ablations)
    return {"head_ablation": {"zero": ablations["zero"].to_dict(), "mean": ablations["mean"].to_dict(),
                              "baseline_logit_diff": float(run.logit_diff.mean()),
                              "baseline_loss": float(run.loss.mean())}}


register(Analysis("ablation", {"head_ablation": HeadAblation}, _ablation, settings=ScreenSettings,
                  summary="zero- and mean-ablating each head"))


def _patching(ctx: RunContext) -> Sections:
    if not ctx.pair_items:
        return {}
    s = ctx.settings(PatchingSettings)
    sweep = ctx.sweep("activation patching", ctx.pair_items)  # at most this many items: every pair, every cell
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if sweep.progress is not None:
            sweep.progress(n)
    patching = activation_patching(ctx.model, ctx.tt, dataclasses.replace(sweep, progress=advance),
                                   max_pairs=s.patching_pairs, target=s.patching_target,
                                   screen=ctx.settings(ScreenSettings))
    if sweep.progress is not None and ctx.pair_items > done[0]:
        sweep.progress(ctx.pair_items - done[0])  # what precision targeting and the screen left out
    if patching.main is not None and not patching.main.n_pairs:
        log.warning("activation patching: no clean/corrupted pair has a gap of at least %g logits, so none is "
                    "normalised (the sections hold no values)", MIN_GAP)
    ctx.keep("patching", patching)
    return patching.to_dict()


register(Analysis("patching", {"resid_patching": ResidPatchingSection, "attn_patching": AttnPatchingSection,
                               "mlp_patching": MlpPatchingSection, "head_patching": HeadPatching},
                  _patching, settings=PatchingSettings, summary="exact activation patching"))


def _atp(ctx: RunContext) -> Sections:
    if not ctx.pair_items or not has(ctx.model, GRAD):
        return {}
    adv = ctx.progress("attribution patching", 1)
    out = attribution_patching(ctx.model, ctx.tt, exact=ctx.value("patching"),
                               max_pairs=ctx.settings(PatchingSettings).patching_pairs).to_dict()
    adv(1)
    return {"attribution_patching": out}


register(Analysis("atp", {"attribution_patching": AttributionPatching}, _atp, needs=("patching",),
                  summary="attribution patching next to exact patching"))


def _path_patching(ctx: RunContext) -> Sections:
    if not ctx.pair_items or not has(ctx.model, SWEEP):
        return {}
    s = ctx.settings(PathPatchingSettings)
    ablations = ctx.value("ablation") or {}
    senders = top_senders(ctx.value("head_attribution"), ablations.get("zero"), s.n_senders)
    adv = ctx.progress("path patching", path_items(ctx.model, ctx.tt, senders, s.path_pairs))
    target = ctx.settings(PatchingSettings).patching_target
    return {"path_patching": path_patching(ctx.model, ctx.tt, senders, max_pairs=s.path_pairs, progress=adv,
                                           target=target).to_dict()}


register(Analysis("path_patching", {"path_patching": PathPatching}, _path_patching,
                  needs=("head_attribution", "ablation"), settings=PathPatchingSettings, group="circuit",
                  summary="path patching from the top heads"))


register(Analysis("unembed_bias", {"unembed_bias": UnembedBias},
                  lambda ctx: {"unembed_bias": unembed_bias(ctx.model, ctx.tt).to_dict()}, always=True,
                  summary="the unembedding bias"))


def _robustness(ctx: RunContext) -> Sections:
    # Two templates or more (and ablation for its ablation rankings).
    if len({t for t in ctx.task.prompt_template if t >= 0}) < 2:
        return {}
    return {"robustness": robustness(ctx.run, ctx.value("head_attribution"), ctx.value("ablation") or {}).to_dict()}


register(Analysis("robustness", {"robustness": Robustness}, _robustness, needs=("head_attribution", "ablation"),
                  summary="logit difference and top heads per template and subject"))


def _circuit(ctx: RunContext) -> Sections:
    s = ctx.settings(CircuitSettings)
    try:
        return {"circuit": eap_ig_circuit(ctx.model, ctx.tt, steps=s.ig_steps, max_pairs=s.pairs,
                                          n_random=s.n_random, threshold=s.threshold,
                                          progress=ctx.progress).to_dict()}
    except LogitlabError as e:  # no pairs, or none the model tells apart: the rest of the battery stands
        log.warning("circuit discovery skipped: %s", e)
        return {}


register(Analysis("circuit", {"circuit": Circuit}, _circuit, default=False, settings=CircuitSettings,
                  group="circuit", summary="EAP-IG circuit discovery and its faithfulness curve"))


def _features(ctx: RunContext) -> Sections:
    from logitlab.features.analysis import task_features
    from logitlab.features.formats import load_dictionaries
    s = ctx.settings(FeatureSettings)
    if not s.transcoders:
        raise LogitlabError("the features analysis needs transcoders", "pass --transcoders DIR")
    n = min(s.feature_prompts, ctx.tt.n_prompts)
    return {"features": task_features(ctx.model, ctx.tt, load_dictionaries(s.transcoders, ctx.model), s.transcoders,
                                      n, s.feature_top, ctx.progress("attribution graphs", n), s.feature_check)}


register(Analysis("features", {"features": Features}, _features, default=False, settings=FeatureSettings,
                  summary="attribution graphs over transcoder features (needs --transcoders)"))
