"""Attribution graphs over transcoder features: exact direct effects in a prompt's local replacement model.

Method (Ameisen et al. 2025, "Circuit Tracing"; the open implementation circuit-tracer): freeze the prompt's
attention patterns and norm scales, replace each MLP by its transcoder plus an error node
(:mod:`logitlab.features.replacement`); the model is then affine from residual-stream writes to every feature's
pre-activation and every logit. Nodes, in circuit-tracer's order:

- active features (layer, position, feature), position 0 (BOS) excluded as circuit-tracer does;
- error nodes, one per (layer, position), layer-major (position 0's are zero: its MLP output is frozen);
- token embeddings per position (times the model's embedding scale: Gemma's √d_model included);
- logit targets: the top logits up to ``logit_mass`` probability (at most ``max_logits``), each the logit minus
  the vocabulary's mean logit (softmax-invariant, as circuit-tracer), and, with an answer and contrast, the
  logit difference answer − mean(contrasts) as its own target. Logits are before any final soft-cap.

The edge s → t is ``write_s · ∂t/∂write_s`` in the frozen model (activation × decoder row for a feature, the
error vector, the embedding), so through attention and norms but never through another MLP or feature.

Invariant (tested): for every feature and logit target, Σ incoming edges + ``bias`` = its real value, where the
bias (all constant terms: b_enc, b_dec, attention and norm biases, position embeddings, b_U) comes from one
forward pass with every write zero: an independent computation, so the check can fail.

Computation: targets go in chunks (rows of one batched backward walk); each chunk's cotangent is
(chunk, positions, d_model), the chunk size is chosen so that it stays under ``chunk_bytes``. Without a row budget
the adjacency is dense (n_nodes × n_nodes float32, rows targets, columns sources, as circuit-tracer) — only feature
and logit rows are filled, computed block by block. With ``max_feature_nodes`` (circuit-tracer's bound, for long
prompts) only the logit targets and that many features get a row: the logits first, then, in queues of
``rank_every`` rows, the not-yet-attributed features of highest influence on the logit targets in the rows
attributed so far (re-ranked between queues). The adjacency is then (rows, n_nodes) with ``rows`` naming each
row's node: memory rows × n_nodes, never n_nodes². A feature without a row has no incoming edges (its outgoing
edges are in the rows it feeds; unlike circuit-tracer it stays a node, a leaf marked ``attributed: false``), so
every attributed row keeps the exactness invariant.

Pruning and scores follow circuit-tracer's ``prune_graph`` and ``compute_graph_scores`` (normalised absolute
adjacency, influence = w·(A + A² + …)).

Example:
    >>> g = attribute(model, "Mary is a great friend, isn’t", dictionaries, answer=" she", contrast=" he")
    >>> keep = prune_graph(g)            # node and edge masks
    >>> g.scores()                       # (replacement, completeness)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet, Transcoder
from logitlab.features.replacement import Replacement, build_replacement
from logitlab.task import encode_prompt, single_token_id

__all__ = ["AttributionGraph", "attribute", "prune_graph", "PruneResult", "compute_influence", "graph_scores",
           "check_graph", "graph_to_dict"]


@dataclass(frozen=True, eq=False)
class AttributionGraph:
    """One prompt's attribution graph (nodes in circuit-tracer's order: features, errors, tokens, logit targets)."""

    prompt: str
    tokens: list[int]
    token_strs: list[str]
    n_layers: int
    features: Tensor  # (n_features, 3) long: layer, position, feature index
    activations: Tensor  # (n_features,)
    logit_labels: list[str]  # per logit target: the token, or "answer − contrast" for the difference
    logit_tokens: list[int | None]  # None for the logit difference target
    logit_probs: Tensor  # (n_logits,) the model's probability of each top token (0 for the difference)
    adjacency: Tensor  # (n_rows, n_nodes) [target row, source]; float32 (float64 when attributed in float64)
    bias: Tensor  # (n_nodes,) constant part of each target (0 for errors and tokens)
    values: Tensor  # (n_nodes,) each target's real value (pre-activation; logit − mean logit; difference)
    error_norms: Tensor  # (n_layers, n_pos) norm of each error node's write
    meta: dict[str, Any] = field(default_factory=dict)
    rows: Tensor | None = None  # (n_rows,) long: the node of each adjacency row (sorted); None: square, row i = node i

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return len(self.logit_labels)

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[1])

    @property
    def row_nodes(self) -> Tensor:
        """(n_rows,) the node of each adjacency row."""
        return torch.arange(self.n_nodes) if self.rows is None else self.rows

    @property
    def attributed(self) -> Tensor:
        """(n_nodes,) bool: the feature and logit nodes whose incoming edges were computed (all of them without a
        row budget); error and token nodes have no incoming edges by construction."""
        out = torch.zeros(self.n_nodes, dtype=torch.bool)
        if self.rows is None:
            out[:self.n_features] = True
        else:
            out[self.rows] = True
        out[self.n_nodes - self.n_logits:] = True
        return out

    def dense(self) -> Tensor:
        """The (n_nodes, n_nodes) adjacency, rows without attribution zero (small graphs only: n_nodes²)."""
        if self.rows is None:
            return self.adjacency
        out = torch.zeros(self.n_nodes, self.n_nodes, dtype=self.adjacency.dtype)
        out[self.rows] = self.adjacency
        return out

    def influence(self, on: str | None = None) -> Tensor:
        """(n_nodes,) each node's influence on the weighted logit targets (circuit-tracer's)."""
        if self.rows is None:
            return compute_influence(_normalise(self.adjacency), self.logit_weights(on))
        return _influence_rows(self.adjacency, self.rows, self.logit_weights(on))

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def token_slice(self) -> slice:
        e = self.error_slice.stop
        return slice(e, e + self.n_pos)

    @property
    def has_logit_diff(self) -> bool:
        return bool(self.logit_tokens) and self.logit_tokens[-1] is None

    def logit_weights(self, on: str | None = None) -> Tensor:
        """Weights of the logit targets for influence: their probabilities (``on="logits"``, circuit-tracer's), or 1
        on the logit-difference target (``"logit_diff"``; the default when the graph has one)."""
        return _logit_weights(self.n_nodes, self.logit_probs, self.has_logit_diff, on, self.adjacency.dtype)

    def scores(self, on: str | None = None) -> tuple[float, float]:
        """(replacement score, completeness score), as circuit-tracer's ``compute_graph_scores``."""
        if self.rows is None:
            return graph_scores(self.adjacency, self.logit_weights(on), self.error_slice, self.token_slice)
        return _scores_rows(self.adjacency, self.rows, self.logit_weights(on), self.error_slice, self.token_slice)

    def node_labels(self) -> list[str]:
        """A short label per node."""
        out = [f"L{int(l)}/{int(f)}@{int(p)}" for l, p, f in self.features.tolist()]
        out += [f"err L{l}@{p}" for l in range(self.n_layers) for p in range(self.n_pos)]
        out += [f"tok {p} {self.token_strs[p]!r}" for p in range(self.n_pos)]
        return out + [f"logit {s}" for s in self.logit_labels]


def _logit_weights(n_nodes: int, probs: Tensor, has_diff: bool, on: str | None, dtype: torch.dtype) -> Tensor:
    on = on or ("logit_diff" if has_diff else "logits")
    w = torch.zeros(n_nodes, dtype=dtype)
    if on == "logit_diff":
        if not has_diff:
            raise LogitlabError("this graph has no logit-difference target (give an answer and a contrast)")
        w[-1] = 1.0
    else:
        w[n_nodes - len(probs):] = probs.to(w.dtype)
    return w


# ---- attribution ----------------------------------------------------------------------------------------------
def attribute(model: Any, prompt: str | list[int], dictionaries: DictionarySet, *, answer: str | int | None = None,
              contrast: str | int | list[str] | list[int] | None = None, max_logits: int = 10, logit_mass: float = 0.95,
              dtype: torch.dtype = torch.float32, zero_first: bool = True, chunk_bytes: float = 2 ** 28,
              batch_size: int | None = None, max_feature_nodes: int | None = None,
              rank_every: int | None = None) -> AttributionGraph:
    """The attribution graph of ``prompt`` (a string, encoded with a BOS token, or token ids).

    Args:
        model: a loaded logitlab model on its own forward pass (``model.runner`` a staged Runner).
        dictionaries: one transcoder per layer (reading mlp_in, writing mlp_out).
        answer, contrast: give both for the logit-difference target (answer − mean of the contrasts); tokens as
            strings (one token each) or ids.
        max_logits, logit_mass: the top logits kept as targets (at most ``max_logits``, until ``logit_mass``).
        dtype: the dtype of the replacement model (float64 for exactness checks).
        zero_first: no feature or error nodes at position 0 (BOS), as circuit-tracer.
        chunk_bytes: bound on one chunk's working memory (sets the chunk size unless ``batch_size``).
        batch_size: targets per backward walk (overrides ``chunk_bytes``).
        max_feature_nodes: at most this many features get a row (incoming edges), chosen by influence on the logit
            targets as circuit-tracer does; the adjacency is then (rows, n_nodes). None: every active feature.
        rank_every: with ``max_feature_nodes``, features attributed between two re-rankings (default 4 batches,
            at least 128).
    """
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise LogitlabError(f"max_feature_nodes must be ≥ 0, not {max_feature_nodes}")
    runner, tok = model.runner, model.tokenizer
    if isinstance(prompt, str):
        ids = encode_prompt(tok, prompt, prepend_bos=tok.bos_token_id is not None)
        text = prompt
    else:
        ids, text = [int(i) for i in prompt], tok.decode(list(prompt))
    if (answer is None) != (contrast is None):
        raise LogitlabError("give both --answer and --contrast for the logit-difference target, or neither")
    s, dev = runner.spec, runner.device
    tokens = torch.tensor([ids], device=dev)
    with torch.no_grad():
        cache = runner.run_with_cache(tokens)
        rep = build_replacement(runner, tokens, dictionaries, cache, dtype, zero_first)
        graph = _attribute(model, rep, cache, dictionaries, text, ids, answer, contrast, max_logits, logit_mass,
                           chunk_bytes, batch_size, max_feature_nodes, rank_every)
    return graph


class _Sources(NamedTuple):
    feat_idx: list[Tensor]  # per layer: node indices of its features
    feat_pos: list[Tensor]  # per layer: their positions
    feat_act: list[Tensor]  # per layer: (n,) their activations
    feat_f: list[Tensor]  # per layer: (n,) their feature indices
    W_dec: list[Tensor]  # per layer: (F, D) decoder (a write is activation × decoder row, formed when read:
    #                      holding every write would be n_features × d_model)
    errors: Tensor  # (L, T, D) error vectors


def _attribute(model: Any, rep: Replacement, cache: Any, dicts: DictionarySet, text: str, ids: list[int],
               answer: Any, contrast: Any, max_logits: int, logit_mass: float,
               chunk_bytes: float, batch_size: int | None, max_feature_nodes: int | None,
               rank_every: int | None) -> AttributionGraph:
    runner, s, dt, dev = model.runner, model.runner.spec, rep.dtype, model.runner.device
    L, T, D = s.n_layers, len(ids), s.d_model
    live = rep.live
    # -- the real MLP inputs, features and errors
    feats, acts, pres, src_idx, src_pos, src_f, src_dec = [], [], [], [], [], [], []
    errors = torch.zeros(L, T, D, dtype=dt, device=dev)
    n = 0
    for l, tc in enumerate(dicts.layers):
        read = cache.resid_pre[l] if s.parallel else cache.resid_mid[l]
        x = runner.pre_norm(l, 2, read)[0].to(dt)  # (T, D) the MLP's real input
        tc = _cast(tc, dev, dt)
        W_dec = tc.W_dec
        pre = tc.pre(x)  # (T, F)
        a = tc.encode(x) * live[:, None]  # no features at frozen positions
        pos, f = a.nonzero(as_tuple=True)  # sorted by position, then feature
        feats.append(torch.stack([torch.full_like(pos, l), pos, f], 1))
        acts.append(a[pos, f])
        pres.append(pre[pos, f])
        src_idx.append(torch.arange(n, n + len(pos), device=dev))
        src_pos.append(pos)
        src_f.append(f)
        src_dec.append(W_dec)
        n += len(pos)
        recon = tc.decode(a, x)  # features' output + b_dec (+ skip)
        errors[l] = (cache.mlp_out[l, 0].to(dt) - recon) * live[:, None]
    features = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
    n_f = int(features.shape[0])
    sources = _Sources(src_idx, src_pos, acts, src_f, src_dec, errors)

    # -- logit targets
    resid_last = cache.resid_final[0, -1]
    normed_real = runner.final_norm(resid_last)[0].to(dt)
    W_U, b_U = runner.w.W_U, runner.w.b_U  # (D, V), (V,)
    logits = normed_real @ W_U.to(dt) + b_U.to(dt)  # (V,) before any soft-cap
    probs = torch.softmax(runner.softcap(logits).double(), -1)
    order = probs.argsort(descending=True)[:max_logits]
    cum = probs[order].cumsum(0)
    k = int((cum < logit_mass).sum()) + 1
    top = order[:min(k, max_logits)]
    mean_u = W_U.to(dt).mean(1)  # (D,) the mean logit's direction (chunks of W_U would save memory; V·D is fine)
    dirs = [W_U[:, v].to(dt) - mean_u for v in top.tolist()]
    consts = [b_U[v].to(dt) - b_U.to(dt).mean() for v in top.tolist()]
    vals = [logits[v] - logits.mean() for v in top.tolist()]
    labels = [model.tokenizer.decode([v]) for v in top.tolist()]
    ltoks: list[int | None] = [int(v) for v in top.tolist()]
    lprobs = [float(probs[v]) for v in top.tolist()]
    if answer is not None:
        tid = lambda t: t if isinstance(t, int) else single_token_id(model.tokenizer, t)  # noqa: E731
        a_id = tid(answer)
        c_ids = [tid(c) for c in (contrast if isinstance(contrast, (list, tuple)) else [contrast])]
        answer, contrast = model.tokenizer.decode([a_id]), [model.tokenizer.decode([c]) for c in c_ids]
        dirs.append(W_U[:, a_id].to(dt) - W_U[:, c_ids].to(dt).mean(1))
        consts.append(b_U[a_id].to(dt) - b_U[c_ids].to(dt).mean())
        vals.append(logits[a_id] - logits[c_ids].mean())
        labels.append(f"{answer} − {' / '.join(contrast)}")
        ltoks.append(None)
        lprobs.append(0.0)
    U = torch.stack(dirs)  # (n_logits, D)
    n_l = U.shape[0]
    n_nodes = n_f + L * T + T + n_l

    # -- the constant part of every target: one forward pass with every write zero
    m_in_b, normed_b = rep.forward(torch.zeros(1, T, D, dtype=dt, device=dev), None, bias=True)
    bias = torch.zeros(n_nodes, dtype=torch.float64)
    values = torch.zeros(n_nodes, dtype=torch.float64)
    if n_f:
        fl, fp, ff = features.unbind(1)
        fb = torch.zeros(n_f, dtype=dt, device=dev)
        for l, tc in enumerate(dicts.layers):
            at = (fl == l).nonzero(as_tuple=True)[0]
            enc = tc.W_enc[:, ff[at].cpu()].T.to(dev, dt)  # (n_l, D)
            fb[at] = (m_in_b[l, 0, fp[at]] * enc).sum(-1) + tc.b_enc[ff[at].cpu()].to(dev, dt)
        bias[:n_f] = fb.double().cpu()
        values[:n_f] = torch.cat(pres).double().cpu()
    bias[n_nodes - n_l:] = (U @ normed_b[0, -1] + torch.stack(consts)).double().cpu()
    values[n_nodes - n_l:] = torch.stack(vals).double().cpu()

    # -- edges: batched backward walks over chunks of targets (features by layer, highest first; then logits)
    adt = torch.float64 if dt == torch.float64 else torch.float32
    n_src = n_f + L * T + T
    # a binding budget reads feature edges through one (B, T, F) product per layer: ~10× faster on long prompts
    # than the gather the unbounded graph uses (kept there so its numbers stay the same bit for bit)
    bounded = max_feature_nodes is not None and max_feature_nodes < n_f
    if batch_size is None:
        per_row = T * D * torch.finfo(dt).bits // 8 * 12  # cotangent + attention intermediates, with headroom
        if bounded:
            per_row += T * max(tc.W_dec.shape[0] for tc in dicts.layers) * torch.finfo(dt).bits // 8
        batch_size = int(max(1, min(512, chunk_bytes // max(per_row, 1))))
    by_layer = torch.sort(-features[:, 0], stable=True).indices.tolist() if n_f else []  # highest layer first
    logit_rows = [("logit", i) for i in range(n_l)]
    meta = {"zero_first": bool(not live[0]), "dtype": str(dt).removeprefix("torch."), "batch_size": batch_size,
            "max_feature_nodes": max_feature_nodes}

    def walk(chunk: list[tuple[str, int]]) -> Tensor:  # (B, n_src) in the adjacency's dtype, on the CPU
        return _walk(rep, chunk, features, dicts, U, sources, rep.embed, dev, dt, bounded).to(adt).cpu()

    row_nodes: Tensor | None = None
    if max_feature_nodes is None:
        adjacency = torch.zeros(n_nodes, n_nodes, dtype=adt)
        rows = logit_rows + [("feat", i) for i in by_layer]
        for c0 in range(0, len(rows), batch_size):
            chunk = rows[c0:c0 + batch_size]
            idx = torch.tensor([i if kind == "feat" else n_nodes - n_l + i for kind, i in chunk])
            adjacency[idx, :n_src] = walk(chunk)
    else:
        w = _logit_weights(n_nodes, torch.tensor(lprobs), answer is not None, None, adt)
        adjacency, row_nodes = _bounded_rows(walk, features, by_layer, logit_rows, n_nodes, n_src, w, adt,
                                             min(max_feature_nodes, n_f), batch_size, rank_every)
        meta["rank_every"] = rank_every or max(4 * batch_size, 128)
    tok_strs = [model.tokenizer.decode([i]) for i in ids]
    return AttributionGraph(
        prompt=text, tokens=ids, token_strs=tok_strs, n_layers=L, features=features.cpu(),
        activations=torch.cat(acts).to(adjacency.dtype).cpu(), logit_labels=labels,
        logit_tokens=ltoks, logit_probs=torch.tensor(lprobs), adjacency=adjacency, bias=bias, values=values,
        error_norms=errors.norm(dim=-1).float().cpu(), meta=meta, rows=row_nodes,
    )


def _bounded_rows(walk: Any, features: Tensor, by_layer: list[int], logit_rows: list[tuple[str, int]],
                  n_nodes: int, n_src: int, w: Tensor, adt: torch.dtype, budget: int, batch_size: int,
                  rank_every: int | None) -> tuple[Tensor, Tensor]:
    """The logit rows and ``budget`` feature rows chosen as circuit-tracer does (module docstring): (rows, n_nodes)
    and each row's node, rows sorted by node. When the budget covers every feature the chunks are the unbounded
    graph's, so its rows are the same numbers."""
    n_f, n_l = int(features.shape[0]), len(logit_rows)
    R = n_l + budget
    A = torch.zeros(R, n_nodes, dtype=adt)
    nodes = torch.zeros(R, dtype=torch.long)
    rowsum = torch.zeros(R, dtype=adt)  # Σ|row|, kept for the influence between queues
    st = 0

    def put(chunk: list[tuple[str, int]]) -> None:
        nonlocal st
        block = walk(chunk)
        A[st:st + len(chunk), :n_src] = block
        rowsum[st:st + len(chunk)] = block.abs().sum(1)
        nodes[st:st + len(chunk)] = torch.tensor([i if kind == "feat" else n_nodes - n_l + i for kind, i in chunk])
        st += len(chunk)

    if budget == n_f:
        rows = logit_rows + [("feat", i) for i in by_layer]
        for c0 in range(0, len(rows), batch_size):
            put(rows[c0:c0 + batch_size])
    else:
        for c0 in range(0, n_l, batch_size):
            put(logit_rows[c0:c0 + batch_size])
        visited = torch.zeros(n_f, dtype=torch.bool)
        layer = features[:, 0].cpu()
        queue_size = rank_every or max(4 * batch_size, 128)
        n_done = 0
        while n_done < budget:
            infl = _influence_rows(A[:st], nodes[:st], w, rowsum[:st])[:n_f]
            rank = torch.sort(infl, descending=True, stable=True).indices  # ties: lower node index first
            pending = rank[~visited[rank]][:min(queue_size, budget - n_done)]
            # walk highest layers first (a walk starts at its chunk's highest layer); order inside a queue is free
            pending = pending[torch.sort(-layer[pending], stable=True).indices].tolist()
            for c0 in range(0, len(pending), batch_size):
                put([("feat", i) for i in pending[c0:c0 + batch_size]])
            visited[pending] = True
            n_done += len(pending)
    _permute_rows_(A, nodes.argsort())
    return A, nodes.sort().values


def _permute_rows_(A: Tensor, order: Tensor) -> None:
    """``A[i] = A[order[i]]`` for every row, in place (one row of extra memory: A may be gigabytes)."""
    order = order.tolist()
    done = [False] * len(order)
    for i in range(len(order)):
        if done[i] or order[i] == i:
            continue
        tmp, j = A[i].clone(), i
        while True:
            done[j] = True
            k = order[j]
            if k == i:
                A[j] = tmp
                break
            A[j] = A[k]
            j = k


def _cast(tc: Transcoder, dev: torch.device, dt: torch.dtype) -> Transcoder:
    """The transcoder with its tensors on ``dev`` in ``dt`` (integer fields unchanged)."""
    moved = {f.name: getattr(tc, f.name).to(dev, dt) for f in fields(tc)
             if isinstance(getattr(tc, f.name), Tensor) and getattr(tc, f.name).is_floating_point()}
    return replace(tc, **moved)


def _walk(rep: Replacement, chunk: list[tuple[str, int]], features: Tensor, dicts: DictionarySet, U: Tensor,
          src: _Sources, embed: Tensor, dev: torch.device, dt: torch.dtype, by_product: bool = False) -> Tensor:
    """Edges (B, n_features + L·T + T) into the chunk's targets from every source, by one backward walk.

    A feature's edge is ``a · (g[pos] · W_dec[f])``: gathered per feature, or (``by_product``) read off the
    (B, T, F) product ``g @ W_decᵀ`` — more arithmetic but one BLAS call; equal up to rounding."""
    L, T, D = len(dicts.layers), rep.T, embed.shape[-1]
    B = len(chunk)
    n_f = int(features.shape[0])
    out = torch.zeros(B, n_f + L * T + T, dtype=dt, device=dev)
    G = torch.zeros(B, T, D, dtype=dt, device=dev)
    inject: dict[int, Tensor] = {}
    top = -1
    for b, (kind, i) in enumerate(chunk):
        if kind == "logit":
            g = rep._norm_T(U[i][None, None], rep.final[-1:], rep.w["lnf_w"])  # (1, 1, D)
            G[b, T - 1] = g[0, 0]
            top = L - 1
        else:
            l, p, f = (int(v) for v in features[i])
            if l not in inject:
                inject[l] = torch.zeros(B, T, D, dtype=dt, device=dev)
            inject[l][b, p] = dicts.layers[l].W_enc[:, f].to(dev, dt)
            top = max(top, l)

    def read(layer: int, g: Tensor) -> None:
        # error nodes of this layer: (B, T)
        e0 = n_f + layer * T
        out[:, e0:e0 + T] = (g * src.errors[layer]).sum(-1)
        idx, pos, act, f = src.feat_idx[layer], src.feat_pos[layer], src.feat_act[layer], src.feat_f[layer]
        if by_product:
            if len(idx):
                out[:, idx] = (g @ src.W_dec[layer].T)[:, pos, f] * act  # (B, T, F) → (B, n)
            return
        step = max(1, int(2 ** 24 // max(B * D, 1)))  # bound the gathered (B, step, D) block
        for j in range(0, len(idx), step):
            wr = act[j:j + step, None] * src.W_dec[layer][f[j:j + step]]  # (step, D) activation × decoder row
            out[:, idx[j:j + step]] = (g[:, pos[j:j + step]] * wr).sum(-1)

    if top < 0:
        return out
    G0 = rep.backward(G, inject, top, read)
    out[:, n_f + L * T:] = (G0 * embed).sum(-1)
    return out


# ---- influence, pruning and scores (circuit-tracer's definitions) --------------------------------------------
def _normalise(A: Tensor) -> Tensor:
    """|A| with each row divided by its sum (rows summing to 0 stay 0)."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def compute_influence(A: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """weights · (A + A² + …) for a nilpotent (acyclic) square A (a row-bounded graph: ``graph.influence()``)."""
    if A.shape[0] != A.shape[1]:
        raise LogitlabError(f"compute_influence needs a square adjacency, not {tuple(A.shape)}: this graph has rows "
                            "for only some nodes (max_feature_nodes); use graph.influence()")
    cur = weights.to(A.dtype) @ A
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur @ A
        total += cur
    raise LogitlabError(f"influence did not converge in {max_iter} steps (the graph has a cycle?)")


def _rows_per_step(A: Tensor) -> int:
    """Rows per step when an adjacency is read in blocks: a block's temporaries stay near 2²⁴ entries (64 MB in
    float32; at 1,000 tokens a row has ~570k entries)."""
    return max(1, 2 ** 24 // max(int(A.shape[-1]), 1))


def _abs_row_sums(A: Tensor) -> Tensor:
    k = _rows_per_step(A)
    return torch.cat([A[r:r + k].abs().sum(1) for r in range(0, A.shape[0], k)]) if len(A) else A.sum(1)


def _influence_rows(A: Tensor, rows: Tensor, weights: Tensor, rowsum: Tensor | None = None,
                    normalise: bool = True, max_iter: int = 1000) -> Tensor:
    """weights · (Â + Â² + …) for an adjacency holding only the rows of the nodes ``rows`` (every other row zero),
    Â its absolute value with each row divided by its sum (``normalise``; as :func:`_normalise`) or A itself.
    Read in blocks of rows: A is never copied."""
    w = weights.to(A.dtype)
    if normalise:
        scale = 1 / (_abs_row_sums(A) if rowsum is None else rowsum.to(A.dtype)).clamp(min=1e-10)
    total = torch.zeros_like(w)
    cur = w
    for _ in range(max_iter):
        p = cur[rows] * scale if normalise else cur[rows]  # (n_rows,) weight reaching each row
        live = p.nonzero(as_tuple=True)[0]
        if not len(live):
            return total
        cur = torch.zeros_like(w)
        k = _rows_per_step(A)
        for j in range(0, len(live), k):
            r = live[j:j + k]
            cur += p[r] @ (A[r].abs() if normalise else A[r])
        total += cur
    raise LogitlabError(f"influence did not converge in {max_iter} steps (the graph has a cycle?)")


def _threshold(scores: Tensor, keep: float) -> Tensor:
    """The score above which the largest scores hold the fraction ``keep`` of their total."""
    s = scores.sort(descending=True).values
    cum = s.cumsum(0) / s.sum().clamp(min=1e-30)
    i = min(int(torch.searchsorted(cum, torch.tensor(keep, dtype=cum.dtype))), len(s) - 1)
    return s[i]


class PruneResult(NamedTuple):
    node_mask: Tensor  # (n_nodes,) bool
    edge_mask: Tensor  # the adjacency's shape, bool: (n_nodes, n_nodes) or (n_rows, n_nodes), [target row, source]
    influence: Tensor  # (n_nodes,) each node's influence on the weighted logit targets


def prune_graph(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                on: str | None = None) -> PruneResult:
    """circuit-tracer's ``prune_graph``: keep the nodes holding ``node_threshold`` of the influence on the logit
    targets, then the edges holding ``edge_threshold`` of the edge influence, then drop feature and error nodes
    left without outgoing (features: or incoming) edges, until nothing changes. Tokens and logits stay."""
    if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
        raise ValueError("thresholds must lie in [0, 1]")
    if graph.rows is not None:
        return _prune_rows(graph, node_threshold, edge_threshold, on)
    A, w = graph.adjacency, graph.logit_weights(on)
    n_f, n_fixed = graph.n_features, graph.n_pos + graph.n_logits
    influence = compute_influence(_normalise(A), w)
    node_mask = influence >= _threshold(influence, node_threshold)
    node_mask[-n_fixed:] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = _normalise(pruned)
    edge_scores = norm * (compute_influence(norm, w) + w)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    old = None
    while old is None or not torch.equal(old, node_mask):
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-n_fixed] &= edge_mask[:, :-n_fixed].any(0)  # features and errors need an outgoing edge
        node_mask[:n_f] &= edge_mask[:n_f].any(1)  # features need an incoming edge
    return PruneResult(node_mask, edge_mask, influence)


def _prune_rows(graph: AttributionGraph, node_threshold: float, edge_threshold: float,
                on: str | None) -> PruneResult:
    """:func:`prune_graph` on a row-bounded graph: the same steps, the edge steps on the kept rows × kept nodes
    only (the pruned adjacency is zero elsewhere), so nothing is n_nodes² and nothing copies the adjacency.
    A feature without a row has no incoming edges to lose: only attributed features need one."""
    A, rows, w = graph.adjacency, graph.rows, graph.logit_weights(on)
    assert rows is not None
    n, n_f, n_fixed = graph.n_nodes, graph.n_features, graph.n_pos + graph.n_logits
    influence = _influence_rows(A, rows, w)
    node_mask = influence >= _threshold(influence, node_threshold)
    node_mask[-n_fixed:] = True
    keep = node_mask.nonzero(as_tuple=True)[0]  # (k,) kept nodes
    at = torch.full((n,), -1, dtype=torch.long)
    at[keep] = torch.arange(len(keep))  # node → its column in the kept block
    krows = node_mask[rows].nonzero(as_tuple=True)[0]  # adjacency rows of kept nodes
    step = _rows_per_step(A)
    S = torch.cat([A[krows[j:j + step]][:, keep] for j in range(0, len(krows), step)])  # (r, k)
    norm = _normalise(S)
    row_col = at[rows[krows]]  # (r,) each kept row's node, as a kept column
    w_k = w[keep]
    edge_scores = norm * (_influence_rows(norm, row_col, w_k, normalise=False) + w_k)[row_col, None]
    em = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)  # (r, k)
    alive = torch.ones(len(keep), dtype=torch.bool)
    needs_out = keep < n - n_fixed  # features and errors need an outgoing edge
    row_is_feature = rows[krows] < n_f  # attributed features need an incoming edge
    old = None
    while old is None or not torch.equal(old, alive):
        old = alive.clone()
        em[~alive[row_col]] = False
        em[:, ~alive] = False
        alive[needs_out] &= em[:, needs_out].any(0)
        alive[row_col[row_is_feature]] &= em[row_is_feature].any(1)
    node_mask[keep] = alive
    edge_mask = torch.zeros(A.shape, dtype=torch.bool)
    step = _rows_per_step(em)
    for j in range(0, len(krows), step):
        edge_mask[krows[j:j + step, None], keep[None]] = em[j:j + step]
    return PruneResult(node_mask, edge_mask, influence)


def _scores_rows(A: Tensor, rows: Tensor, weights: Tensor, errors: slice, tokens: slice) -> tuple[float, float]:
    """:func:`graph_scores` on a row-bounded adjacency (nodes without a row: no inputs, so no error share)."""
    weights = weights.to(A.dtype)
    rowsum = _abs_row_sums(A)
    influence = _influence_rows(A, rows, weights, rowsum)
    tok, err = influence[tokens].sum(), influence[errors].sum()
    replacement = tok / (tok + err).clamp(min=1e-30)
    k = _rows_per_step(A)
    err_share = torch.cat([A[r:r + k, errors].abs().sum(1) for r in range(0, len(A), k)])
    non_error = torch.ones_like(weights)
    non_error[rows] = 1 - err_share / rowsum.clamp(min=1e-10)
    out = influence + weights
    completeness = (non_error * out).sum() / out.sum().clamp(min=1e-30)
    return float(replacement), float(completeness)


def graph_scores(A: Tensor, weights: Tensor, errors: slice, tokens: slice) -> tuple[float, float]:
    """circuit-tracer's ``compute_graph_scores``: replacement = token influence / (token + error influence);
    completeness = influence-weighted mean over nodes of the share of their (normalised) inputs not from errors."""
    norm, weights = _normalise(A), weights.to(A.dtype)
    influence = compute_influence(norm, weights)
    tok, err = influence[tokens].sum(), influence[errors].sum()
    replacement = tok / (tok + err).clamp(min=1e-30)
    non_error = 1 - norm[:, errors].sum(-1)
    out = influence + weights
    completeness = (non_error * out).sum() / out.sum().clamp(min=1e-30)
    return float(replacement), float(completeness)


def check_graph(graph: AttributionGraph) -> dict[str, float]:
    """The exactness invariants' residuals: max |Σ in-edges + bias − value| / max |value|, over the attributed
    features and the logits."""
    A, rows = graph.adjacency, graph.row_nodes
    k = _rows_per_step(A)
    total = torch.cat([A[r:r + k].double().sum(1) for r in range(0, len(A), k)]) + graph.bias[rows]
    out = {}
    for name, sel in (("features", rows < graph.n_features), ("logits", rows >= graph.n_nodes - graph.n_logits)):
        want = graph.values[rows[sel]]
        out[name] = float((total[sel] - want).abs().max() / want.abs().max().clamp(min=1e-12)) if len(want) else 0.0
    return out


def graph_to_dict(graph: AttributionGraph, pruned: PruneResult, on: str | None = None,
                  model: str | None = None) -> dict[str, Any]:
    """``graph.json``: every node (kept or not), the kept edges, scores and the invariants' residuals (docs/features.md)."""
    on = on or ("logit_diff" if graph.has_logit_diff else "logits")
    n_f, L, T = graph.n_features, graph.n_layers, graph.n_pos
    labels = graph.node_labels()
    inf = pruned.influence.tolist()
    keep = pruned.node_mask.tolist()
    attributed = graph.attributed.tolist()
    nodes: list[dict[str, Any]] = []
    for i, (l, p, f) in enumerate(graph.features.tolist()):
        nodes.append({"id": i, "kind": "feature", "layer": l, "pos": p, "feature": f,
                      "activation": float(graph.activations[i]), "value": float(graph.values[i]),
                      "bias": float(graph.bias[i]), "influence": inf[i], "kept": keep[i], "label": labels[i],
                      "attributed": attributed[i]})
    for l in range(L):
        for p in range(T):
            i = n_f + l * T + p
            nodes.append({"id": i, "kind": "error", "layer": l, "pos": p, "norm": float(graph.error_norms[l, p]),
                          "influence": inf[i], "kept": keep[i], "label": labels[i]})
    for p in range(T):
        i = graph.token_slice.start + p
        nodes.append({"id": i, "kind": "token", "layer": -1, "pos": p, "token": graph.tokens[p],
                      "text": graph.token_strs[p], "influence": inf[i], "kept": keep[i], "label": labels[i]})
    for j in range(graph.n_logits):
        i = graph.n_nodes - graph.n_logits + j
        nodes.append({"id": i, "kind": "logit", "layer": L, "pos": T - 1, "token": graph.logit_tokens[j],
                      "text": graph.logit_labels[j], "prob": float(graph.logit_probs[j]),
                      "value": float(graph.values[i]), "bias": float(graph.bias[i]), "kept": True, "label": labels[i],
                      "attributed": True})
    r_idx, s_idx = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[r_idx, s_idx].tolist()
    t_idx = graph.row_nodes[r_idx]
    edges = [[int(s), int(t), w] for s, t, w in zip(s_idx.tolist(), t_idx.tolist(), weights)]
    replacement, completeness = graph.scores(on)
    return {
        "format": "logitlab-graph", "version": 1, "model": model, "prompt": graph.prompt, "tokens": graph.tokens,
        "token_strs": graph.token_strs, "n_layers": L, "influence_on": on,
        "scores": {"replacement": replacement, "completeness": completeness},
        "check": check_graph(graph),
        "counts": {"features": n_f, "kept_features": int(pruned.node_mask[:n_f].sum()), "nodes": graph.n_nodes,
                   "kept_nodes": int(pruned.node_mask.sum()), "kept_edges": len(edges),
                   "attributed_features": int(graph.attributed[:n_f].sum())},
        "settings": graph.meta, "nodes": nodes, "edges": edges,
    }
