"""Load a model by name or path: the built-in model, a ``.gguf`` file, a local Hugging Face folder, a hub name.

Every source becomes a local folder or hub name (a GGUF file is dequantised once into a cached folder,
:mod:`logitlab.model.gguf`), then:

* **cached**: the folder's processed weights are in logitlab's cache (:mod:`logitlab.model.cache`): they go
  straight into the runner while the tokenizer loads; the bridge is booted only if something asks for it;
* **otherwise**: Hugging Face loads the float32 model (:mod:`logitlab.model.hub`), TransformerLens boots its
  bridge in compatibility mode (:mod:`logitlab.model.bridge`), and its processed weights are read
  (:mod:`logitlab.model.build`) and cached for the next load.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from logitlab.errors import LogitlabError
from logitlab.model.bridge import boot_bridge
from logitlab.model.build import check_supported, from_bridge
from logitlab.model.cache import load_weights, processed_path
from logitlab.model.gguf import BUILTIN_ALIASES, BUILTIN_NAME, builtin_gguf, gguf_to_folder
from logitlab.model.hub import OFFLINE_HELP, load_hf
from logitlab.model.model import DTYPES, Model
from logitlab.model.runner import Runner
from logitlab.model.spec import read_spec
from logitlab.model.tokenizer import load_tokenizer

__all__ = ["load_source", "resolve_source"]


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


def load_source(spec: str, device: str, dtype: str, trust_remote_code: bool = False, cache: bool = True) -> Model:
    """Load the model ``spec`` names (see the module docstring) onto ``device`` in ``dtype`` (both checked)."""
    source, name = resolve_source(spec)
    cached = processed_path(source) if cache else None
    weights = load_weights(cached) if cached is not None and cached.is_file() else None
    if weights is not None:
        from transformers import AutoConfig
        # The tokenizer (about a second for a large vocabulary) loads while the weights are laid out.
        with ThreadPoolExecutor(1) as pool:
            tok_future = pool.submit(load_tokenizer, source, spec in BUILTIN_ALIASES, trust_remote_code)
            spec_ = read_spec(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code))
            runner = Runner(spec_, weights.to(device, DTYPES[dtype]))
            tok = tok_future.result()
        return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=runner, device=device, dtype=dtype,
                     bridge=None, trust_remote_code=trust_remote_code)
    hf, tok = load_hf(source, trust_remote_code)
    check_supported(hf.config, dtype)  # before the (slow) boot
    bridge = boot_bridge(source, hf, tok, name, device)
    return from_bridge(bridge, hf.config, tok, source, name, device, dtype, trust_remote_code, cached)
