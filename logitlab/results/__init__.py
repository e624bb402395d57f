"""The types of ``results.json``, defined once: the analyses produce them, the report reads them, tests check them.

A run's results are a plain JSON object (numbers, strings, nested lists) so that any tool can read them. Its
shape is spelled out as :class:`typing.TypedDict` s, one module per concern:

- :mod:`~logitlab.results._base`: the strict configuration, ``SCHEMA_VERSION``, the array aliases;
- :mod:`~logitlab.results.core`: task, model, predictions, logit difference, DLA, logit lens, attributions,
  attention patterns, unembedding bias;
- :mod:`~logitlab.results.ablation`, :mod:`~logitlab.results.patching` (one position-patching type for the
  resid/attn/mlp sections), :mod:`~logitlab.results.circuit` (AtP, path patching, EAP-IG),
  :mod:`~logitlab.results.robustness`;
- :mod:`~logitlab.results.schema`: the whole file's type, derived from the registered analyses
  (:mod:`logitlab.registry`: each names its keys and their types), validation and :func:`load_results`;
- :mod:`~logitlab.results.docs`: the key table of ``docs/results.md``.

Every field's docstring is its documentation: it becomes the field's ``description`` in the JSON Schema
(``logitlab schema``) and its row in ``docs/results.md``. :class:`Results` below is the static view of a battery's
file for type checkers; :func:`results_type` is what validation uses, and a test checks that they agree.

Example:
    >>> from logitlab.results import load_results
    >>> results = load_results("logitlab-out/results.json")  # validated (older versions migrated or refused)
"""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict

from logitlab.results._base import SCHEMA_VERSION, Cube, Matrix, MaybeCube, MaybeMatrix, Pair, section
from logitlab.results.ablation import AblationScores, AblationTop, HeadAblation
from logitlab.results.circuit import (
    AtPKind, AtPMiss, AttributionPatching, Circuit, CircuitChoice, CircuitEdge, Faithfulness, PathPatching,
)
from logitlab.results.core import (
    DLA, Attention, AttentionHead, HeadAttribution, HeadAttributionDetail, HeadAttributionTop, LayerAttribution,
    LogitDiff, LogitLens, ModelSection, PatchingPair, Prediction, Predictions, TaskSection, TopToken, UnembedBias,
    UnembedBiasPair,
)
from logitlab.results.docs import results_table
from logitlab.results.features import Features
from logitlab.results.patching import (
    AttnPatching, AttnPatchingSection, HeadPatching, HeadPatchingSet, MlpPatching, MlpPatchingSection, PatchingSet,
    PositionPatching, ResidPatching, ResidPatchingSection,
)
from logitlab.results.robustness import (
    HeadAgreement, HeadTemplates, KeyHeads, Robustness, RobustnessHead, RobustnessSubject, RobustnessTemplate,
)
from logitlab.results.schema import (
    MIGRATIONS, config_section_type, load_results, results_schema, results_type, validate_results,
)

__all__ = [
    "SCHEMA_VERSION", "Results", "TaskSection", "PatchingPair", "ModelSection", "ConfigSection", "CircuitSettings",
    "Prediction", "Predictions", "TopToken", "LogitDiff", "DLA", "LogitLens", "LayerAttribution", "HeadAttribution",
    "HeadAttributionDetail", "HeadAttributionTop", "Attention", "AttentionHead", "HeadAblation", "AblationScores",
    "AblationTop", "PositionPatching", "ResidPatching", "AttnPatching", "MlpPatching", "ResidPatchingSection",
    "AttnPatchingSection", "MlpPatchingSection", "HeadPatching", "PatchingSet",
    "HeadPatchingSet", "UnembedBias", "UnembedBiasPair", "Robustness", "RobustnessTemplate", "RobustnessSubject",
    "RobustnessHead", "KeyHeads", "HeadAgreement", "HeadTemplates", "AtPMiss", "AtPKind", "AttributionPatching",
    "PathPatching", "CircuitEdge", "Faithfulness", "CircuitChoice", "Circuit", "Matrix", "Cube", "MaybeMatrix",
    "MaybeCube", "Pair", "section", "results_type", "config_section_type", "results_schema", "validate_results",
    "load_results", "results_table", "MIGRATIONS",
]


def __getattr__(name: str) -> Any:
    """``ConfigSection`` (the ``config`` section's type, :func:`config_section_type`) and ``CircuitSettings`` (its
    ``circuit`` group), derived from RunConfig when first asked for (RunConfig is built after this package)."""
    if name == "ConfigSection":
        return config_section_type()
    if name == "CircuitSettings":
        return config_section_type().__annotations__["circuit"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Results(TypedDict):
    """A battery run's ``results.json`` with the built-in analyses, for type checkers (validation uses
    :func:`results_type`, built from the registry; ``tests/unit/test_registry.py`` checks the two agree)."""

    schema_version: Literal[6]
    logitlab_version: str
    config: dict[str, Any]  # ConfigSection, derived from RunConfig at import (so not spelled out here)
    model: ModelSection
    task: TaskSection
    predictions: Predictions
    logit_diff: LogitDiff
    dla: DLA
    logit_lens: LogitLens
    layer_attribution: LayerAttribution
    head_attribution: HeadAttribution
    head_attribution_detail: HeadAttributionDetail
    attention: NotRequired[Attention]
    head_ablation: NotRequired[HeadAblation]
    resid_patching: NotRequired[ResidPatchingSection]
    attn_patching: NotRequired[AttnPatchingSection]
    mlp_patching: NotRequired[MlpPatchingSection]
    head_patching: NotRequired[HeadPatching]
    attribution_patching: NotRequired[AttributionPatching]
    path_patching: NotRequired[PathPatching]
    unembed_bias: UnembedBias
    robustness: NotRequired[Robustness]
    circuit: NotRequired[Circuit]
    features: NotRequired[Features]
