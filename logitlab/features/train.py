"""Train per-layer transcoders (MLP input → MLP output) for every layer of a model, offline and resumable.

Method. ``epochs`` passes (4 by default) over a corpus; in each, each chunk of sequences runs through logitlab's
staged runner (:func:`logitlab.features.quality.mlp_io`) and every layer's transcoder takes Adam steps on that
chunk's (MLP input, MLP output) pairs, so no activations are stored. Positions 0 (BOS: outlier norms) are left out.
Inputs and targets are centred and scaled to unit mean squared norm (means and scales from the first chunk);
both are folded back into the weights when written (exact: the pre-activations and outputs are unchanged).
Centring the inputs matters: the normalised MLP inputs share a large mean direction, and without it the
few features whose encoders happen to point along it win every TopK while most never fire. Features that
have not fired for ``resample_every`` chunks are re-initialised from badly reconstructed inputs (until
three quarters of all passes).

Activation: TopK (k active features per position) while training — it needs no sparsity coefficient to
tune, which matters when training is a few short passes; decoder rows are kept at unit norm. For the
written file the TopK is turned into a JumpReLU with one threshold per layer, the mean over the last steps
of each position's k-th largest pre-activation (as BatchTopK is used at inference): a JumpReLU with a
positive threshold is the same function in circuit-tracer, SAELens and logitlab, and each feature's activity
no longer depends on the others'.

Skip connection (``skip=True``, ``--skip``): a dense linear map beside the features, ``out = f @ W_dec + b_dec
+ x @ W_skip`` (Paulo, Shabalin & Belrose 2025, "Transcoders beat sparse autoencoders for interpretability";
Gemma Scope 2 publishes such sets), trained jointly from zero. The skip path carries the MLP's response that is
linear in its input, so the features carry less of it, and the replacement's Jacobian (skip + active features'
encoder × decoder) is dense rather than of rank at most k.

Corpus: text every machine has — the Python documentation's topics (``pydoc_data.topics``, ~480k characters
of English prose), then the docstrings of a fixed list of standard-library modules, tokenised by the model's
tokenizer into sequences (BOS + ``seq_len − 1`` tokens), shuffled with a fixed seed; the last sequences are
held out for the metrics.

Resuming: every layer's parameters, Adam state and the number of chunks it has seen are checkpointed to
``checkpoints/layer_{i}.pt`` every few chunks; a re-run with the same settings continues from there.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from logitlab._io import atomic_write
from logitlab.errors import LogitlabError
from logitlab.features.contexts import feature_contexts, save_contexts
from logitlab.features.dictionary import DictionarySet, Transcoder, same_model
from logitlab.features.formats import load_dictionaries, save_circuit_tracer
from logitlab.features.quality import jacobian_stats, layer_stats, mlp_io, mlp_response, staged

__all__ = ["TrainConfig", "train_transcoders", "corpus_text", "corpus_sequences", "default_out", "corpus_contexts"]

log = logging.getLogger(__name__)

#: Standard-library modules whose docstrings extend the corpus (importing them has no side effects).
_DOC_MODULES = (
    "os", "re", "json", "collections", "itertools", "functools", "argparse", "logging", "pathlib", "typing",
    "dataclasses", "asyncio", "subprocess", "threading", "unittest", "email.message", "http.client",
    "urllib.request", "decimal", "fractions", "statistics", "random", "datetime", "calendar", "textwrap",
    "string", "shutil", "tarfile", "zipfile", "csv", "sqlite3", "inspect", "ast", "dis", "pickle", "socket",
    "heapq", "bisect", "contextlib", "enum", "abc", "io", "codecs", "locale", "gettext", "difflib", "pprint",
    "doctest", "configparser", "tempfile", "glob", "fnmatch", "hashlib", "secrets", "uuid", "operator", "copy",
    "weakref", "types", "pkgutil", "sched", "queue", "multiprocessing", "concurrent.futures", "selectors",
    "mailbox", "mimetypes", "base64", "html.parser", "ipaddress", "cmd", "shlex", "pdb", "timeit", "trace",
    "warnings", "traceback", "platform", "struct", "numbers", "graphlib", "zoneinfo", "gzip", "filecmp",
    "optparse", "getopt", "smtplib", "imaplib", "ftplib", "xml.dom.minidom", "wave", "plistlib", "netrc",
)


@dataclass(frozen=True)
class TrainConfig:
    """What to train (every field is part of the cache key)."""

    n_features: int = 1024  # per layer
    n_tokens: int = 150_000  # training tokens (per pass)
    epochs: int = 4  # passes over the training tokens (the model runs on them again in each)
    k: int = 32  # active features per position while training (TopK)
    seq_len: int = 128
    chunk_seqs: int = 8  # sequences per forward pass
    batch_tokens: int = 512  # positions per Adam step
    lr: float = 1e-3
    holdout_seqs: int = 32  # sequences held out for the metrics
    resample_every: int = 10  # chunks between re-initialisations of features that did not fire
    seed: int = 0
    skip: bool = False  # a skip connection x @ W_skip beside the features (a "skip transcoder")
    jacobian: float = 0.0  # weight of the Jacobian-matching term (0: reconstruction alone)

    def __post_init__(self) -> None:
        for name in ("n_features", "n_tokens", "epochs", "k", "chunk_seqs", "batch_tokens", "holdout_seqs",
                     "resample_every"):
            if getattr(self, name) < 1:
                raise LogitlabError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise LogitlabError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.k > self.n_features:
            raise LogitlabError(f"k {self.k} exceeds the number of features {self.n_features}")
        if not self.jacobian >= 0:
            raise LogitlabError(f"jacobian must be ≥ 0, got {self.jacobian}")


def corpus_text() -> str:
    """The training text: the Python documentation's topics, then standard-library docstrings."""
    import importlib

    from pydoc_data.topics import topics
    parts = [topics[key] for key in sorted(topics)]
    seen: set[str] = set()
    for name in _DOC_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod] + [v for k, v in sorted(vars(mod).items()) if not k.startswith("_")
                        and (inspect.isclass(v) or inspect.isfunction(v)) and getattr(v, "__module__", None) == name]
        for obj in objs:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80 and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    return "\n\n".join(parts)


def corpus_sequences(tokenizer: Any, n_seqs: int | None, seq_len: int, seed: int = 0) -> Tensor:
    """``n_seqs`` sequences (BOS + seq_len − 1 corpus tokens), shuffled with ``seed``; (n_seqs, seq_len).

    ``None``: every sequence the corpus holds. The first ``n`` are the same whatever ``n_seqs`` is asked for.
    """
    ids = tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    body = seq_len - 1
    n_avail = len(ids) // body
    n_seqs = n_avail if n_seqs is None else n_seqs
    if n_avail < n_seqs:
        raise LogitlabError(f"the corpus has {n_avail * body:,} tokens; {n_seqs * body:,} were asked for",
                            "ask for fewer tokens (--tokens)")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise LogitlabError("the model's tokenizer has no BOS token")
    seqs = torch.tensor(ids[: n_avail * body]).view(n_avail, body)
    g = torch.Generator().manual_seed(seed)
    seqs = seqs[torch.randperm(n_avail, generator=g)[:n_seqs]]
    return torch.cat([torch.full((n_seqs, 1), bos), seqs], dim=1)


def n_train_seqs(cfg: TrainConfig) -> int:
    """How many corpus sequences (the first of the shuffled order) training reads."""
    return math.ceil(cfg.n_tokens / (cfg.seq_len - 1))


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that name a run: every field, less ``skip`` and ``jacobian`` when off and ``epochs`` when 1
    (so one-pass runs from before they were added, and their cache folders, keep their names)."""
    d = asdict(cfg)
    for name in ("skip", "jacobian"):
        if not d[name]:
            del d[name]
    if d["epochs"] == 1:
        del d["epochs"]
    return d


def default_out(model: Any, cfg: TrainConfig) -> Path:
    """Where trained transcoders are cached when no --out is given (keyed by model and settings)."""
    from logitlab.model.cache import cache_dir
    key = hashlib.sha256(json.dumps([model.name, model.source, _settings(cfg)]).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in model.name.split(" (")[0].split("/")[-1])
    kind = ("-skip" if cfg.skip else "") + ("-jac" if cfg.jacobian else "")
    kind += f"-e{cfg.epochs}" if cfg.epochs > 1 else ""
    return cache_dir() / "transcoders" / f"{slug}-{cfg.n_features}f{kind}-{key}"


class _Layer:
    """One layer's transcoder while training (normalised units), with its Adam state."""

    def __init__(self, d: int, cfg: TrainConfig, g: torch.Generator) -> None:
        W_dec = torch.randn(cfg.n_features, d, generator=g)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.params = {"W_enc": W_dec.T.contiguous().requires_grad_(True),
                       "b_enc": torch.zeros(cfg.n_features, requires_grad=True),
                       "W_dec": W_dec.requires_grad_(True), "b_dec": torch.zeros(d, requires_grad=True)}
        if cfg.skip:  # starts at zero, as Paulo et al. (2025) start theirs
            self.params["W_skip"] = torch.zeros(d, d, requires_grad=True)
        self.opt = torch.optim.Adam(self.params.values(), lr=cfg.lr)
        self.scales: dict[str, Tensor] = {}
        self.chunks = 0
        self.kth = 0.0  # running mean of each position's k-th largest pre-activation
        self.n_kth = 0
        self.fired = torch.zeros(cfg.n_features, dtype=torch.long)  # activations since the last resampling

    def step(self, x: Tensor, y: Tensor, k: int, jac: tuple[Tensor, Tensor, float] | None = None) -> float:
        """One Adam step on positions ``x`` → ``y`` (normalised units); returns the reconstruction loss.

        ``jac`` = (v, t, weight): directions v (m, D) at the first m positions and the MLP's response t = J·v
        there; adds weight · |J_tc·v − t|² / |t|² (J_tc: the active features' encoder × decoder, plus W_skip).
        """
        p = self.params
        pre = x @ p["W_enc"] + p["b_enc"]  # (n, F)
        vals, idx = pre.topk(k, dim=-1)  # (n, k), sorted: the k-th largest is the last
        # Dense decoding: on CPUs, gathering the k active decoder rows per position (and scattering their
        # gradients back) costs more than the dense product at these sizes.
        f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())  # (n, F)
        recon = f @ p["W_dec"] + self._linear(x)
        loss = (recon - y).pow(2).sum(-1).mean()
        report = float(loss.detach())
        if jac is not None:
            v, t, weight = jac
            m = v.shape[0]
            g = (v @ p["W_enc"]).gather(-1, idx[:m]) * (vals[:m] > 0)  # (m, k): active features' slopes are 1
            jv = torch.einsum("mk,mkd->md", g, p["W_dec"][idx[:m]])
            if "W_skip" in p:
                jv = jv + v @ p["W_skip"]
            loss = loss + weight * (jv - t).pow(2).sum(-1).mean() / t.pow(2).sum(-1).mean().clamp(min=1e-12)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=-1, keepdim=True).clamp(min=1e-8)
            self.fired += torch.bincount(idx[vals > 0], minlength=self.fired.numel())
            kth = float(vals[:, -1].mean())
            self.n_kth += 1
            self.kth += (kth - self.kth) / min(self.n_kth, 50)  # mean over (about) the last 50 steps
        return report

    @torch.no_grad()
    def resample(self, x: Tensor, y: Tensor, k: int, g: torch.Generator) -> int:
        """Re-initialise the features that have not fired since the last call (returns how many).

        Each gets the direction of one input (drawn with probability ∝ its squared reconstruction error) as its
        encoder, scaled so that input's pre-activation is twice the typical k-th largest, and that input's
        reconstruction error as its decoder direction; their Adam moments restart (Bricken et al. 2023 resample
        dead features the same way).
        """
        dead = (self.fired == 0).nonzero().flatten()
        self.fired.zero_()
        if not len(dead):
            return 0
        p = self.params
        pre = x @ p["W_enc"] + p["b_enc"]
        vals, idx = pre.topk(k, dim=-1)
        err = y - (torch.einsum("nk,nkd->nd", vals.relu(), p["W_dec"][idx]) + self._linear(x))  # (n, D)
        w = err.pow(2).sum(-1)
        pick = torch.multinomial(w / w.sum(), len(dead), replacement=len(dead) > len(w), generator=g)
        xs, es = x[pick], err[pick]
        theta = max(self.kth, 1e-3)
        p["W_enc"][:, dead] = (xs / xs.pow(2).sum(-1, keepdim=True).clamp(min=1e-12) * 2 * theta).T
        p["b_enc"][dead] = 0
        p["W_dec"][dead] = es / es.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        for name, t in p.items():
            st = self.opt.state.get(t)
            if st and name in ("W_enc", "b_enc"):
                st["exp_avg"][..., dead] = 0
                st["exp_avg_sq"][..., dead] = 0
            elif st and name == "W_dec":
                st["exp_avg"][dead] = 0
                st["exp_avg_sq"][dead] = 0
        return len(dead)

    def _linear(self, x: Tensor) -> Tensor:
        """What the transcoder writes besides its features: ``b_dec`` (+ ``x @ W_skip``)."""
        p = self.params
        return p["b_dec"] if "W_skip" not in p else x @ p["W_skip"] + p["b_dec"]

    def state(self) -> dict[str, Any]:
        return {"params": {k: v.detach() for k, v in self.params.items()}, "opt": self.opt.state_dict(),
                "scales": self.scales, "chunks": self.chunks, "kth": self.kth, "n_kth": self.n_kth,
                "fired": self.fired}

    def load(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.opt.load_state_dict(state["opt"])
        self.scales, self.chunks, self.kth, self.n_kth = state["scales"], state["chunks"], state["kth"], state["n_kth"]
        self.fired = state["fired"]

    def transcoder(self) -> Transcoder:
        """The trained transcoder in the model's units, its TopK turned into a JumpReLU (module docstring)."""
        p = {k: v.detach() for k, v in self.params.items()}
        mx, s_in, mean, s_out = (self.scales[k] for k in ("x_mean", "x_scale", "y_mean", "y_scale"))
        theta = max(self.kth, 1e-6)
        # pre = ((x − mx) / s_in) @ W + b = x @ (W / s_in) + (b − (mx / s_in) @ W)
        # skip: s_out · ((x − mx) / s_in) @ S = x @ (S · s_out / s_in) − (mx / s_in) @ S · s_out
        b_dec, W_skip = p["b_dec"] * s_out + mean, None
        if "W_skip" in p:
            W_skip = (p["W_skip"] * (s_out / s_in)).contiguous()
            b_dec = b_dec - (mx / s_in) @ p["W_skip"] * s_out
        return Transcoder(W_enc=(p["W_enc"] / s_in).contiguous(), b_enc=p["b_enc"] - (mx / s_in) @ p["W_enc"],
                          W_dec=(p["W_dec"] * s_out).contiguous(), b_dec=b_dec,
                          activation="jumprelu", threshold=torch.full_like(p["b_enc"], theta), W_skip=W_skip)


def train_transcoders(model: Any, out: Path, cfg: TrainConfig = TrainConfig(), layers: list[int] | None = None,
                      progress: bool = True, checkpoint_every: int = 5, context_tokens: int = 0) -> DictionarySet:
    """Train (or continue training) per-layer transcoders for ``model`` into ``out``; returns the set.

    Writes circuit-tracer's format (``config.yaml``, ``layer_{i}.safetensors``), ``metrics.json`` (per layer
    explained variance, L0 and dead fraction on the held-out sequences) and ``train_config.json``; with
    ``context_tokens`` > 0 also ``feature_contexts.json`` (:func:`corpus_contexts`, on that many held-out
    tokens). ``layers`` trains only those (the written set then needs every layer already trained in ``out``).
    """
    r = staged(model)
    L, D = r.spec.n_layers, r.spec.d_model
    want = list(range(L)) if layers is None else sorted(set(layers))
    if not want or want[0] < 0 or want[-1] >= L:
        raise LogitlabError(f"--layers must be in 0…{L - 1}, got {layers}")
    out = Path(out)
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    wanted_cfg = {"model": model.name, **_settings(cfg)}
    if config_path.exists() and json.loads(config_path.read_text(encoding="utf-8")) != wanted_cfg:
        raise LogitlabError(f"{out} holds a training run with other settings ({config_path})",
                            "use another --out, or the same settings to continue it")
    with atomic_write(config_path) as f:
        f.write(json.dumps(wanted_cfg, indent=1))

    n_train = n_train_seqs(cfg)
    seqs = corpus_sequences(model.tokenizer, n_train + cfg.holdout_seqs, cfg.seq_len, cfg.seed)
    train, holdout = seqs[:n_train], seqs[n_train:]
    per_epoch = math.ceil(n_train / cfg.chunk_seqs)
    n_chunks = per_epoch * cfg.epochs  # chunk c reads the training sequences' chunk c mod per_epoch

    g = torch.Generator().manual_seed(cfg.seed)
    state: dict[int, _Layer] = {}
    for layer in want:
        st = _Layer(D, cfg, g)
        path = ckpt / f"layer_{layer}.pt"
        if path.exists():
            st.load(torch.load(path, weights_only=False))
        state[layer] = st
    start = min(st.chunks for st in state.values())
    if start:
        log.info("resuming at chunk %d of %d", start, n_chunks)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    bar = Progress(TextColumn("training transcoders"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[info]}"), disable=not progress)
    with bar:
        task = bar.add_task("train", total=n_chunks, completed=start, info="")
        for c in range(start, n_chunks):
            todo = [l for l in want if state[l].chunks <= c]
            with torch.no_grad():
                e = c % per_epoch
                io = mlp_io(model, train[e * cfg.chunk_seqs:(e + 1) * cfg.chunk_seqs], todo)
            losses = []
            for layer in todo:
                st = state[layer]
                x = io[layer][0][:, 1:].reshape(-1, D).float().cpu()  # (n, D), BOS positions left out
                y = io[layer][1][:, 1:].reshape(-1, D).float().cpu()
                if not st.scales:
                    mx, my = x.mean(0), y.mean(0)
                    st.scales = {"x_mean": mx, "x_scale": (x - mx).pow(2).sum(-1).mean().sqrt(), "y_mean": my,
                                 "y_scale": (y - my).pow(2).sum(-1).mean().sqrt()}
                x = (x - st.scales["x_mean"]) / st.scales["x_scale"]
                y = (y - st.scales["y_mean"]) / st.scales["y_scale"]
                # the order of this chunk's positions depends on (seed, chunk, layer) only: a resumed run repeats it
                seed = cfg.seed * 1_000_003 + c * 1_009 + layer
                order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
                gv = torch.Generator().manual_seed(seed + 17)
                with torch.enable_grad():
                    for b in range(0, x.shape[0], cfg.batch_tokens):
                        i = order[b:b + cfg.batch_tokens]
                        jac = None
                        if cfg.jacobian:
                            jac = (*_mlp_response(r, layer, x[i[:_JAC_POSITIONS]], st.scales, gv), cfg.jacobian)
                        losses.append(st.step(x[i], y[i], cfg.k, jac))
                # resample dead features every `resample_every` chunks, until 3/4 of the way
                if (c + 1) % cfg.resample_every == 0 and c + 1 <= 0.75 * n_chunks:
                    st.resample(x, y, cfg.k, torch.Generator().manual_seed(cfg.seed + c * 31 + layer))
                st.chunks = c + 1
                if (c + 1) % checkpoint_every == 0 or c + 1 == n_chunks:
                    _save_ckpt(st, ckpt / f"layer_{layer}.pt")
            bar.update(task, advance=1, info=f"loss (1 − EV) {sum(losses) / max(len(losses), 1):.3f}")
    dset = _finish(model, out, cfg, holdout)
    if context_tokens > 0:
        corpus_contexts(model, out, context_tokens, dset, progress)
    return dset


#: Positions of each step that the Jacobian-matching term uses (the batch's order is random).
_JAC_POSITIONS = 128
#: Held-out positions on which metrics.json compares each layer's Jacobian with its MLP's.
_JAC_HELDOUT = 1024


def _mlp_response(r: Any, layer: int, x: Tensor, scales: dict[str, Tensor], g: torch.Generator
                  ) -> tuple[Tensor, Tensor]:
    """Random directions v (m, D) with E|v|² = 1 at normalised inputs ``x`` and the MLP's response J·v there, in
    normalised units (input scaled by x_scale, output by 1 / y_scale), by forward-mode differentiation."""
    m, D = x.shape
    v = torch.randn(m, D, generator=g) / math.sqrt(D)
    s_in, s_out = scales["x_scale"], scales["y_scale"]
    jv = mlp_response(r, layer, x * s_in + scales["x_mean"], v * s_in)
    return v, jv.float().cpu() / s_out


def _save_ckpt(st: _Layer, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(st.state(), f)


def _finish(model: Any, out: Path, cfg: TrainConfig, holdout: Tensor) -> DictionarySet:
    """Write the set (every layer must be trained), its metrics on the held-out sequences, and return it."""
    L, D = model.spec.n_layers, model.spec.d_model
    missing = [l for l in range(L) if not (out / "checkpoints" / f"layer_{l}.pt").exists()]
    if missing:
        raise LogitlabError(f"layers {missing} are not trained yet in {out}", "train them with --layers")
    g = torch.Generator().manual_seed(0)
    tcs = []
    for l in range(L):
        st = _Layer(D, cfg, g)
        st.load(torch.load(out / "checkpoints" / f"layer_{l}.pt", weights_only=False))
        tcs.append(st.transcoder())
    dset = DictionarySet(layers=tuple(tcs), kind="transcoder", model=model.name, d_model=D)
    save_circuit_tracer(dset, out, model)  # the input hook circuit-tracer reads on this model
    metrics = []
    with torch.no_grad():
        ys: dict[int, list[Tensor]] = {l: [] for l in range(L)}
        xs: dict[int, list[Tensor]] = {l: [] for l in range(L)}
        for b in range(0, holdout.shape[0], cfg.chunk_seqs):
            io = mlp_io(model, holdout[b:b + cfg.chunk_seqs])
            for l in range(L):
                xs[l].append(io[l][0][:, 1:].reshape(-1, D).float().cpu())
                ys[l].append(io[l][1][:, 1:].reshape(-1, D).float().cpu())
        r = staged(model)
        for l in range(L):
            x = torch.cat(xs[l])
            ev, l0, counts = layer_stats(tcs[l], x, torch.cat(ys[l]))
            jcos, jrel = jacobian_stats(r, l, tcs[l], x[:_JAC_HELDOUT], seed=l)
            metrics.append({"layer": l, "explained_variance": round(ev, 4), "l0": round(l0, 2),
                            "jacobian_cosine": round(jcos, 4), "jacobian_rel_error": round(jrel, 4),
                            "dead_fraction": round(float((counts == 0).double().mean()), 4)})
    summary = {"model": model.name, "n_features": cfg.n_features, "skip": cfg.skip, "jacobian": cfg.jacobian,
               "training_tokens": cfg.n_tokens, "epochs": cfg.epochs,
               "heldout_positions": int(holdout.shape[0] * (cfg.seq_len - 1)), "layers": metrics}
    with atomic_write(out / "metrics.json") as f:
        f.write(json.dumps(summary, indent=1))
    return dset


def corpus_contexts(model: Any, folder: str | Path, n_tokens: int, dictionaries: DictionarySet | None = None,
                    progress: bool = True) -> Path:
    """Write ``folder/feature_contexts.json`` (:mod:`logitlab.features.contexts`): the top contexts of the
    dictionaries in ``folder`` on about ``n_tokens`` tokens of the training corpus they were not trained on.

    Where ``folder`` holds a logitlab training run for this model (``train_config.json``), those are the
    sequences after its training ones (the metrics' held-out sequences first), as many as there are; else the
    corpus's sequences from the first (seq_len 128, seed 0). Returns the file's path.
    """
    if n_tokens < 1:
        raise LogitlabError(f"the number of context tokens must be positive, got {n_tokens}")
    folder = Path(folder)
    dset = load_dictionaries(folder, model) if dictionaries is None else dictionaries
    cfg, skip, held = TrainConfig(), 0, "the corpus's first sequences"
    config_path = folder / "train_config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        if same_model(str(saved.get("model", "")), model.name):
            cfg = TrainConfig(**{f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved})
            skip, held = n_train_seqs(cfg), "sequences held out from training"
    seqs = corpus_sequences(model.tokenizer, None, cfg.seq_len, cfg.seed)[skip:]
    want = math.ceil(n_tokens / (cfg.seq_len - 1))
    if want > seqs.shape[0]:
        log.warning("feature contexts: the corpus has %d such sequences, %d tokens (not %d); reading those",
                    seqs.shape[0], seqs.shape[0] * (cfg.seq_len - 1), n_tokens)
    seqs = seqs[:want]
    corpus = (f"logitlab's training corpus (Python documentation topics, standard-library docstrings): {held}, "
              f"{seqs.shape[0]} × {cfg.seq_len - 1} tokens after BOS (shuffle seed {cfg.seed})")
    ctx = feature_contexts(model, dset, seqs, batch=cfg.chunk_seqs, corpus=corpus, progress=progress)
    return save_contexts(ctx, folder)
