"""The computational graph at edge level: a forward pass in which every reader has its own input.

Nodes that write to the residual stream (*senders*): the embedding (``input``), every attention head
(``L{l}H{h}``: its ``z @ W_O``) and every MLP (``M{l}``). Nodes that read it (*receivers*): every head's query
input, every KV head's key and value inputs (``L{l}H{k}`` when each head has its own keys and values, ``L{l}G{k}``
for a grouped KV head serving query heads k·g … (k+1)·g − 1), every MLP's input and the logits. An *edge* joins a
sender to a later receiver: a head reads everything written before its layer; an MLP also reads its own layer's
heads (not in parallel blocks, where attention and MLP both read resid_pre); the logits read every sender.

:func:`graph_forward` runs the model with each receiver's input assembled from the senders' outputs, where the
``patch`` mask says, per item, which edges carry another run's sender output instead of the current one:

    input of receiver r = Σ over senders u of (patch[r, u] ? other_u : current_u)   (+ constant biases)

An edge is thereby an intervention on one reader's view of one writer, with everything downstream recomputed
(the convention of TransformerLens's direct path patching, ``get_act_patch_direct_path``: the sender's write
into that one reader's own pre-norm copy of the residual stream). Where a layer's heads pass through a
post-attention norm (Gemma 2/3), a head's write is its contribution to that norm's input, and each reader's view
of the layer is the norm of its own mixture: the norm really runs per reader, so edges stay exact there
(TransformerLens refuses such models). With no patch the forward equals :meth:`Runner.layer`'s (tested on every
architecture kind).

Speed: a reader's input is written relative to whichever run it mostly reads, so only the edges that differ from
that run cost work; with post-norms, the (item, reader, earlier layer) views that differ are normalised together,
all layers in one gather and one norm (each row with its layer's weight, :func:`_mix_head_layers`), equal to one
layer at a time (tested).

Shapes: items B, positions T, senders S, receivers R, heads H, KV heads K, d_model D.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from logitlab.model.runner import Runner
from logitlab.model.spec import ArchSpec

__all__ = ["EdgeGraph", "GraphRun", "graph_forward", "single_edge_layer"]


@dataclass(frozen=True)
class EdgeGraph:
    """Senders, receivers and allowed edges of one architecture (see the module docstring for names)."""

    spec: ArchSpec = field(repr=False)

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    @property
    def receivers_per_layer(self) -> int:
        """H queries, K keys, K values and one MLP input."""
        return self.spec.n_heads + 2 * self.spec.n_kv_heads + 1

    @property
    def n_senders(self) -> int:
        return 1 + self.spec.n_layers * (self.spec.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.spec.n_layers * self.receivers_per_layer + 1

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * (self.spec.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.spec.n_heads + 1) + self.spec.n_heads

    def receiver(self, layer: int, kind: str, index: int = 0) -> int:
        """Index of receiver ``kind`` ∈ {q, k, v, mlp} (head / KV head ``index``) of ``layer``; ``logits``."""
        H, K = self.spec.n_heads, self.spec.n_kv_heads
        if kind == "logits":
            return self.n_receivers - 1
        offset = {"q": 0, "k": H, "v": H + K, "mlp": H + 2 * K}[kind]
        return layer * self.receivers_per_layer + offset + index

    @cached_property
    def sender_names(self) -> tuple[str, ...]:
        names = ["input"]
        for l in range(self.n_layers):
            names += [f"L{l}H{h}" for h in range(self.spec.n_heads)] + [f"M{l}"]
        return tuple(names)

    @cached_property
    def receiver_names(self) -> tuple[tuple[str, str], ...]:
        """(node, input) per receiver, e.g. ("L3H1", "q"), ("L3G0", "k"), ("M3", "mlp"), ("logits", "logits")."""
        H, K = self.spec.n_heads, self.spec.n_kv_heads
        kv = "H" if K == H else "G"
        out: list[tuple[str, str]] = []
        for l in range(self.n_layers):
            out += [(f"L{l}H{h}", "q") for h in range(H)]
            out += [(f"L{l}{kv}{k}", "k") for k in range(K)] + [(f"L{l}{kv}{k}", "v") for k in range(K)]
            out.append((f"M{l}", "mlp"))
        out.append(("logits", "logits"))
        return tuple(out)

    @cached_property
    def allowed(self) -> Bool[Tensor, "receiver sender"]:
        """Which (receiver, sender) pairs are edges: the sender is written before the receiver reads."""
        s = self.spec
        first_of_layer = lambda l: 1 + l * (s.n_heads + 1)  # noqa: E731  senders before layer l's heads
        reads = torch.empty(self.n_receivers, dtype=torch.long)  # senders [0, reads[r]) are visible to r
        for l in range(self.n_layers):
            a, b = l * self.receivers_per_layer, (l + 1) * self.receivers_per_layer
            reads[a:b - 1] = first_of_layer(l)
            reads[b - 1] = first_of_layer(l) + (0 if s.parallel else s.n_heads)  # the MLP
        reads[-1] = self.n_senders
        return torch.arange(self.n_senders)[None, :] < reads[:, None]

    @cached_property
    def head_senders(self) -> Int[Tensor, "layer head"]:
        """Sender index of every head."""
        return torch.tensor([[self.head_sender(l, h) for h in range(self.spec.n_heads)] for l in range(self.n_layers)])

    @property
    def n_edges(self) -> int:
        return int(self.allowed.sum())

    @cached_property
    def edge_index(self) -> Int[Tensor, "edge 2"]:
        """(receiver, sender) of every edge, in a fixed order (receiver-major)."""
        return self.allowed.nonzero()

    def edge_label(self, receiver: int, sender: int) -> tuple[str, str, str]:
        """(sender name, receiver node, receiver input) of one edge."""
        node, inp = self.receiver_names[receiver]
        return self.sender_names[sender], node, inp


@dataclass(frozen=True)
class GraphRun:
    """What one :func:`graph_forward` returns: each item's final residual stream at its final position, and the
    sender outputs (B, S, T, D) if recorded. ``inputs``: receivers' inputs per layer when ``keep_inputs``
    (list over layers of (B, R_l, T, D), then the logits' (B, T, D)); ``attn_pre``: each layer's pre-norm head
    sum (B, T, D) (post-norm models, for the norm's Jacobian); ``resid``: the residual stream after ``stop``."""

    final: Float[Tensor, "batch d_model"] | None
    senders: Float[Tensor, "batch sender pos d_model"] | None
    inputs: list[Tensor] | None
    attn_pre: list[Tensor] | None
    resid: Float[Tensor, "batch pos d_model"] | None = None


def graph_forward(runner: Runner, graph: EdgeGraph, embed: Float[Tensor, "batch pos d_model"],
                  final_pos: Int[Tensor, " batch"], patch: Float[Tensor, "batch receiver sender"] | None = None,
                  other: Float[Tensor, "batch sender pos d_model"] | None = None, *, record: bool = False,
                  keep_inputs: bool = False, start: int = 0,
                  base: Float[Tensor, "batch sender pos d_model"] | None = None, stop: int | None = None,
                  other_index: Int[Tensor, " batch"] | None = None) -> GraphRun:
    """Run the edge-level forward pass (module docstring).

    Args:
        embed: the residual stream entering layer 0 (embedding plus any position embedding).
        final_pos: each item's final position (the logits receiver is read there).
        patch: 1 where an edge carries ``other``'s sender output (0 elsewhere, and on non-edges); None: no patch.
        other: the other run's sender outputs (as recorded by ``record``), per item, or per pair with
            ``other_index`` (B,) naming each item's row of ``other`` (no per-item copy of it).
        record: return the sender outputs of this run (B, S, T, D).
        keep_inputs: keep every receiver's input tensor (for gradients with respect to them).
        start, base: begin at layer ``start`` with the senders of earlier layers taken from ``base`` (this
            run's own sender outputs, recorded unpatched): exact when no patched edge reaches a receiver
            before ``start`` (the caller's promise); receivers before it are not run.
        stop: end after layer ``stop``: ``GraphRun.resid`` holds the residual stream there (B, T, D) and ``final``
            is None (when no later receiver is patched, the ordinary forward pass can continue from it).
    """
    s, w = runner.spec, runner.w
    B, T, D = embed.shape
    H, K, L = s.n_heads, s.n_kv_heads, s.n_layers
    Rl = graph.receivers_per_layer
    patched = patch is not None
    if patched and other is None:
        raise ValueError("a patch needs the other run's sender outputs")
    senders = embed.new_zeros(B, graph.n_senders, T, D) if record else None  # a patched run reads ``diff`` only
    diff = None  # (B, S, T, D): other − current, filled as senders run
    if patched:
        assert other is not None
        diff = other.new_empty(B, graph.n_senders, T, D)  # each sender's slot is written before it is read

    def per_item(t: Tensor) -> Tensor:
        """A (rows of ``other``, …) tensor per item: a new tensor."""
        return t.clone() if other_index is None else t[other_index]

    def oth(sl: int | slice, new: bool = False) -> Tensor:
        """The other run's writes of senders ``sl``, per item: a view of ``other`` without ``other_index`` unless
        ``new`` (a tensor that may be written)."""
        assert other is not None
        if other_index is None:
            return other[:, sl].clone() if new else other[:, sl]
        return other[other_index, sl]

    if senders is not None:
        senders[:, 0] = embed
    if diff is not None:
        diff[:, 0] = oth(0) - embed
    resid = embed
    attn_pre_cur: list[Tensor] = []  # per layer (B, T, D), post-norm models
    attn_out_cur: list[Tensor] = []
    inputs: list[Tensor] | None = [] if keep_inputs else None

    other_state: list[tuple[Tensor, Tensor, list[Tensor]]] = []  # built on first use
    # Post-norm models with a patch: the layers' attention sums and outputs (L, B, T, D), so that a reader's
    # mixture of several earlier layers gathers them in one index (the lists hold views of these).
    mixing = patched and s.post_norms
    cur_pre = embed.new_empty(L, B, T, D) if mixing else None
    cur_out = embed.new_empty(L, B, T, D) if mixing else None
    head_idx = graph.head_senders.to(embed.device)  # (L, H)
    lin_idx = torch.tensor([0] + [graph.mlp_sender(l) for l in range(L)], device=embed.device)  # linear writers

    def keep_attention(layer: int, attn_pre: Tensor, attn_out: Tensor) -> None:
        """Record ``layer``'s attention sum and output (B, T, D) of this run."""
        if cur_pre is None or cur_out is None:
            attn_pre_cur.append(attn_pre)
            attn_out_cur.append(attn_out)
            return
        cur_pre[layer] = attn_pre
        cur_out[layer] = attn_out
        attn_pre_cur.append(cur_pre[layer])
        attn_out_cur.append(cur_out[layer])

    def others() -> tuple[Tensor, Tensor, list[Tensor]]:
        """The other run's per-layer attention sums (pre-norm) and attention outputs (L, B, T, D), and residual
        streams (resid_pre of each layer, then the final one), rebuilt from its recorded writes (one row per row of
        ``other``: per pair with ``other_index``)."""
        if not other_state:
            other_state.append(_rebuild(runner, graph, other, L, other[:, 0]))  # type: ignore[index]
        return other_state[0]

    def mixed_input(rows: Tensor, n_read: int, layer: int, cur_base: Tensor, kind: str,
                    items: Tensor | None = None) -> Tensor:
        """Inputs (n, r, T, D) of receivers whose ``rows`` (n, r, S) say which senders [0, n_read) they read
        from the other run; ``cur_base`` (n, T, D) is their input with no patch. ``kind``: "att", "mlp" or
        "logits" (which of the other run's streams is their unpatched input there). ``items``: which of the B
        items the n rows are (None: all, in order).

        Written relative to whichever run the receivers mostly read, so a sparse patch (path patching) or a
        sparse circuit (faithfulness: most edges patched) costs little; with post-norms only the (item,
        receiver, layer) triples whose mixture differs from that run's are normalised.
        """
        rows = rows[:, :, :n_read]
        n = rows.shape[0]
        sel = (lambda t: t) if items is None else (lambda t: t[items])  # noqa: E731  the n items of a (B, …) tensor
        rows_of = sel(other_index) if other_index is not None else None  # the n items' rows of the other run's
        keep = 1 - rows  # 1 where the current value is read (every sender below n_read is an edge of these)
        from_other = bool(keep.sum() < rows.sum())
        m_all = -keep if from_other else rows  # weights on diff = other − current, relative to the chosen run
        if from_other:
            o_pre, o_out, o_res = others()
            o_base = (o_res[layer] if kind == "att" or (kind == "mlp" and s.parallel) else
                      (o_res[layer] + o_out[layer] if kind == "mlp" else o_res[L]))
            base = sel(o_base) if rows_of is None else o_base[rows_of]
            pre_ref, out_ref, ref_rows = o_pre, o_out, other_index
        else:
            base, pre_ref, out_ref, ref_rows = cur_base, cur_pre, cur_out, None
        r = rows.shape[1]
        x = base[:, None].expand(n, r, T, D)
        assert diff is not None
        if not s.post_norms:  # every write is linear in the residual stream: one product
            d_read = diff[:, :n_read] if items is None else diff[items, :n_read]
            return x + torch.einsum("brs,bstd->brtd", m_all, d_read)
        # Post-norms: the input and MLP writes are linear; each earlier layer's heads pass the layer's norm,
        # which runs on this reader's own mixture of current and other head outputs.
        idx = lin_idx[:1 + sum(1 for l in range(L) if graph.mlp_sender(l) < n_read)]
        d_lin = diff[:, idx] if items is None else diff[items[:, None], idx]  # (n, |idx|, T, D): linear writes only
        x = x + torch.einsum("brs,bstd->brtd", m_all[:, :, idx], d_lin)
        n_l = layer + (1 if n_read > graph.head_sender(layer, 0) else 0)  # earlier layers whose heads it reads
        if n_l:
            x = _mix_head_layers(runner, x, m_all[:, :, head_idx[:n_l]], pre_ref, out_ref, diff, head_idx, items,
                                 ref_rows)
        return x

    if start:
        if base is None:
            raise ValueError("starting after layer 0 needs the run's own recorded sender outputs (base)")
        n0 = graph.head_sender(start, 0)
        pre0, out0, res0 = _rebuild(runner, graph, base, start, resid)  # the earlier layers, from their writes
        for l in range(start):
            keep_attention(l, pre0[l], out0[l])
        resid = res0[start]
        if senders is not None:
            senders[:, :n0] = base[:, :n0]
        if diff is not None:
            diff[:, :n0] = oth(slice(0, n0)) - base[:, :n0]
    # A node every one of whose inputs reads the other run on every edge computes exactly the other run's write:
    # patched items skip it (faithfulness of small circuits: most of the graph is the corrupted run).
    skip = patched and inputs is None

    for layer in range(start, L):
        first = graph.head_sender(layer, 0)
        att_rows = patch[:, layer * Rl: (layer + 1) * Rl - 1] if patched else None  # type: ignore[index]
        live = _reading_current(att_rows, first) if skip else None
        if live is not None:  # some items' heads read only the other run: its writes
            o_pre, o_out, _ = others()
            heads, attn_pre, attn_out = (oth(slice(first, first + H), new=True),
                                         *(per_item(t[layer]) for t in (o_pre, o_out)))
            if len(live):
                x_live = mixed_input(att_rows[live], first, layer, resid[live], "att", live)  # type: ignore[index]
                part = _attention(runner, layer, x_live)
                for full, p in zip((heads, attn_pre, attn_out), part):
                    full[live] = p
        else:
            x_att = mixed_input(att_rows, first, layer, resid, "att") if patched \
                else resid[:, None].expand(B, Rl - 1, T, D).clone()  # type: ignore[arg-type]
            if inputs is not None:
                inputs.append(x_att)
            heads, attn_pre, attn_out = _attention(runner, layer, x_att)
        keep_attention(layer, attn_pre, attn_out)
        mlp_row = (layer + 1) * Rl - 1
        if s.parallel:
            x_mlp = resid
            n_read = first
        else:
            x_mlp = resid + attn_out
            n_read = first + H
        if senders is not None:
            senders[:, first:first + H] = heads
        if diff is not None:
            diff[:, first:first + H] = oth(slice(first, first + H)) - heads
        mlp_rows = patch[:, mlp_row:mlp_row + 1] if patched else None  # type: ignore[index]
        live = _reading_current(mlp_rows, n_read) if skip else None
        if live is not None:  # some items' MLP reads only the other run: its write
            mlp_out = oth(graph.mlp_sender(layer), new=True)
            if len(live):
                mlp_out[live] = runner.mlp(layer, mixed_input(mlp_rows[live], n_read, layer, x_mlp[live], "mlp",  # type: ignore[index]
                                                              live)[:, 0])
        else:
            if patched:
                x_mlp = mixed_input(mlp_rows, n_read, layer, x_mlp, "mlp")[:, 0]  # type: ignore[arg-type]
            elif inputs is not None:
                x_mlp = x_mlp.clone()
            if inputs is not None:
                inputs.append(x_mlp)
            mlp_out = runner.mlp(layer, x_mlp)
        if senders is not None:
            senders[:, graph.mlp_sender(layer)] = mlp_out
        if diff is not None:
            diff[:, graph.mlp_sender(layer)] = oth(graph.mlp_sender(layer)) - mlp_out
        resid = resid + attn_out + mlp_out
        if layer == stop:
            return GraphRun(final=None, senders=senders, inputs=inputs, attn_pre=None, resid=resid)
    x_fin = resid
    if patched:
        x_fin = mixed_input(patch[:, -1:], graph.n_senders, L, resid, "logits")[:, 0]  # type: ignore[index]
    elif inputs is not None:
        x_fin = resid.clone()
    if inputs is not None:
        inputs.append(x_fin)
    final = x_fin[torch.arange(B, device=x_fin.device), final_pos]
    return GraphRun(final=final, senders=senders, inputs=inputs,
                    attn_pre=attn_pre_cur if s.post_norms else None)


def _attention(runner: Runner, layer: int, x_att: Float[Tensor, "n receiver pos d_model"]
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Each head's write (n, H, T, D), their pre-norm sum and the attention output, from the attention receivers'
    inputs (query heads, then key and value KV heads)."""
    H, K, w = runner.spec.n_heads, runner.spec.n_kv_heads, runner.w
    xq, xk, xv = x_att[:, :H], x_att[:, H:H + K], x_att[:, H + K:]
    z = runner.split_attention(layer, xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2))  # (n, T, H, dh)
    heads = torch.einsum("bthe,hed->bhtd", z, w.W_O[layer])  # (n, H, T, D): each head's write
    attn_pre = heads.sum(1) + w.b_O[layer]
    return heads, attn_pre, runner.post_attention(layer, attn_pre)[0]


def single_edge_layer(runner: Runner, graph: EdgeGraph, layer: int, embed: Float[Tensor, "pair pos d_model"],
                      own: Float[Tensor, "pair sender pos d_model"], other: Float[Tensor, "pair sender pos d_model"],
                      pairs: Int[Tensor, " batch"], receiver: Int[Tensor, " batch"], sender: Int[Tensor, " batch"],
                      ) -> Float[Tensor, "batch pos d_model"]:
    """resid_post of ``layer`` for items that each patch one edge: ``receiver[i]``, a receiver of ``layer``,
    reads ``sender[i]``'s write of the other run (``other``) instead of its own run's (``own``: the recorded
    writes of pair ``pairs[i]``, whose embedding is ``embed``); ``receiver[i]`` = −1: every reader of
    ``sender[i]``, a head of ``layer``, does (all its out-edges: the later layers, run by the ordinary forward
    pass, read it through the residual stream). The same as :func:`graph_forward` with ``start = layer`` (and
    ``stop = layer`` for one edge) and that patch (tested), without a per-item copy of the pairs' recorded writes:
    the layers before run per pair, and a reader's input changes by the sender's difference, seen through the
    post-attention norm of the sender's layer when the sender is a head (the norm of the own run's heads with
    that one head's write replaced)."""
    s = runner.spec
    H, S, Rl = s.n_heads, graph.n_senders, graph.receivers_per_layer
    pre0, out0, res0 = _rebuild(runner, graph, own, layer + 1, embed)  # the own run, per pair, through ``layer``
    key, inv = torch.unique(pairs * S + sender, return_inverse=True)  # each (pair, sender) once
    up, us = key // S, key % S
    delta = other[up, us] - own[up, us]  # (U, T, D): the sender's difference, as a linear write
    hl = torch.where((us - 1) % (H + 1) < H, (us - 1) // (H + 1), -1) if s.post_norms else None
    if hl is not None and bool((hl >= 0).any()):
        j = (hl >= 0).nonzero()[:, 0]
        l, p = hl[j], up[j]  # the sender's layer's own-run sum and output, with its head's write replaced
        delta[j] = _post_attention_rows(runner, pre0[l, p] + delta[j], l) - out0[l, p]
    base = res0[layer][pairs]  # (B, T, D): resid_pre of ``layer``
    attn_out = out0[layer][pairs]  # unpatched where the item's receiver is the MLP
    local = torch.where(receiver < 0, -1, receiver - layer * Rl)  # 0 … Rl − 2: attention inputs; Rl − 1: the MLP
    att = ((local >= 0) & (local < Rl - 1)).nonzero()[:, 0]
    if len(att):
        x_att = base[att][:, None].repeat(1, Rl - 1, 1, 1)
        x_att[torch.arange(len(att), device=att.device), local[att]] += delta[inv[att]]
        attn_out[att] = _attention(runner, layer, x_att)[2]
    whole = (local < 0).nonzero()[:, 0]  # the head's write replaced in the layer's attention output
    attn_out[whole] += delta[inv[whole]]
    x_mlp = base.clone() if s.parallel else base + attn_out
    mlp = (local == Rl - 1).nonzero()[:, 0]
    x_mlp[mlp] += delta[inv[mlp]]
    return base + attn_out + runner.mlp(layer, x_mlp)


#: Elements in the largest temporary (triples × H × T × D) of one chunk of :func:`_mix_head_layers`: 4 MiB in
#: float32, so that a chunk's temporaries stay in the CPU's caches (measured on the built-in model, 2 cores: 1.7x
#: faster than 64 MiB chunks, 1.15x faster than 1 MiB ones).
_MIX_BUDGET = 2**20


def _post_attention_rows(runner: Runner, x: Tensor, layers: Tensor | None) -> Tensor:
    """:meth:`Runner.post_attention` (its output) of rows from different layers: ``x`` (N, T, D) with row i from
    layer ``layers[i]``, or with ``layers`` None ``x`` (n, B, T, D), one slab per layer 0 … n − 1. The same
    arithmetic as the runner's per-layer norm, with each row's own weight."""
    if not runner.spec.post_norms:
        return x
    w = runner.w.post1_w  # (L, D)
    w = w[:len(x), None, None] if layers is None else w[layers][:, None]
    if runner.spec.normalization == "RMS" and x.dtype == torch.float32:  # one kernel, then each row's weight
        return torch.rms_norm(x, x.shape[-1:], None, runner.spec.eps).mul_(w)
    return runner._norm(x, w)[0]


def _rebuild(runner: Runner, graph: EdgeGraph, writes: Float[Tensor, "batch sender pos d_model"], n: int,
             resid0: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """A run's first ``n`` ≥ 1 layers rebuilt from its recorded writes: the attention sums (pre-norm) and outputs
    (n, B, T, D), one norm call for all layers, and the residual streams (resid_pre of layers 0 … n, the first
    ``resid0``)."""
    H = runner.spec.n_heads
    pre = torch.stack([writes[:, h0:h0 + H].sum(1) + runner.w.b_O[l]
                       for l, h0 in enumerate(graph.head_senders[:n, 0].tolist())])
    out = _post_attention_rows(runner, pre, None)
    res = [resid0]
    for l in range(n):
        res.append(res[-1] + out[l] + writes[:, graph.mlp_sender(l)])
    return pre, out, res


def _mix_head_layers(runner: Runner, x: Float[Tensor, "n r pos d_model"], m: Float[Tensor, "n r layer head"],
                     pre_ref: Tensor, out_ref: Tensor, diff: Float[Tensor, "batch sender pos d_model"],
                     head_idx: Int[Tensor, "layer head"], items: Tensor | None,
                     ref_rows: Tensor | None = None) -> Tensor:
    """Add to the readers' inputs ``x`` their own view of earlier layers' post-normed heads, relative to the run
    whose attention sums and outputs (L, B, T, D) are ``pre_ref`` and ``out_ref``: for every (item i, reader j,
    layer l) whose weights ``m[i, j, l]`` on diff = other − current of layer l's heads are not all 0,

        x[i, j] += post_norm_l(pre_ref[l, g] + Σ_h m[i, j, l, h] · diff[g, head h of l]) − out_ref[l, g],

    g the item's index among all B (``items[i]``, or i; its row of the references is ``ref_rows[g]`` when given).
    All layers' triples in one gather, norm and add (in chunks), and of the heads only those with a weight (a
    reader's view usually differs in a few heads); ``x`` is written in place and returned.
    """
    n, r, T, D = x.shape
    H = m.shape[-1]
    nz = m.ne(0)  # (n, r, n_l, H)
    act = nz.any(-1)  # (n, r, n_l): the (item, reader, layer) triples whose view differs from the reference run's
    bi, ri, li = act.nonzero(as_tuple=True)
    if not len(bi):
        return x
    gi = bi if items is None else items[bi]  # the items' indices among all B
    triple = torch.zeros(act.shape, dtype=torch.long, device=x.device)
    triple[act] = torch.arange(len(bi), device=x.device)  # boolean indexing runs in nonzero's order
    qb, qj, ql, qh = nz.nonzero(as_tuple=True)  # (triple, head) pairs with a weight, in triple order
    qt, qw = triple[qb, qj, ql], m[qb, qj, ql, qh]
    rows = x.view(n * r, T, D)
    chunk = max(1, _MIX_BUDGET // (H * T * D))
    for a in range(0, len(bi), chunk):
        e = min(a + chunk, len(bi))
        qa, qe = torch.searchsorted(qt, torch.tensor([a, e], device=qt.device)).tolist()
        t, w = qt[qa:qe], qw[qa:qe]
        heads = diff[gi[t], head_idx[ql[qa:qe], qh[qa:qe]]].mul_(w[:, None, None])  # (q, T, D): weighted heads
        l, g = li[a:e], gi[a:e] if ref_rows is None else ref_rows[gi[a:e]]
        # (c, T, D): each triple's own mixture, its heads summed first (the order of one product per triple)
        mixed = heads.new_zeros(e - a, T, D).index_add_(0, t - a, heads).add_(pre_ref[l, g])
        rows.index_add_(0, bi[a:e] * r + ri[a:e], _post_attention_rows(runner, mixed, l) - out_ref[l, g])
    return x


def _reading_current(rows: Tensor, n_read: int) -> Tensor | None:
    """Which items (indices) have a receiver in ``rows`` (B, r, S) that reads some sender of [0, n_read) from the
    current run rather than the other one; None when every item does (nothing to skip)."""
    live = rows[:, :, :n_read].ne(1).flatten(1).any(1)
    return None if bool(live.all()) else live.nonzero()[:, 0]
