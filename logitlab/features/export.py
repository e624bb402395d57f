"""circuit-tracer's graph JSON from graph.json: the files its local server and Neuronpedia open.

Written as circuit-tracer 0.5.0's ``create_graph_files`` writes them (``circuit_tracer/utils/create_graph_files.py``
and ``frontend/graph_models.py``), field by field, from the graph that ``logitlab graph`` already pruned:

- one node per kept node that has a kept edge, plus every token and logit node, in graph order: features
  ``{layer}_{feature}_{pos}`` (``feature`` = Cantor pairing of layer and index, ``jsNodeId``
  ``{layer}_{feature}-0``, type ``cross layer transcoder``), errors ``0_{layer}_{pos}`` (``feature`` −1, type
  ``mlp reconstruction error``; ``0_{layer}_{pos}_err`` where that id is a kept layer-0 feature's, see
  :func:`ct_node_ids`), tokens ``E_{token}_{pos}`` (layer ``"E"``, ``feature`` = position, type
  ``embedding``), logit targets ``{n_layers + 1}_{token}_{last pos}`` (type ``logit``, ``clerp``
  ``Output "tok" (p=0.123)``, ``is_target_logit`` on the first target). The logit-difference target has no
  token: it gets circuit-tracer's virtual index for a custom target, vocabulary size + its place among the targets.
- ``influence``: circuit-tracer's *cumulative* influence (the share of the total influence held by the nodes at
  least as influential), computed from graph.json's influence on the graph's own weights (``influence_on``: the
  logit difference when the graph has one; circuit-tracer weighs by the top logits' probabilities);
- ``links``: the kept edges ``{source, target, weight}``, target-major, weights the adjacency's entries;
- ``metadata``: slug, scan, ``transcoder_list`` [], ``prompt_tokens``, prompt, ``node_threshold``,
  ``schema_version`` 1; ``qParams``: supernodes as ``[name, node_id, ...]`` and their members pinned (circuit-
  tracer's subgraph draws supernodes of pinned nodes only), ``linkType`` ``both``.

The folder: ``{slug}.json`` and ``graph-metadata.json`` (``{"graphs": [metadata, ...]}``, an existing entry of the
same slug replaced), as circuit-tracer's ``add_graph_metadata``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from logitlab.errors import LogitlabError

__all__ = ["ct_node_ids", "cumulative_influence", "export_circuit_tracer", "read_supernodes", "to_circuit_tracer"]


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def cumulative_influence(influence: list[float]) -> list[float]:
    """circuit-tracer's ``cumulative_scores``: nodes sorted by influence (largest first), each gets the cumulative
    sum up to it over the total."""
    order = sorted(range(len(influence)), key=lambda i: -influence[i])
    total = sum(influence) or 1.0
    out, acc = [0.0] * len(influence), 0.0
    for i in order:
        acc += influence[i]
        out[i] = acc / total
    return out


def ct_node_ids(data: Mapping[str, Any], vocab_size: int | None = None) -> dict[int, str]:
    """circuit-tracer's ``node_id`` of every node of graph.json; the logit-difference target needs ``vocab_size``
    (without it, that target is left out).

    circuit-tracer's ids collide: layer 0's feature ``i`` at position ``p`` is ``0_{i}_{p}``, the same as the error
    node of layer ``i`` at ``p``. Where both are kept, the error node gets ``0_{i}_{p}_err`` instead (the viewer uses
    ids as keys only; with a duplicate it would merge the two nodes)."""
    L, T = int(data["n_layers"]), len(data["tokens"])
    out: dict[int, str] = {}
    j = 0
    for n in data["nodes"]:
        kind = n["kind"]
        if kind == "feature":
            out[n["id"]] = f"{n['layer']}_{n['feature']}_{n['pos']}"
        elif kind == "error":
            out[n["id"]] = f"0_{n['layer']}_{n['pos']}"
        elif kind == "token":
            out[n["id"]] = f"E_{n['token']}_{n['pos']}"
        else:
            if n["token"] is not None or vocab_size is not None:
                out[n["id"]] = f"{L + 1}_{_logit_vocab_idx(n, j, vocab_size)}_{T - 1}"
            j += 1
    kept_features = {out[n["id"]] for n in data["nodes"] if n["kind"] == "feature" and n["kept"]}
    for n in data["nodes"]:
        if n["kind"] == "error" and n["kept"] and out[n["id"]] in kept_features:
            out[n["id"]] += "_err"
    return out


def _logit_vocab_idx(n: Mapping[str, Any], j: int, vocab_size: int | None) -> int:
    """The token of a logit target, or circuit-tracer's virtual index of a custom target (vocabulary size + its
    place among the targets) for the logit difference."""
    if n["token"] is not None:
        return int(n["token"])
    if vocab_size is None:
        raise LogitlabError("the logit-difference target needs the vocabulary size (vocab_size=) for its "
                            "circuit-tracer index")
    return int(vocab_size) + j


def read_supernodes(spec: str | Path | Mapping[str, list[Any]], data: Mapping[str, Any]) -> dict[str, list[int]]:
    """Supernodes ``{"name": [node, ...]}`` (a file or a mapping) as graph.json node ids.

    A node is graph.json's ``id`` (an int), its ``label`` (``L3/12@5``) or its circuit-tracer ``node_id``
    (``3_12_5``). Every member must be a kept node, in at most one supernode; raises naming the first that is not.
    """
    if isinstance(spec, (str, Path)):
        try:
            spec = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LogitlabError(f"cannot read the supernodes file {spec}: {e}") from e
    if not isinstance(spec, Mapping) or not all(isinstance(v, list) for v in spec.values()):
        raise LogitlabError('supernodes: expected {"name": [node ids, ...], ...}')
    by_id = {n["id"]: n for n in data["nodes"]}
    lookup: dict[Any, int] = {n["label"]: n["id"] for n in data["nodes"]}
    lookup.update({v: k for k, v in ct_node_ids(data, data.get("vocab_size")).items()})
    out: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for name, members in spec.items():
        ids = []
        for m in members:
            i = m if isinstance(m, int) and not isinstance(m, bool) else lookup.get(m)
            if i not in by_id:
                raise LogitlabError(f"supernode {name!r}: {m!r} is not a node of this graph")
            if not by_id[i]["kept"]:
                raise LogitlabError(f"supernode {name!r}: node {by_id[i]['label']} was pruned")
            if i in seen:
                raise LogitlabError(f"node {by_id[i]['label']} is in supernodes {seen[i]!r} and {name!r}")
            seen[i] = str(name)
            ids.append(int(i))
        if not ids:
            raise LogitlabError(f"supernode {name!r} has no members")
        out[str(name)] = ids
    return out


def to_circuit_tracer(data: Mapping[str, Any], slug: str, *, scan: str | None = None,
                      node_threshold: float | None = None, vocab_size: int | None = None) -> dict[str, Any]:
    """circuit-tracer's graph JSON (``Model``: metadata, qParams, nodes, links) of graph.json's dict ``data``.

    Args:
        slug: the graph's name (its file is ``{slug}.json``).
        scan: the transcoder set's name (default: graph.json's ``transcoders``, else its model).
        node_threshold: written into the metadata (default: graph.json's ``pruning.node_threshold``).
        vocab_size: the model's vocabulary size (default graph.json's ``vocab_size``); needed with a
            logit-difference target.
    """
    vocab_size = vocab_size if vocab_size is not None else data.get("vocab_size")
    if node_threshold is None:
        node_threshold = (data.get("pruning") or {}).get("node_threshold")
    scan = scan or data.get("transcoders") or data.get("model")
    if not scan:
        raise LogitlabError("circuit-tracer's graph files need a scan (the transcoders' name): pass scan=")
    L, T = int(data["n_layers"]), len(data["tokens"])
    cum = cumulative_influence([float(n.get("influence") or 0.0) for n in data["nodes"]])
    ids = ct_node_ids(data, vocab_size)
    if len(ids) < len(data["nodes"]):
        _logit_vocab_idx({"token": None}, 0, vocab_size)  # raises: the logit difference needs vocab_size
    nodes: dict[int, dict[str, Any]] = {}
    j = -1
    for i, n in enumerate(data["nodes"]):
        if n["kind"] == "logit":
            j += 1
        if not n["kept"]:
            continue
        kind = n["kind"]
        node: dict[str, Any] = {"node_id": ids[n["id"]]}
        if kind == "feature":
            node.update(feature=_cantor(n["layer"], n["feature"]), layer=str(n["layer"]), ctx_idx=n["pos"],
                        feature_type="cross layer transcoder", token_prob=0.0, is_target_logit=False, run_idx=0,
                        reverse_ctx_idx=0, jsNodeId=f"{n['layer']}_{n['feature']}-0", clerp="",
                        influence=cum[i], activation=float(n["activation"]))
        elif kind == "error":
            node.update(feature=-1, layer=str(n["layer"]), ctx_idx=n["pos"], feature_type="mlp reconstruction error",
                        token_prob=0.0, is_target_logit=False, run_idx=0, reverse_ctx_idx=0,
                        jsNodeId=f"{n['layer']}_{n['pos']}-0", clerp="", influence=cum[i], activation=None)
        elif kind == "token":
            node.update(feature=n["pos"], layer="E", ctx_idx=n["pos"], feature_type="embedding", token_prob=0.0,
                        is_target_logit=False, run_idx=0, reverse_ctx_idx=0,
                        jsNodeId=f"E_{n['token']}-{n['pos']}", clerp="", influence=cum[i], activation=None)
        else:
            v, p = _logit_vocab_idx(n, j, vocab_size), float(n["prob"])
            node.update(feature=v, layer=str(L + 1), ctx_idx=T - 1, feature_type="logit", token_prob=p,
                        is_target_logit=j == 0, run_idx=0, reverse_ctx_idx=0, jsNodeId=f"L_{v}-{T - 1}",
                        clerp=f'Output "{n["text"]}" (p={p:.3f})', influence=None, activation=None)
        nodes[n["id"]] = node
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
             for s, t, w in sorted(data["edges"], key=lambda e: (e[1], e[0])) if s in nodes and t in nodes]
    connected = {e["source"] for e in links} | {e["target"] for e in links}
    used = [nd for nd in nodes.values() if nd["node_id"] in connected or nd["feature_type"] in ("embedding", "logit")]
    supernodes = [[name, *(ids[i] for i in members)] for name, members in (data.get("supernodes") or {}).items()]
    pinned = [x for sn in supernodes for x in sn[1:]]
    metadata = {"slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": list(data["token_strs"]),
                "prompt": data["prompt"], "node_threshold": node_threshold, "schema_version": 1}
    qparams = {"pinnedIds": pinned, "supernodes": supernodes, "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": used, "links": links}


def export_circuit_tracer(data: Mapping[str, Any], path: str | Path, slug: str = "graph", **kw: Any) -> Path:
    """Write ``{slug}.json`` and update ``graph-metadata.json`` in the folder ``path`` (circuit-tracer's
    ``create_graph_files`` layout); keyword arguments as :func:`to_circuit_tracer`. Returns the graph's file."""
    if not slug or "/" in slug or "\\" in slug:
        raise LogitlabError(f"the slug {slug!r} must be a plain file name")
    model = to_circuit_tracer(data, slug, **kw)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    file = out / f"{slug}.json"
    file.write_text(json.dumps(model, indent=2, ensure_ascii=False), encoding="utf-8")
    meta_path = out / "graph-metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {"graphs": []}
    meta["graphs"] = [g for g in meta.get("graphs", []) if g.get("slug") != slug] + [model["metadata"]]
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return file
