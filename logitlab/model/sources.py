"""Load a model by name or path: the built-in model, a ``.gguf`` file, a local Hugging Face folder, a hub name.

Every source becomes a local folder or hub name (a GGUF file is dequantised once into a cached folder,
:mod:`logitlab.model.gguf`), then:

* **cached**: the folder's processed weights are in logitlab's cache (:mod:`logitlab.model.cache`): they go
  straight into the runner, one tensor at a time in the load's dtype, while the tokenizer loads; the bridge is
  booted only if something asks for it;
* **a local safetensors folder of a covered family** (:data:`logitlab.model.direct.DIRECT_MODEL_TYPES`:
  :mod:`logitlab.model.direct`): its tensors are read one at a time and processed per layer as the bridge
  would, straight into the load's dtype and device (the model in that dtype plus about one layer in float32),
  then cached; the bridge is booted only if something asks for it;
* **otherwise**: Hugging Face loads the float32 model (:mod:`logitlab.model.hub`), TransformerLens boots its
  bridge in compatibility mode (:mod:`logitlab.model.bridge`), and its processed weights are read
  (:mod:`logitlab.model.build`) and cached for the next load. A float32 load keeps the bridge (moved to the
  device) for hooks and interop; a bfloat16 or float16 load keeps it on the host, reads the weights from it
  in their dtype onto the device and frees it, so the device never holds a float32 copy of the model.

Before anything loads, the memory the load and run need is estimated from the model's files and a model that
cannot fit is refused (:func:`logitlab.model.memory.check_load`).
"""

from __future__ import annotations

import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from logitlab.errors import LogitlabError
from logitlab.model.bridge import boot_bridge
from logitlab.model.build import check_supported, from_bridge, staged
from logitlab.model.cache import load_weights, processed_path, save_weights
from logitlab.model.direct import direct_reason, direct_weights
from logitlab.model.spec import Weights
from logitlab.model.gguf import BUILTIN_ALIASES, BUILTIN_NAME, builtin_gguf, gguf_to_folder
from logitlab.model.hub import OFFLINE_HELP, load_hf
from logitlab.model.memory import check_load
from logitlab.model.model import DTYPES, Model
from logitlab.model.runner import Runner
from logitlab.model.spec import read_spec
from logitlab.model.tokenizer import load_tokenizer

__all__ = ["load_source", "resolve_source"]

log = logging.getLogger(__name__)


def resolve_source(spec: str) -> tuple[str, str]:
    """(folder or hub name to load, the model's display name) of a model spec; GGUF files are dequantised."""
    if spec in BUILTIN_ALIASES:
        gguf, digest = builtin_gguf()
        source, name = str(gguf_to_folder(gguf, digest)), BUILTIN_NAME
    elif spec.endswith(".gguf"):
        source, name = str(gguf_to_folder(Path(spec))), Path(spec).name
    else:
        source, name = (str(Path(spec).expanduser()) if spec.startswith("~") else spec), spec
    if not Path(source).exists() and spec.startswith((".", "/", "~")):
        raise LogitlabError(f"model path {spec!r} does not exist", OFFLINE_HELP)
    return source, name


def _cached_weights(source: str, dtype: str, device: str) -> Weights | None:
    """The processed weights of ``source`` from the cache, in ``dtype`` on ``device``: that dtype's file, else
    the float32 one read in that dtype (the same numbers); None when neither is cached."""
    for d in dict.fromkeys((dtype, "float32")):
        path = processed_path(source, d)
        if path is not None and path.is_file():
            weights = load_weights(path, DTYPES[dtype], device)
            if weights is not None:
                return weights
    return None


def _direct(source: str, name: str, builtin: bool, device: str, dtype: str, trust_remote_code: bool,
            cache: bool) -> Model | None:
    """A first load of a covered local folder without the bridge (see the module docstring), or None."""
    from transformers import AutoConfig
    if not Path(source).is_dir():
        return None
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001  the bridge path reports an unreadable folder with its own message
        return None
    if not staged(config):
        return None
    check_supported(config, dtype)
    spec_ = read_spec(config)
    reason = direct_reason(source, config, spec_)  # the checkpoint's names, shapes and dtypes only
    if reason is not None:
        log.info("%s: loading through TransformerLens (not covered by the direct load: %s)", name, reason)
        return None
    with ThreadPoolExecutor(1) as pool:
        tok_future = pool.submit(load_tokenizer, source, builtin, trust_remote_code)
        weights = direct_weights(source, config, spec_, DTYPES[dtype], device)
        tok = tok_future.result()
    if weights is None:
        return None
    cached = processed_path(source, dtype) if cache else None
    if cached is not None:
        try:
            save_weights(cached, weights)
        except OSError as e:
            log.warning("could not cache processed weights at %s: %s", cached, e)
    return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=Runner(spec_, weights), device=device,
                 dtype=dtype, bridge=None, trust_remote_code=trust_remote_code)


def load_source(spec: str, device: str, dtype: str, trust_remote_code: bool = False, cache: bool = True,
                check_memory: bool = True) -> Model:
    """Load the model ``spec`` names (see the module docstring) onto ``device`` in ``dtype`` (both checked);
    with ``check_memory``, refuse first a model whose estimated memory exceeds what is free."""
    source, name = resolve_source(spec)
    if check_memory:
        check_load(spec, dtype, device, processed_cache=cache)
    weights = _cached_weights(source, dtype, device) if cache else None
    if weights is not None:
        from transformers import AutoConfig
        # The tokenizer (about a second for a large vocabulary) loads while the weights are laid out.
        with ThreadPoolExecutor(1) as pool:
            tok_future = pool.submit(load_tokenizer, source, spec in BUILTIN_ALIASES, trust_remote_code)
            spec_ = read_spec(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code))
            runner = Runner(spec_, weights)
            tok = tok_future.result()
        return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=runner, device=device, dtype=dtype,
                     bridge=None, trust_remote_code=trust_remote_code)
    model = _direct(source, name, spec in BUILTIN_ALIASES, device, dtype, trust_remote_code, cache)
    if model is not None:
        return model
    hf, tok = load_hf(source, trust_remote_code)
    check_supported(hf.config, dtype)  # before the (slow) boot
    # A lower-precision load (staged models only: check_supported) reads the weights off a bridge on the host.
    keep = dtype == "float32" or not staged(hf.config)
    bridge = boot_bridge(source, hf, tok, name, device if keep else "cpu")
    cached = processed_path(source, dtype) if cache else None
    model = from_bridge(bridge, hf.config, tok, source, name, device, dtype, trust_remote_code, cached,
                        keep_bridge=keep)
    if not keep:
        del bridge, hf
        gc.collect()  # the bridge's modules refer to each other: free the float32 model now, not at some later GC
    return model
