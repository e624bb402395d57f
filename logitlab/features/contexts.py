"""Top-activating contexts of dictionary features: for every layer and feature, the positions of a text where the
feature is most active, each with the tokens around it and the feature's activation on each (a feature card's data).

Method. The sequences run through logitlab's staged runner in batches; each layer's dictionary input is read as
training reads it (:func:`logitlab.features.quality.mlp_io`: the MLP's input, or its output for an SAE set) and
encoded. A running top-k per (layer, feature) keeps the ``top`` largest positive activations seen so far, each with
the feature's activations over a window around it (``window`` = tokens before, after; clipped to the sequence), so
memory is O(layers × features × top × window), never every activation. The order is that of sorting every
activation of a feature (largest first, ties to the earlier position: sequence, then position): tested against a
brute force. Position 0 (BOS) is not read, as in training, the metrics and the attribution graphs (its activations
are outliers no dictionary is trained on), and windows start at position 1.

Invariant: each context's ``acts[pos]`` is the feature's activation at that position, ``max``; no position of the
text outside the listed ones has a larger activation than the feature's last context.

File (:func:`save_contexts`): ``feature_contexts.json`` next to the dictionaries, ``{"version": 1, "corpus": str,
"n_tokens": int, "layers": {"<layer>": {"<feature>": [{"tokens": [str, …], "acts": [float, …], "max": float,
"pos": int}, …]}}}``: contexts by ``max`` descending, tokens decoded one by one (``tokenizer.decode([id])``),
``pos`` the index in ``tokens`` of the position ranked, floats to 4 significant digits (zero written ``0``),
features that are never active (> 0) left out.

Example::

    ctx = feature_contexts(model, dicts, tokens)     # tokens: (n_seqs, seq_len) with BOS first
    ctx.layers[3][17][0].tokens                      # the strongest context of layer 3's feature 17
    save_contexts(ctx, "path/to/transcoders")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from logitlab._io import atomic_write
from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet
from logitlab.features.quality import mlp_io, staged

__all__ = ["Context", "FeatureContexts", "feature_contexts", "save_contexts", "CONTEXTS_FILE", "VERSION"]

CONTEXTS_FILE = "feature_contexts.json"
VERSION = 1


@dataclass(frozen=True)
class Context:
    """One top-activating position of a feature and the window of tokens around it."""

    tokens: tuple[str, ...]  # decoded one by one
    acts: tuple[float, ...]  # the feature's activation on each token
    max: float  # its activation at the position ranked (= acts[pos])
    pos: int  # index in tokens of the position ranked
    seq: int  # the sequence (row of the input) …
    position: int  # … and the position in it

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "acts": [_round(a) for a in self.acts], "max": _round(self.max),
                "pos": self.pos}


@dataclass(frozen=True)
class FeatureContexts:
    """Per layer, per feature (active ones only), its top contexts by activation, largest first."""

    layers: dict[int, dict[int, list[Context]]]
    n_tokens: int  # positions read (BOS excluded)
    corpus: str = ""  # what text
    top: int = 10
    window: tuple[int, int] = (8, 2)

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "corpus": self.corpus, "n_tokens": self.n_tokens,
                "layers": {str(l): {str(f): [c.to_dict() for c in cs] for f, cs in feats.items()}
                           for l, feats in self.layers.items()}}


def _round(x: float) -> float | int:
    """``x`` to 4 significant digits (keeps the file small), zero as ``0`` (most of a window's activations; a
    JumpReLU's inactive ones are often −0.0)."""
    return 0 if x == 0 else float(f"{x:.4g}")


class _TopK:
    """One layer's running top-``top`` per feature: feature, activation, global position and window, (M,) each."""

    def __init__(self, n_features: int, top: int, width: int, device: torch.device) -> None:
        self.F, self.top = n_features, top
        self.feat = torch.zeros(0, dtype=torch.long, device=device)
        self.val = torch.zeros(0, device=device)
        self.gpos = torch.zeros(0, dtype=torch.long, device=device)
        self.win = torch.zeros(0, width, device=device)

    def update(self, acts: Tensor, seq0: int, first: int, offsets: Tensor) -> None:
        """Merge a batch's activations ``acts`` (B, T, F) of sequences ``seq0``, ``seq0 + 1``, …"""
        T = acts.shape[1]
        b, t, f = (acts[:, first:] > 0).nonzero(as_tuple=True)  # the batch's active (sequence, position, feature)
        t = t + first
        val = acts[b, t, f]
        # a feature that already has `top` entries takes only larger values (an equal one is at a later position)
        counts = torch.bincount(self.feat, minlength=self.F)
        full = counts >= self.top
        bar = torch.full((self.F,), -math.inf, device=acts.device)
        bar[full] = self.val[(counts.cumsum(0) - 1)[full]]  # each full feature's smallest kept value (sorted)
        live = val > bar[f]
        b, t, f, val = b[live], t[live], f[live], val[live]
        gpos = (seq0 + b) * T + t
        n_old = len(self.feat)
        feat_all, val_all, gpos_all = (torch.cat([self.feat, f]), torch.cat([self.val, val]),
                                       torch.cat([self.gpos, gpos]))
        # order by (feature ↑, activation ↓, position ↑): stable sorts from the last key to the first
        order = torch.sort(gpos_all, stable=True).indices
        order = order[torch.sort(val_all[order], descending=True, stable=True).indices]
        order = order[torch.sort(feat_all[order], stable=True).indices]
        fs = feat_all[order]
        counts = torch.bincount(fs, minlength=self.F)
        starts = counts.cumsum(0) - counts
        keep = order[torch.arange(len(order), device=fs.device) - starts[fs] < self.top]  # rank within its feature
        is_old = keep < n_old
        new = keep[~is_old] - n_old
        # windows only for the batch's survivors: (m, W) positions, clipped (their values are cut off when written)
        tt = (t[new, None] + offsets).clamp(first, T - 1)  # (m, W)
        win = torch.empty(len(keep), len(offsets), device=acts.device)
        win[is_old] = self.win[keep[is_old]]
        win[~is_old] = acts[b[new, None], tt, f[new, None]]
        # kept in the sorted order: each feature's entries largest first
        self.feat, self.val, self.gpos, self.win = feat_all[keep], val_all[keep], gpos_all[keep], win


@torch.no_grad()
def feature_contexts(model: Any, dictionaries: DictionarySet, sequences: Int[Tensor, "batch pos"], top: int = 10,
                     window: tuple[int, int] = (8, 2), batch: int = 8, corpus: str = "",
                     progress: bool = False) -> FeatureContexts:
    """Every layer's features' top ``top`` activating positions in ``sequences`` (BOS first), each with a window
    of ``window`` = (before, after) tokens, clipped to the sequence; ``batch`` sequences per forward pass."""
    r = staged(model)
    dictionaries.check(model, check_name=False)
    before, after = window
    if top < 1 or before < 0 or after < 0 or batch < 1:
        raise LogitlabError(f"top ({top}) and batch ({batch}) must be positive and the window ({window}) not negative")
    if sequences.ndim != 2 or sequences.shape[1] < 2:
        raise LogitlabError(f"sequences must be (n_seqs, seq_len ≥ 2) token ids, got shape {tuple(sequences.shape)}")
    first = 1  # position 0 (BOS) is not read
    N, T = sequences.shape
    ds = dictionaries.to(r.device, torch.float32)
    offsets = torch.arange(-before, after + 1, device=r.device)
    state = [_TopK(ds.n_features, top, len(offsets), r.device) for _ in range(ds.n_layers)]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    bar = Progress(TextColumn("feature contexts"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=not progress)
    with bar:
        task = bar.add_task("contexts", total=math.ceil(N / batch))
        for s0 in range(0, N, batch):
            io = mlp_io(model, sequences[s0:s0 + batch])
            for layer, tc in enumerate(ds.layers):
                x_in, y_out = io[layer]
                x = (y_out if ds.input_point == "mlp_out" else x_in).float()  # as layer_quality reads it
                state[layer].update(tc.encode(x), s0, first, offsets)  # (B, T, F)
            bar.update(task, advance=1)

    seqs = sequences.cpu()
    decoded: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in decoded:
            decoded[i] = model.tokenizer.decode([i])
        return decoded[i]

    layers: dict[int, dict[int, list[Context]]] = {}
    for layer, st in enumerate(state):
        feats: dict[int, list[Context]] = {}
        for f, v, g, w in zip(st.feat.tolist(), st.val.tolist(), st.gpos.tolist(), st.win.cpu().tolist()):
            s, t = divmod(g, T)
            lo, hi = max(first, t - before), min(T, t + after + 1)
            feats.setdefault(f, []).append(Context(
                tokens=tuple(text(i) for i in seqs[s, lo:hi].tolist()), acts=tuple(w[lo - t + before:hi - t + before]),
                max=v, pos=t - lo, seq=s, position=t))
        layers[layer] = dict(sorted(feats.items()))
    return FeatureContexts(layers=layers, n_tokens=N * (T - first), corpus=corpus, top=top, window=window)


def save_contexts(contexts: FeatureContexts, folder: str | Path) -> Path:
    """Write ``folder/feature_contexts.json`` (compact JSON); returns its path."""
    path = Path(folder) / CONTEXTS_FILE
    with atomic_write(path) as f:
        f.write(json.dumps(contexts.to_dict(), ensure_ascii=False, separators=(",", ":")))
    return path
