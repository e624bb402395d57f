"""Activation patching (residual stream, attention and MLP outputs, heads): figures, section, finding, and the
residual-stream patching of each model on compare.html.

A (layer, position) "carries" the information when more than :data:`PATCH_THRESHOLD` of the clean − corrupted
gap is restored; with several pairs the 95% CI's lower bound must be above it. The findings read the pooled
generated pairs where a run has them (:func:`patching_set`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import ci_pair
from .._util import estimated_mask, finite, fmt, is_matrix, layer_labels, plotly_text, quoted, unique_token_labels
from ..compare_runs import HALF, Run, depth, join
from ..layout import GREY, diverging_heatmap
from ..markup import Figures, esc, figure_html, grid, missing, note
from ..registry import ComparePart, FigureSpec, Finding, Rule, Section, register


#: Normalised patching value above which a (layer, position) "carries" the information.
PATCH_THRESHOLD = 0.5


def _ranges(layers: Sequence[int]) -> str:
    """Compress sorted layer indices into ``"0–2, 5"``."""
    parts: list[str] = []
    items = sorted(set(layers))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}–{items[j]}")
        i = j + 1
    return ", ".join(parts)


def _layers_phrase(layers: Sequence[int]) -> str:
    """``"layer 3"`` or ``"layers 0–2"``."""
    return ("layer " if len(set(layers)) == 1 else "layers ") + _ranges(layers)


def patching_set(rp: dict) -> dict:
    """The set of pairs a patching finding reads: the pooled templates when they hold more pairs than `values`."""
    pooled = rp.get("pooled")
    if isinstance(pooled, dict) and is_matrix(pooled.get("values")) and \
            int(pooled.get("n_pairs") or 0) > int(rp.get("n_pairs") or 1):
        return pooled
    return rp


def _resid_patching(results: Results) -> Finding | None:
    """Where residual-stream patching shows the information sitting, and whether it moves.

    A (layer, position) carries the information when more than :data:`PATCH_THRESHOLD` of the clean − corrupted
    gap is restored: with several pairs, the 95% CI's lower bound must be above it. "The information moves from
    X to the final position between layer a and layer b" needs both ends to carry it over layer ranges that do
    not overlap (X's all before the final position's); otherwise the sentence only says where it is restored.
    """
    rp = results.get("resid_patching")
    if not rp:
        return None
    ps = patching_set(rp)  # type: ignore[arg-type]
    if not is_matrix(ps.get("values")):
        return None
    z = [[float(v) for v in row] for row in ps["values"]]
    n_pos = max(len(r) for r in z)
    tokens = list(ps.get("tokens") or []) + ["?"] * n_pos
    n = ps.get("n_pairs")
    ci = ps.get("ci")
    with_ci = isinstance(n, int) and n >= 2 and isinstance(ci, list) and len(ci) == len(z) and all(
        isinstance(row, list) and len(row) == len(zr) for row, zr in zip(ci, z))

    estimated = _estimated_cells(ps, z)  # screened out: an estimate, never the basis of a finding

    def low(layer: int, pos: int) -> float:
        c = ci_pair(ci[layer][pos]) if with_ci else None
        return c[0] if c is not None else z[layer][pos]

    def carries(layer: int, pos: int) -> bool:
        return (layer, pos) not in estimated and low(layer, pos) > PATCH_THRESHOLD

    final = n_pos - 1
    final_layers = [layer for layer, row in enumerate(z) if len(row) == n_pos and carries(layer, final)]
    other: dict[int, list[int]] = {}
    for layer, row in enumerate(z):
        for pos in range(min(len(row), final)):
            if carries(layer, pos):
                other.setdefault(pos, []).append(layer)

    def where(pos: int) -> str:
        """A position as quoted token plus index (pooled templates: the role alone, indices differ)."""
        return quoted(tokens[pos]) if ps is not rp else f"{quoted(tokens[pos])} (position {pos})"

    def value(pos: int, layers: Sequence[int]) -> str:
        """The largest value at ``pos`` over ``layers``, with its CI."""
        layer = max(layers, key=lambda l: z[l][pos])
        c = ci_pair(ci[layer][pos]) if with_ci else None
        return fmt(z[layer][pos]) + (f" [{fmt(c[0])}, {fmt(c[1])}]" if c is not None else "")

    excluded = int(ps.get("n_excluded") or 0)
    if isinstance(n, int):
        over = f"{n} pair{'' if n == 1 else 's'}" + (f", {excluded} excluded for a gap < 1 logit" if excluded else "")
        over += "; 95% CI" if with_ci else ""
        pooled = ", templates pooled" if ps is not rp else ""
        head = f"Residual-stream patching ({over}{pooled}{_exact_only(estimated)}) restores"
    else:
        head = "Residual-stream patching" + (f" ({_exact_only(estimated)[2:]})" if estimated else "") + " restores"
    gap = "of the clean − corrupted gap"
    if not final_layers and not other:
        best = max(((v, layer, pos) for layer, row in enumerate(z) for pos, v in enumerate(row)
                    if (layer, pos) not in estimated), default=None)
        if best is None or best[0] <= PATCH_THRESHOLD or not with_ci:
            return None
        _, layer, pos = best
        return Finding(f"{head} at most {value(pos, [layer])} {gap} (at {where(pos)}, layer {layer}): no position "
                       f"is restored above {PATCH_THRESHOLD:g} at 95% confidence.", "resid_patching")
    if other:
        src = max(other, key=lambda p: (len(other[p]), max(z[layer][p] for layer in other[p])))
        src_layers = other[src]
    if other and final_layers:
        moves = max(src_layers) < min(final_layers)  # the two layer ranges do not overlap, the source first
        text = (f"{head} up to {value(src, src_layers)} {gap} at {where(src)} in {_layers_phrase(src_layers)} and "
                f"up to {value(final, final_layers)} at the final position {where(final)} in "
                f"{_layers_phrase(final_layers)}")
        if moves:
            text += (f": the information moves from {quoted(tokens[src])} to the final "
                     f"position between layer {max(src_layers)} and layer {min(final_layers)}.")
        else:
            text += " (the layer ranges overlap: no clean hand-over)."
    elif other:
        text = (f"{head} up to {value(src, src_layers)} {gap} at {where(src)} in "
                f"{_layers_phrase(src_layers)}, but at no layer's final position.")
    else:
        text = (f"{head} up to {value(final, final_layers)} {gap} only at the final position "
                f"{where(final)}, in {_layers_phrase(final_layers)}.")
    return Finding(text, "resid_patching")


def _estimated_cells(ps: Mapping[str, Any], z: list[list[float]]) -> set[tuple[int, int]]:
    """The (layer, position) cells of ``z`` that a screen left to an estimate in ``ps`` (none without ``method``)."""
    est = estimated_mask(ps) or []
    return {(layer, pos) for layer, row in enumerate(est[:len(z)]) for pos, e in enumerate(row[:len(z[layer])]) if e}


def _exact_only(estimated: set[tuple[int, int]]) -> str:
    """``"; exactly patched cells only, 7 estimated left out"`` when some cells are estimated, else ``""``."""
    n = len(estimated)
    return f"; exactly patched cells only, {n} estimated cell{'' if n == 1 else 's'} left out" if n else ""


def _pairs_note(p: Any) -> str:
    """``" (12 pairs, 3 excluded: gap < 1 logit)"``, or ``""`` without counts."""
    n, x = p.get("n_pairs"), p.get("n_excluded")
    if not isinstance(n, int):
        return ""
    note = f"{n} pair{'' if n == 1 else 's'}"
    if isinstance(x, int) and x:
        note += f", {x} excluded: gap < 1 logit"
    return f" ({note})"


def _patching_view(p: Any, width_labels: Callable[[int], list[str]] | None) -> tuple[list[list[float]], list[str], Any]:
    """z, x labels and hover customdata ([stderr, ci low, ci high] per cell, or None) of one set of pairs."""
    z = [list(map(float, row)) for row in p["values"]]
    width = max((len(r) for r in z), default=0)
    if width_labels is None:
        tokens = list(p.get("tokens") or [])
        tokens += ["?"] * (width - len(tokens))
        x = unique_token_labels(tokens[:width])
    else:
        x = width_labels(width)
    err, ci = p.get("stderr"), p.get("ci")
    est = estimated_mask(p)
    est = est if est is not None and len(est) == len(z) else None
    custom = None
    if is_matrix(err) and isinstance(ci, list) and len(ci) == len(z) and len(err) == len(z):
        custom = [[[float(err[l][j]), float(ci[l][j][0]), float(ci[l][j][1]),
                    _METHOD_NOTE["estimated" if est is not None and est[l][j] else "exact"]]
                   for j in range(len(row))] for l, row in enumerate(z)]
    return z, x, custom


#: What the hover says of a cell's method (``method`` in the results).
_METHOD_NOTE = {"exact": "exact", "estimated": "estimated (screened out: attribution patching, not patched exactly)"}


def _estimated_note(p: Any) -> str:
    """``"; 20 of 126 cells exact, the others estimated"`` when the set's cells were screened, else ``""``."""
    flat = [e for row in estimated_mask(p) or [] for e in row]
    n_exact = len(flat) - sum(flat)
    return "" if n_exact == len(flat) else f"; {n_exact} of {len(flat)} cells exact, the others estimated"


def _patching_figure(p: Any, what: str, xaxis_title: str, width_labels: Callable[[int], list[str]] | None = None,
                     pooled_first: bool = False) -> go.Figure:
    """Patching heatmap of the set ``values`` holds; a menu switches to the pooled and per-template sets.

    ``pooled_first``: open on the pooled templates when they hold more pairs than ``values`` (:func:`patching_set`).
    """
    main = "reference pairs" if p.get("pairs") == "reference" else "templates pooled" if p.get("pairs") else ""
    views = [(main, p)]
    if isinstance(p.get("pooled"), dict):
        views.insert(0 if pooled_first and patching_set(p) is not p else 1, ("templates pooled", p["pooled"]))
    for t in p.get("per_template") or []:
        if isinstance(t, dict):
            views.append((f"template {plotly_text(t.get('template'), 40)}", t))
    built = []
    for label, v in views:
        z, x, custom = _patching_view(v, width_labels)
        title = f"Patching: {what}" + (f", {label}" if label else "") + _pairs_note(v) + _estimated_note(v)
        built.append((label, z, x, custom, title))
    _, z, x, custom, title = built[0]
    hover = "%{y}, %{x}: %{z:.3f}" + (" ± %{customdata[0]:.3f} (stderr), 95% CI [%{customdata[1]:.3f}, "
                                      "%{customdata[2]:.3f}]; %{customdata[3]}" if custom is not None else "")
    fig = diverging_heatmap(z, x, layer_labels(len(z)), title, "restored<br>(1 = clean)", xaxis_title, hover,
                             custom)
    if not z:
        fig.add_annotation(text="no pair with a clean − corrupted gap of at least 1 logit", x=0.5, y=0.5,
                           xref="paper", yref="paper", showarrow=False, font={"size": 14, "color": GREY})
    if len(built) > 1:
        fig.update_layout(updatemenus=[{
            "type": "dropdown", "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "top", "showactive": True,
            "buttons": [{"label": label[:48], "method": "update",
                         "args": [{"z": [zz], "x": [xx], "y": [layer_labels(len(zz))], "customdata": [cc]},
                                  {"title.text": tt}]}
                        for label, zz, xx, cc, tt in built]}])
    return fig


def _position_patching(results: Results, key: str, what: str, pooled_first: bool = False) -> go.Figure:
    """Layer × position patching heatmap with unique token tick labels and the CI on hover."""
    return _patching_figure(results[key], what, "position: token (clean prompt; {name} = the subject)",
                            pooled_first=pooled_first)


def resid_patching_figure(results: Results, pooled_first: bool = False) -> go.Figure:
    """Residual-stream patching per layer and position (``pooled_first``: see :func:`_patching_figure`)."""
    return _position_patching(results, "resid_patching", "residual stream", pooled_first)


def attn_patching_figure(results: Results) -> go.Figure:
    """Attention-output patching per layer and position."""
    return _position_patching(results, "attn_patching", "attention output")


def mlp_patching_figure(results: Results) -> go.Figure:
    """MLP-output patching per layer and position."""
    return _position_patching(results, "mlp_patching", "MLP output")


def head_patching_figure(results: Results) -> go.Figure:
    """Head-output patching per layer and head (all positions)."""
    return _patching_figure(results["head_patching"], "each head's output (all positions)", "head",
                            lambda n: [f"H{h}" for h in range(n)])


def _pairs_sentence(rp: dict) -> str:
    """How many pairs the patching numbers rest on, and how many were left out."""
    n, x = rp.get("n_pairs"), rp.get("n_excluded")
    if not isinstance(n, int):
        return ""
    which = ("the task's explicit patching pairs" if rp.get("pairs") == "reference"
             else "pairs generated from the templates, pooled")
    text = f" The heatmaps show {which}: {n} pair{'' if n == 1 else 's'} used"
    if isinstance(x, int) and x:
        text += f", {x} left out (|clean − corrupted| below 1 logit, where the ratio is mostly noise)"
    text += "."
    pooled = rp.get("pooled")
    if isinstance(pooled, dict) and isinstance(pooled.get("n_pairs"), int):
        text += (f" Generated pairs (every subject against every subject of another class with the same token "
                 f"length, within each template): {pooled['n_pairs']} used"
                 + (f", {pooled['n_excluded']} left out" if pooled.get("n_excluded") else "") + ".")
    per = rp.get("per_template") or []
    if per:
        text += (f" The menu at the top right of each heatmap switches to the pooled templates and to each of the "
                 f"{len(per)} template sets; hover shows the standard error and 95% bootstrap CI over pairs.")
    prec = rp.get("precision")
    if isinstance(prec, dict) and finite(prec.get("target")):
        reached = (f"reached {fmt(prec['achieved'])}" if finite(prec.get("achieved")) else "no pair was usable")
        text += (f" Generated pairs were added in a fixed, seeded order until every pooled residual-stream cell's "
                 f"95% CI half-width was at most {fmt(prec['target'])} of the gap or all were used: "
                 f"{prec.get('n_pairs')} of {prec.get('n_available')} pairs, widest half-width {reached}"
                 + ("" if prec.get("met") else " (target not met)") + ".")
    return text


def _screen_sentence(results: Results) -> str:
    """How the generated pairs' attention, MLP and head cells were screened, and what the screen missed."""
    parts = []
    for key, what in (("attn_patching", "attention-output"), ("mlp_patching", "MLP-output"),
                      ("head_patching", "head")):
        sc = (results.get(key) or {}).get("screen")  # type: ignore[attr-defined]
        if not isinstance(sc, dict) or not isinstance(sc.get("n_exact"), int):
            continue
        parts.append(f"{what} cells: {sc['n_exact']} of {sc.get('n_cells')} exact ({sc.get('n_flagged')} flagged, "
                     f"{sc.get('n_sampled')} at random); on the random ones attribution patching was off by at most "
                     f"{fmt(sc.get('sample_max_error'))}, and no screened-out cell is expected above "
                     f"{fmt(sc.get('bound'))}")
    if not parts:
        return ""
    rp = results.get("resid_patching") or {}
    per = [t for t in rp.get("per_template") or [] if isinstance(t, dict)]  # type: ignore[attr-defined]
    resid_where = ("at every position the templates pool on (the other positions of each template are estimated)"
                   if any(_estimated_note(t) for t in per) else "everywhere")
    return (f" On the generated pairs the residual stream is patched exactly {resid_where}; the other components are "
            "first estimated by attribution patching, then the cells with the largest estimates and a seeded random "
            "sample of the rest are patched exactly (the explicit pairs: every cell exact). " + "; ".join(parts)
            + ". Hover says which cells are estimated; no finding rests on an estimated cell.")


def section_patching(results: Results, figures: Figures,
                     findings: Sequence[Finding]) -> str:
    """Residual, attention, MLP and head activation patching."""
    ids = ["resid_patching", "attn_patching", "mlp_patching", "head_patching"]
    if not any(i in figures for i in ids):
        return missing("activation patching")
    rp = results.get("resid_patching") or {}
    base = ""
    if finite(rp.get("clean_logit_diff")) and finite(rp.get("corrupted_logit_diff")):
        base = (f" Clean logit difference {esc(fmt(rp['clean_logit_diff']))}, corrupted "
                f"{esc(fmt(rp['corrupted_logit_diff']))} (means over the pairs used).")
    return (
        note("Run the corrupted prompt, restore one activation from the clean run, and measure "
             "(patched − corrupted) / (clean − corrupted) for each pair, by its own gap: 1 = that activation "
             "alone fully restores the clean answer, 0 = no effect; the heatmaps show the mean over pairs. "
             "x-axis: the clean prompt's tokens with their position index ({name} = the subject's tokens where "
             "templates are pooled)." + base + esc(_pairs_sentence(rp))  # type: ignore[arg-type]
             + esc(_screen_sentence(results)))
        + figure_html(figures, "resid_patching")
        + figure_html(figures, "attn_patching")
        + figure_html(figures, "mlp_patching")
        + figure_html(figures, "head_patching")
    )


# ---- compare.html


def _compare_patching(i: int, task: str, runs: Sequence[Run]) -> Finding | None:
    """From which layer the final position's residual stream restores more than half of the gap, per run: on the
    pooled generated pairs where a run has them (:func:`patching_set`), else on the pairs ``values`` holds."""
    parts, fig = [], None
    for j, r in enumerate(runs):
        rp = r.results.get("resid_patching")
        if not isinstance(rp, dict) or not is_matrix(rp.get("values")):
            continue
        ps = patching_set(rp)
        if not is_matrix(ps.get("values")) or not is_matrix(ps.get("ci")):
            continue
        fig = fig or f"t{i}_patch_{j}"
        n = len(ps["values"])
        first = next((l for l in range(n) if finite(ps["ci"][l][-1][0]) and ps["ci"][l][-1][0] > HALF), None)
        pairs = (f"{ps.get('n_pairs', '?')} pair{'s' if ps.get('n_pairs') != 1 else ''}"
                 + (", templates pooled" if ps is not rp else ""))
        if first is None:
            parts.append(f"never in {r.label} ({pairs})")
        else:
            parts.append(f"from layer {first} of {n} (depth {fmt(depth(first, n))}) on in {r.label} ({pairs})")
    if not parts or fig is None:
        return None
    return Finding(f"On {task}, patching the final position's residual stream restores more than half of the "
                   f"clean − corrupted gap (95% CI above one half) {join(parts)}.", fig)


def _compare_patching_figure(run: Run) -> go.Figure | None:
    rp = run.results.get("resid_patching")
    if not isinstance(rp, dict) or not is_matrix(rp.get("values")):
        return None
    fig = resid_patching_figure(run.results, pooled_first=True)
    fig.update_layout(title={"text": f"{plotly_text(run.label)}: resid_pre patching"})
    return fig


def _compare_figures(i: int, runs: Sequence[Run]) -> dict[str, go.Figure]:
    figs = {}
    for j, r in enumerate(runs):
        fig = _compare_patching_figure(r)
        if fig is not None:
            figs[f"t{i}_patch_{j}"] = fig
    return figs


def _compare_html(i: int, runs: Sequence[Run], figures: Mapping[str, go.Figure]) -> str:
    patch_ids = [f"t{i}_patch_{j}" for j in range(len(runs)) if f"t{i}_patch_{j}" in figures]
    no_patch = [r.label for j, r in enumerate(runs) if f"t{i}_patch_{j}" not in figures]
    patch_note = note(f"No normalised residual patching in {esc(', '.join(no_patch))}.") if no_patch else ""
    return ("<h3>Residual-stream patching</h3>"
            + note("resid_pre patched clean into corrupted, as a fraction of each pair's clean − corrupted gap "
                   "(1 = fully restored; the generated pairs with the templates pooled where a run has them, the "
                   "menu switches to the others).") + patch_note
            + grid(figures, patch_ids))


SECTION = register(Section(
    name="patching", title="Activation patching", render=section_patching, analysis="patching",
    keys=("resid_patching", "attn_patching", "mlp_patching", "head_patching"),
    figures=(FigureSpec("resid_patching", "resid_patching", resid_patching_figure),
             FigureSpec("attn_patching", "attn_patching", attn_patching_figure),
             FigureSpec("mlp_patching", "mlp_patching", mlp_patching_figure),
             FigureSpec("head_patching", "head_patching", head_patching_figure)),
    rules=(Rule(40, _resid_patching),),
    compare=ComparePart(_compare_html, _compare_figures, rules=(Rule(50, _compare_patching),)),
))
