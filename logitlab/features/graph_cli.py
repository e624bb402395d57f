"""``logitlab graph PROMPT --transcoders DIR``: one prompt's attribution graph as graph.json and graph.html (with
feature cards), optionally circuit-tracer's graph files (``--export DIR``) and supernodes (``--supernodes FILE``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from logitlab.errors import LogitlabError

__all__ = ["graph_cmd", "write_graph"]


def write_graph(data: dict, out: Path) -> tuple[Path, Path]:
    """Write ``graph.json`` and its offline view ``graph.html`` into ``out``."""
    from logitlab.report.sections.features import graph_page
    out.mkdir(parents=True, exist_ok=True)
    js, html = out / "graph.json", out / "graph.html"
    js.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    html.write_text(graph_page(data), encoding="utf-8")
    return js, html


def graph_cmd(
    prompt: Annotated[str, typer.Argument(help="The prompt (a BOS token is prepended when the model has one).")],
    transcoders: Annotated[str, typer.Option("--transcoders", help="Folder (circuit-tracer or SAELens format) "
                                             "or release name of per-layer transcoders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("logitlab-graph"),
    answer: Annotated[str | None, typer.Option("--answer", "-a", help="Answer token of the logit-difference "
                                               "target (e.g. ' she'); needs --contrast.")] = None,
    contrast: Annotated[str | None, typer.Option("--contrast", "-c", help="Contrast token (e.g. ' he').")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="'builtin', a hub name, a folder or a .gguf file.")] = "builtin",
    node_threshold: Annotated[float, typer.Option(help="Keep nodes holding this share of influence.")] = 0.8,
    edge_threshold: Annotated[float, typer.Option(help="Keep edges holding this share of influence.")] = 0.98,
    device: Annotated[str, typer.Option(help="torch device: auto, cpu, cuda or cuda:N.")] = "auto",
    check: Annotated[int, typer.Option("--check", help="Check the top k features against interventions in the "
                                       "real model, and the faithfulness curve (needs --answer).")] = 0,
    export: Annotated[Path | None, typer.Option("--export", help="Also write circuit-tracer's graph files "
                                                "(SLUG.json, graph-metadata.json) into this folder.")] = None,
    slug: Annotated[str, typer.Option("--slug", help="The graph's name in the exported files.")] = "graph",
    scan: Annotated[str | None, typer.Option("--scan", help="The transcoder set's name in the exported files "
                                             "(default: the --transcoders argument).")] = None,
    supernodes: Annotated[Path | None, typer.Option("--supernodes", help="JSON {\"name\": [node ids, labels or "
                                                    "circuit-tracer node ids]}: nodes drawn (and exported) as one "
                                                    "supernode.")] = None,
    contexts: Annotated[Path | None, typer.Option("--contexts", help="Feature contexts file (default: "
                                                  "feature_contexts.json in the transcoders folder, if "
                                                  "there).")] = None,
    max_feature_nodes: Annotated[int | None, typer.Option("--max-feature-nodes", help="Attribute at most this "
                                 "many features, by influence (long prompts: memory rows × nodes).")] = None,
    freeze_massive: Annotated[bool, typer.Option("--freeze-massive/--keep-massive", help="Hold the MLP outputs "
                              "at positions with massive activations constant, as at BOS (no nodes there).")] = True,
) -> None:
    """Attribution graph of one prompt over transcoder features: graph.json and an offline graph.html."""
    from rich.console import Console

    from logitlab.features.cards import CONTEXTS_FILE, add_cards, load_contexts
    from logitlab.features.export import export_circuit_tracer, read_supernodes
    from logitlab.features.formats import load_dictionaries
    from logitlab.features.graph import attribute
    from logitlab.features.prune import graph_to_dict, prune_graph
    from logitlab.model.device import device_option
    from logitlab.model.load import load_model
    console = Console(stderr=True)
    if (answer is None) != (contrast is None):
        raise LogitlabError("give both --answer and --contrast, or neither")
    if check and answer is None:
        raise LogitlabError("--check needs --answer and --contrast (it checks the logit difference)")
    m = load_model(model, device=device_option(device))
    dicts = load_dictionaries(transcoders, m)
    if contexts is None and (Path(transcoders) / CONTEXTS_FILE).is_file():
        contexts = Path(transcoders) / CONTEXTS_FILE
    ctx = load_contexts(contexts) if contexts is not None else None  # read first: a bad file fails fast
    with console.status("attributing…"):
        g = attribute(m, prompt, dicts, answer=answer, contrast=contrast, max_feature_nodes=max_feature_nodes,
                      freeze_massive=freeze_massive)
        pruned = prune_graph(g, node_threshold, edge_threshold)
        data = graph_to_dict(g, pruned, model=m.name)
    if g.frozen_positions != [0]:
        console.print(f"frozen positions (no nodes; MLP outputs held): {g.frozen_positions}", highlight=False)
    data.update(transcoders=str(transcoders), vocab_size=int(m.runner.w.W_U.shape[1]),
                pruning={"node_threshold": node_threshold, "edge_threshold": edge_threshold})
    if supernodes is not None:
        data["supernodes"] = read_supernodes(supernodes, data)
    with console.status("feature cards…"):
        add_cards(data, m, dicts, ctx)
    if check > 0:
        from logitlab.features.interventions import check_top_features, faithfulness_curve
        with console.status("checking against the real model…"):
            top = check_top_features(m, None, dicts, g, check, answer=answer, contrast=contrast)
            faith = faithfulness_curve(m, None, dicts, g, answer=answer, contrast=contrast)
        data["intervention_check"] = {"top_features": top.to_dict(), "faithfulness": faith.to_dict()}
        mo = top.model
        pair = lambda k: f"{mo['spearman'][k]:.2f} / {mo['sign_agreement'][k]:.2f}"  # noqa: E731
        own = mo["own_first_order"]
        console.print(
            f"top {check} features, the graph's predicted change of the logit difference against the real model's "
            f"(Spearman / sign agreement): zeroing {pair('zeroed')}, first order {pair('derivative')}, first order "
            f"with attention held {pair('derivative_attention_held')}, with attention and norms held "
            f"{pair('derivative_attention_norms_held')} (the real model's own first order against its zeroing: "
            f"{own['spearman']:.2f} / {own['sign_agreement']:.2f}); zeroing with the transcoders downstream "
            f"{top.spearman:.2f} / {top.sign_agreement:.2f}, with attention, norms and gates held, one released "
            "at a time: " + ", ".join(f"{h} {v:.2f}" for h, v in top.spearman_released.items()), highlight=False)
    js, html = write_graph(data, out)
    if export is not None:
        ct = export_circuit_tracer(data, export, slug, scan=scan)
        console.print(f"[green]circuit-tracer graph:[/green] {ct}")
    s, c = data["scores"], data["check"]
    console.print(f"{data['counts']['kept_features']} of {data['counts']['features']} features kept, "
                  f"{data['counts']['kept_edges']} edges; replacement {s['replacement']:.3f}, completeness "
                  f"{s['completeness']:.3f}; invariant residual {max(c.values()):.1e}", highlight=False)
    console.print(f"[green]graph:[/green] {js}\n[green]view:[/green] {html}")
