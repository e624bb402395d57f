"""One analysis per module; each returns a typed, frozen result with ``to_dict()``."""

from logitlab.analyses._common import CleanRun, clean_run
from logitlab.analyses.ablation import AblationResult, head_ablation
from logitlab.analyses.atp import AtPResult, attribution_patching
from logitlab.analyses.attribution import ComponentResult, DLAResult, dla, layer_attribution, logit_lens
from logitlab.analyses.heads import AttentionResult, HeadAttributionResult, attention_patterns, head_attribution
from logitlab.analyses.logit_diff import LogitDiffResult, logit_diff
from logitlab.analyses.circuit import CircuitResult, eap_ig_circuit
from logitlab.analyses.patching import PatchingResult, activation_patching
from logitlab.analyses.path_patching import PathPatchingResult, path_patching
from logitlab.analyses.predict import Prediction, predict, task_predictions
from logitlab.analyses.robustness import RobustnessResult, robustness
from logitlab.analyses.unembed_bias import UnembedBiasPair, UnembedBiasResult, unembed_bias

__all__ = [
    "CleanRun", "clean_run", "AblationResult", "head_ablation", "ComponentResult", "DLAResult", "dla",
    "layer_attribution", "logit_lens", "AttentionResult", "HeadAttributionResult", "attention_patterns",
    "head_attribution", "LogitDiffResult", "logit_diff", "PatchingResult", "activation_patching", "Prediction",
    "predict", "task_predictions", "RobustnessResult", "robustness", "UnembedBiasPair", "UnembedBiasResult",
    "unembed_bias", "AtPResult", "attribution_patching", "CircuitResult", "eap_ig_circuit", "PathPatchingResult",
    "path_patching",
]
