"""The data of a graph's feature cards (graph.html): each kept feature's top logit effects and, when a contexts file
is present, its top-activating contexts. Added to graph.json's feature nodes (new fields; nothing renamed).

Logit effects: a feature's decoder row read through the unembedding, ``(W_dec[f] ⊙ w_final) @ W_U`` (centred first
on LayerNorm models, the linear part of the norm): the direct effect on each logit of a unit write of the feature,
up to the final norm's scale. This ignores the final norm's scale (one positive number per position, the same for
every token, so the ranking is exact for a write at the last position) and every path through later layers; the
logits are before any final soft-cap. The graph's own edges into the logit targets are the exact direct effects.

Contexts file (``feature_contexts.json`` next to the dictionaries)::

    {"version": 1, "corpus": str,
     "layers": {"<layer>": {"<feature>": [{"tokens": [str, ...], "acts": [float, ...], "max": float}, ...]}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from logitlab.errors import LogitlabError
from logitlab.features.contexts import CONTEXTS_FILE, VERSION

__all__ = ["CONTEXTS_FILE", "MAX_CONTEXTS", "add_cards", "load_contexts", "logit_effects"]

MAX_CONTEXTS = 5  # contexts shown per card
APPROXIMATION = ("W_dec[f] ⊙ final norm weight @ W_U (centred on LayerNorm models); the final norm's scale and "
                 "paths through later layers ignored; before any final soft-cap")


#: Unembedding columns read per block on the CPU (8× on a GPU): each block is widened to float32 on its own, so a
#: bfloat16 model holds no float32 copy of the whole unembedding (on a 262k vocabulary, 4 bytes × d_model × 262k).
_VOCAB_COLS = 4096


def logit_effects(model: Any, dictionaries: Any, keys: list[tuple[int, int]], k: int = 5,
                  chunk: int = 64) -> dict[tuple[int, int], dict[str, list[dict[str, Any]]]]:
    """The ``k`` largest and smallest logit effects of each (layer, feature) in ``keys``.

    The unembedding is read in column blocks (:data:`_VOCAB_COLS`), each widened to float32 as it is used, with a
    running top-k and bottom-k over the blocks: the same numbers as the product with the whole unembedding.

    Returns, per key, ``{"top": [...], "bottom": [...]}``, each entry ``{"token": id, "text": str, "value": float}``
    (top: largest first; bottom: most negative first).
    """
    runner = model.runner
    w, spec = runner.w, runner.spec
    W_U = w.W_U  # (D, V), the model's dtype
    lnf_w = None if w.lnf_w is None else w.lnf_w.float()  # (D,)
    V = int(W_U.shape[1])
    k = min(k, V)
    cols = _VOCAB_COLS * (8 if W_U.device.type == "cuda" else 1)
    out: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = {}
    by_layer: dict[int, list[int]] = {}
    for layer, f in sorted(set(keys)):
        by_layer.setdefault(layer, []).append(f)
    dec = lambda i: model.tokenizer.decode([i])  # noqa: E731
    for layer, feats in by_layer.items():
        W_dec = dictionaries.layers[layer].W_dec  # (F, D)
        for c0 in range(0, len(feats), chunk):
            fs = feats[c0:c0 + chunk]
            rows = W_dec[fs].to(W_U.device, torch.float32)  # (n, D)
            if getattr(spec, "normalization", None) == "LN":
                rows = rows - rows.mean(-1, keepdim=True)
            if lnf_w is not None:
                rows = rows * lnf_w
            hi = lo = None  # running (values, token ids), each (n, k)
            for b0 in range(0, V, cols):
                eff = rows @ W_U[:, b0:b0 + cols].float()  # (n, cols) this block's logit effects
                hi = _merge(hi, eff, b0, k, largest=True)
                lo = _merge(lo, eff, b0, k, largest=False)
            assert hi is not None and lo is not None  # V ≥ 1
            for j, f in enumerate(fs):
                out[(layer, f)] = {
                    "top": [{"token": int(t), "text": dec(int(t)), "value": float(v)}
                            for v, t in zip(hi[0][j].tolist(), hi[1][j].tolist())],
                    "bottom": [{"token": int(t), "text": dec(int(t)), "value": float(v)}
                               for v, t in zip(lo[0][j].tolist(), lo[1][j].tolist())]}
    return out


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, eff: torch.Tensor, offset: int, k: int,
           largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The running ``k`` largest (or smallest) values and their token ids, sorted, after the block ``eff``
    (n, cols) whose first column is token ``offset``."""
    blk = eff.topk(min(k, eff.shape[1]), dim=-1, largest=largest)  # (n, ≤k)
    vals, ids = blk.values, blk.indices + offset
    if best is not None:
        vals, ids = torch.cat([best[0], vals], -1), torch.cat([best[1], ids], -1)  # (n, ≤2k)
    keep = vals.topk(min(k, vals.shape[1]), dim=-1, largest=largest)  # sorted: largest (smallest) first
    return keep.values, ids.gather(-1, keep.indices)


def load_contexts(path: str | Path) -> dict[str, Any]:
    """Read and check a contexts file (format in the module docstring); raises naming what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LogitlabError(f"cannot read the feature contexts {path}: {e}") from e
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("layers"), dict):
        raise LogitlabError(f"{path}: expected {{'version': {VERSION}, 'corpus': ..., 'layers': {{...}}}}")
    for layer, feats in data["layers"].items():
        if not isinstance(feats, dict):
            raise LogitlabError(f"{path}: layers.{layer} is not an object of features")
        for f, ctxs in feats.items():
            for i, c in enumerate(ctxs):
                if not (isinstance(c, dict) and isinstance(c.get("tokens"), list) and isinstance(c.get("acts"), list)
                        and len(c["tokens"]) == len(c["acts"])):
                    raise LogitlabError(f"{path}: layers.{layer}.{f}[{i}] needs 'tokens' and 'acts' of equal length")
    return data


def add_cards(data: dict[str, Any], model: Any, dictionaries: Any, contexts: dict[str, Any] | None = None,
              k: int = 5) -> dict[str, Any]:
    """Add each kept feature node's ``top_logits``, ``bottom_logits`` and (with ``contexts``) ``contexts`` (at
    most :data:`MAX_CONTEXTS`, highest maximum first) to graph.json's dict ``data``, in place; returns it."""
    feats = [n for n in data["nodes"] if n["kind"] == "feature" and n["kept"]]
    effects = logit_effects(model, dictionaries, [(n["layer"], n["feature"]) for n in feats], k)
    layers = (contexts or {}).get("layers", {})
    for n in feats:
        e = effects[(n["layer"], n["feature"])]
        n["top_logits"], n["bottom_logits"] = e["top"], e["bottom"]
        if contexts is not None:
            ctxs = layers.get(str(n["layer"]), {}).get(str(n["feature"]), [])
            ctxs = sorted(ctxs, key=lambda c: -float(c.get("max", max(c["acts"], default=0.0))))
            n["contexts"] = [{"tokens": [str(t) for t in c["tokens"]], "acts": [float(a) for a in c["acts"]],
                              "max": float(c.get("max", max(c["acts"], default=0.0)))} for c in ctxs[:MAX_CONTEXTS]]
    data["cards"] = {"logit_effects": APPROXIMATION, "k": k,
                     "contexts": None if contexts is None else str(contexts.get("corpus", ""))}
    return data
