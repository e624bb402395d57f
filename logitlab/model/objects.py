"""Load a model object already in memory: a TransformerLens ``TransformerBridge`` or a transformers model.

Researchers often have a model loaded in a notebook. ``load_model(obj)`` gives the same numbers as loading
the same weights by path, because it runs the same steps: a bridge in compatibility mode (LayerNorm folded,
writing weights and unembedding centred) from float32 weights, its processed weights read by
``read_weights``, then ``Runner(spec, weights)`` (or the hook fallback for other architectures).

The caller's object is never changed. Booting a bridge rewrites the model it wraps (its modules are replaced
by bridge components, its attention switched to eager) and compatibility mode rewrites the weights, so
logitlab boots its own bridge on a fresh float32 copy of the raw weights:

* a ``PreTrainedModel`` (with ``tokenizer=``): copied, then booted;
* a bridge *not* in compatibility mode: its underlying model's raw weights are copied, then booted;
* a bridge in compatibility mode: its raw weights are gone, so its processed weights are read directly,
  after checking from its own state that it was processed as logitlab processes (LayerNorm folded, writing
  weights and unembedding centred, value biases folded) and in float32; otherwise it is refused, naming why.
  It is kept as the Model's bridge if it is in eval mode on the requested device, else a copy is.

Tokenizers are copied by saving and re-loading them: the bridge re-loads a tokenizer from its
``name_or_path`` and adjusts its special tokens in place, and a tokenizer built in memory has no folder.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch

from logitlab.errors import LogitlabError
from logitlab.model.bridge import boot_bridge
from logitlab.model.build import check_supported, from_bridge
from logitlab.model.model import Model
from logitlab.model.spec import _norm_params, _stack_or_zeros
from logitlab.model.tokenizer import copy_tokenizer

__all__ = ["load_object"]

_ACCEPTED = "a model name or path (str), a TransformerLens TransformerBridge, or a transformers PreTrainedModel " \
            "with tokenizer="
_WRAPPED = "._original_component"  # how a bridge's components nest the modules they replace


def load_object(obj: Any, device: str, dtype: str, tokenizer: Any = None, trust_remote_code: bool = False) -> Model:
    """The Model of a loaded bridge or Hugging Face model (see module docstring); ``obj`` is left unchanged."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel
    if isinstance(obj, TransformerBridge):
        return _load_bridge(obj, device, dtype, tokenizer, trust_remote_code)
    if isinstance(obj, PreTrainedModel):
        return _load_pretrained(obj, device, dtype, tokenizer, trust_remote_code)
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    raise LogitlabError(f"load_model() cannot load a {kind}", f"pass {_ACCEPTED}")


def _load_pretrained(hf: Any, device: str, dtype: str, tokenizer: Any, trust: bool) -> Model:
    if tokenizer is None:
        raise LogitlabError(f"a Hugging Face model ({type(hf).__name__}) needs its tokenizer",
                            "pass tokenizer=, e.g. load_model(model, tokenizer=AutoTokenizer.from_pretrained(...))")
    if _is_wrapped(hf):
        raise LogitlabError(f"this {type(hf).__name__} is wrapped by a TransformerBridge (its modules were "
                            "replaced, and its weights may be processed)", "pass the TransformerBridge itself")
    name = getattr(hf.config, "_name_or_path", "") or type(hf).__name__
    return _boot_copy(hf, hf.state_dict(), tokenizer, name, name, device, dtype, trust)


def _load_bridge(bridge: Any, device: str, dtype: str, tokenizer: Any, trust: bool) -> Model:
    model_name = str(getattr(bridge.cfg, "model_name", "") or "")
    name = f"TransformerBridge({model_name})"
    try:
        inner = bridge.original_model
    except AttributeError as e:
        raise LogitlabError(f"{name} has no local PyTorch model to read weights from ({e})",
                            "boot it with TransformerBridge.boot_transformers(...)") from e
    tok = tokenizer if tokenizer is not None else getattr(bridge, "tokenizer", None)
    if tok is None:
        raise LogitlabError(f"{name} has no tokenizer", "pass tokenizer=")
    compat = bool(getattr(bridge, "compatibility_mode", False))
    processed = bool(getattr(bridge, "_weights_processed", False))
    if not processed:
        # Raw weights (compatibility mode off, or on with no_processing=True): process a copy as a path load does.
        return _boot_copy(inner, inner.state_dict(), tok, model_name or name, name, device, dtype, trust)
    if not compat:
        raise LogitlabError(f"{name} had process_weights() applied outside compatibility mode: its raw weights are "
                            "gone and its hooks are not HookedTransformer-compatible",
                            "pass a freshly booted bridge, with or without enable_compatibility_mode()")
    _check_processing(bridge, name)
    hf_config = inner.config
    check_supported(hf_config, dtype)  # refuse an unsupported variant before anything else
    if bridge.training or not _on_device(bridge, device):
        # Its forward pass must run in eval mode on ``device`` (hooks, the fallback): use a copy, not the original.
        bridge = copy.deepcopy(bridge)
        bridge.eval()
        bridge.to(device)
    return from_bridge(bridge, hf_config, tok, model_name or name, name, device, dtype, trust)


def _boot_copy(hf: Any, state: dict[str, torch.Tensor], tokenizer: Any, source: str, name: str, device: str,
               dtype: str, trust: bool) -> Model:
    """Boot logitlab's own compatibility-mode bridge on a float32 copy of ``hf`` with weights ``state``."""
    check_supported(hf.config, dtype)
    fresh = _fresh_copy(hf, state, name)
    with tempfile.TemporaryDirectory(prefix="logitlab-tok-") as tmp:
        tok = copy_tokenizer(tokenizer, tmp, trust)
        bridge = boot_bridge(source, fresh, tok, name, device)
    return from_bridge(bridge, fresh.config, tok, source, name, device, dtype, trust)


def _fresh_copy(hf: Any, state: dict[str, torch.Tensor], name: str) -> Any:
    """A new float32 CPU model of ``hf``'s class and config holding ``state`` (as ``from_pretrained`` builds it).

    ``state`` may come from a model a bridge wraps: its keys carry the components' nesting, removed here.
    """
    for key, value in state.items():
        if value.is_meta or not value.is_floating_point():
            raise LogitlabError(f"{name}: weight {key!r} is {'on the meta device' if value.is_meta else value.dtype}",
                                "load the model with real, unquantised weights")
    clean = {k.replace(_WRAPPED, ""): v for k, v in state.items()}
    config = copy.deepcopy(hf.config)
    try:
        fresh = type(hf)._from_config(config, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001  any model class that cannot be rebuilt from its config
        raise LogitlabError(f"{name}: cannot build a copy of {type(hf).__name__} from its config: "
                            f"{type(e).__name__}: {e}") from e
    want = fresh.state_dict()
    missing = [k for k in want if k not in clean]
    wrong = [k for k in want if k in clean and clean[k].shape != want[k].shape]
    if missing or wrong:
        raise LogitlabError(f"{name}: its weights do not fit a fresh {type(hf).__name__} "
                            f"(missing {missing[:3]}, wrong shape {wrong[:3]})")
    fresh.load_state_dict({k: clean[k].detach().to("cpu", torch.float32) for k in want}, strict=True)
    return fresh.eval()


def _is_wrapped(hf: Any) -> bool:
    return any(_WRAPPED.lstrip(".") in name.split(".") for name, _ in hf.named_parameters())


def _on_device(bridge: Any, device: str) -> bool:
    want = torch.device(device)
    first = next(iter(bridge.original_model.parameters()), None)
    if first is None:
        return True
    have = first.device
    return have.type == want.type and (want.index is None or have.index == want.index)


def _close(x: torch.Tensor, target: float) -> bool:
    return (x.float() - target).abs().max().item() <= 1e-4 * max(1.0, x.float().abs().max().item())


def _check_processing(bridge: Any, name: str) -> None:
    """Refuse a compatibility-mode bridge whose processing differs from the one logitlab applies.

    ``enable_compatibility_mode`` records no options, so each one is read from what it leaves in the weights:
    folded norms have unit scale and no bias, centred matrices have zero mean along the residual stream (the
    unembedding along the vocabulary), folded value biases are zero. Conditions follow TransformerLens's own
    (writing weights are centred only under LayerNorm).
    """
    cfg = bridge.cfg
    bad = [p for p in bridge.original_model.parameters() if p.is_floating_point() and p.dtype != torch.float32]
    if bad:
        raise LogitlabError(f"{name} is in compatibility mode in {bad[0].dtype}: its processed weights were rounded "
                            "to that precision, so its numbers would differ from a float32 load",
                            "pass the bridge before enable_compatibility_mode() (logitlab then processes a float32 "
                            "copy), or boot it in float32")
    offset = bool(getattr(cfg, "rmsnorm_uses_offset", False))
    D = int(cfg.d_model)
    problems = []
    if getattr(bridge.adapter, "supports_fold_ln", True):
        norms = [b.ln1 for b in bridge.blocks] + [b.ln2 for b in bridge.blocks] + [bridge.ln_final]
        params = [_norm_params(n, offset, D) for n in norms]
        if not all(_close(w, 1.0) and _close(b, 0.0) for w, b in params):
            problems.append("LayerNorm not folded (fold_ln=False)")
    if not _close(bridge.W_U.mean(-1), 0.0):
        problems.append("unembedding not centred (center_unembed=False)")
    centred = (getattr(bridge.adapter, "supports_center_writing_weights", True)
               and cfg.normalization_type in ("LN", "LNPre") and not getattr(cfg, "final_rms", False))
    if centred and not all(_close(getattr(bridge, w).mean(-1), 0.0) for w in ("W_E", "W_O", "W_out")):
        problems.append("writing weights not centred (center_writing_weights=False)")
    L, K, dh = int(cfg.n_layers), int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads), int(cfg.d_head)
    if not _close(_stack_or_zeros(bridge, "b_V", (L, K, dh)), 0.0):
        problems.append("value biases not folded (fold_value_biases=False)")
    if problems:
        raise LogitlabError(f"{name} was put in compatibility mode with other options than logitlab's: "
                            + "; ".join(problems),
                            "pass the bridge before enable_compatibility_mode(), or call it with its defaults")
