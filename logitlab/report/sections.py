"""HTML sections of the report, one function per section.

Each function takes the results dict, the figures and the findings and returns an
HTML fragment, or None to leave its section out (the circuit sections when their
results key is absent). Every string that comes from the results (prompts, tokens, names,
notes, findings) goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from logitlab.results import Results

from ._util import finite, fmt, fmt_pct, fmt_ratio, head_name, is_matrix, visible
from .attention import attention_viewer_html
from .circuit import CIRCUIT_SECTIONS
from .findings import Finding, dla_tolerance

Figures = Mapping[str, go.Figure]
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "displayModeBar": "hover"}


def esc(x: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(x), quote=True)


def chip(token: Any, cls: str = "tok") -> str:
    """A token shown as a chip (whitespace preserved, control characters made visible)."""
    return f'<span class="{cls}">{esc(visible(token))}</span>'


def chips(tokens: Sequence[Any]) -> str:
    """A row of token chips."""
    return '<span class="toks">' + "".join(chip(t) for t in tokens) + "</span>"


def figure_html(figures: Figures, fig_id: str) -> str:
    """The figure ``fig_id`` as an anchored ``<figure>`` (plotly.js not included)."""
    fig = figures.get(fig_id)
    if fig is None:
        return ""
    height = fig.layout.height or 450
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{fig_id}",
        config=PLOT_CONFIG,
        default_height=f"{int(height)}px",
        default_width="100%",
    )
    return f'<figure class="fig" id="fig-{esc(fig_id)}">{div}</figure>'


def grid(figures: Figures, ids: Sequence[str]) -> str:
    """Several figures side by side (wrapping on narrow screens)."""
    inner = "".join(figure_html(figures, i) for i in ids)
    return f'<div class="fig-grid">{inner}</div>' if inner else ""


def table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "",
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; header cells are escaped, row cells must already be HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    rc = list(row_classes or [""] * len(rows))
    body = "".join(
        (f'<tr class="{c}">' if c else "<tr>") + "".join(f"<td>{x}</td>" for x in r) + "</tr>"
        for r, c in zip(rows, rc)
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    """A muted note paragraph (``text`` must already be HTML)."""
    return f'<p class="note">{text}</p>'


def missing(what: str) -> str:
    """Note for an analysis that is absent from the results."""
    return note(f"No {esc(what)} in this results file (analysis not run).")


def section_findings(results: Results, figures: Figures, findings: Sequence[Finding]) -> str:
    """Key findings: each sentence links to its figure."""
    if not findings:
        return note("No findings could be derived from this results file.")
    items = "".join(
        f'<li><a href="#fig-{esc(f.figure_id)}">{esc(f.text)}</a></li>' for f in findings
    )
    return (
        f'<ol class="findings">{items}</ol>'
        + note("Generated from the numbers below; each sentence links to its figure.")
    )


def section_setup(results: Results, figures: Figures, findings: Sequence[Finding]) -> str:
    """Model, task, prompts with their tokenisation, answers, patching pairs and config."""
    parts: list[str] = []
    model = results.get("model") or {}
    keys = ["name", "architecture", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head",
            "d_vocab", "normalization", "post_attention_norm", "dtype", "device"]
    pairs = [[esc(k), esc(model[k])] for k in keys if k in model]
    rows = [pairs[i] + (pairs[i + 1] if i + 1 < len(pairs) else ["", ""])
            for i in range(0, len(pairs), 2)]
    parts.append("<h3>Model</h3>" + (table(["property", "value", "property", "value"], rows,
                                           "kv kv2") if rows else missing("model description")))
    task = results.get("task") or {}
    prompts = list(task.get("prompts") or [])
    answers = list(task.get("answers") or [])
    toks = list(task.get("prompt_tokens") or [])
    parts.append(f"<h3>Task: {esc(task.get('name', '?'))}</h3>")
    parts.append(
        f"<p>{len(prompts)} prompts. Tokens are shown as chips (BOS included; "
        "leading spaces are part of the token). The logit difference is "
        "logit(correct) − logit(incorrect) at each prompt's final position.</p>"
    )
    rows = []
    for i, p in enumerate(prompts):
        a = answers[i] if i < len(answers) and len(answers[i]) >= 2 else ["?", "?"]
        t = chips(toks[i]) if i < len(toks) else ""
        rows.append([str(i), f'<span class="prompt">{esc(p)}</span>', t, chip(a[0]), chip(a[1])])
    if rows:
        parts.append('<div class="scroll">' + table(
            ["#", "prompt", "tokens", "correct", "incorrect"], rows, "prompts") + "</div>")
    pairs = task.get("patching_pairs") or []
    if pairs:
        prow = [[f'<span class="prompt">{esc(p.get("clean", ""))}</span>',
                 f'<span class="prompt">{esc(p.get("corrupted", ""))}</span>',
                 chip(p.get("correct", "?")), chip(p.get("incorrect", "?"))] for p in pairs]
        parts.append("<h3>Patching pairs</h3>" + '<div class="scroll">' + table(
            ["clean", "corrupted", "correct", "incorrect"], prow, "prompts") + "</div>")
    if results.get("config") is not None:
        ran = results["config"].get("analyses")
        if ran is not None:
            always = "logit difference, DLA, logit lens, layer and head attribution, predictions, unembedding bias"
            parts.append(f"<p>Analyses run: {esc(always)}; {esc(', '.join(ran) or 'nothing else')} "
                         "(<code>--analyses</code>).</p>")
        cfg = json.dumps(results["config"], indent=2, ensure_ascii=False, default=str)
        parts.append(f"<details><summary>Full run configuration</summary><pre>{esc(cfg)}</pre>"
                     "</details>")
    return "".join(parts)


def section_predictions(results: Results, figures: Figures,
                        findings: Sequence[Finding]) -> str:
    """Top-k next-token table per example prompt."""
    preds = results.get("predictions")
    if not preds:
        return missing("predictions")
    parts = []
    for p in preds:
        rows, classes = [], []
        for r, t in enumerate(p.get("top") or []):
            classes.append("answer-row" if t.get("token") == p.get("answer") else "")
            prob = float(t["prob"]) if finite(t.get("prob")) else math.nan
            rows.append([str(r), chip(t.get("token", "")), fmt(t.get("logit")), fmt(prob)])
        prob = p.get("answer_prob")
        parts.append(
            '<div class="pred">'
            f'<p><span class="prompt">{esc(p.get("prompt", ""))}</span></p>'
            f"<p>{chips(p.get('tokens') or [])}</p>"
            f"<p>answer {chip(p.get('answer', '?'))}: rank {esc(p.get('answer_rank', '?'))}, "
            f"p = {fmt(prob)}</p>"
            + table(["rank", "token", "logit", "prob"], rows, "topk", classes)
            + "</div>"
        )
    return (note("The model's top next tokens after each example prompt; the correct answer's "
                 "row is highlighted. Rank 0 = the model's top prediction.")
            + '<div class="preds">' + "".join(parts) + "</div>")


def section_logit_diff(results: Results, figures: Figures,
                       findings: Sequence[Finding]) -> str:
    """Per-prompt logit difference and its summary."""
    ld = results.get("logit_diff")
    if not ld:
        return missing("logit difference")
    ci = ld.get("ci") or []
    ci_txt = (f", 95% CI [{fmt(ci[0])}, {fmt(ci[1])}]" if len(ci) == 2 and finite(ci[0]) and finite(ci[1])
              else "")
    summary = (
        f"Mean {fmt(ld.get('mean'))} ± {fmt(ld.get('stderr'))} (stderr){ci_txt} over "
        f"{len(ld.get('per_prompt') or [])} prompts; the correct answer's logit beats the (mean) incorrect "
        f"one's on {fmt_pct(float(ld.get('accuracy', math.nan)))} of prompts; exp(mean) = "
        f"{fmt_ratio(ld.get('prob_ratio_of_mean'))} (odds of correct over incorrect)."
    )
    return (
        f"<p>{esc(summary)}</p>"
        + note("Each bar is one prompt's logit(correct) − logit(incorrect) at its own final "
               "position (blue: correct preferred, red: not). The dashed line and grey band are "
               "the mean ± stderr; the lighter band is the 95% bootstrap CI of the mean over prompts "
               "(2,000 seeded resamples).")
        + figure_html(figures, "logit_diff")
    )


def section_dla_check(results: Results, figures: Figures,
                      findings: Sequence[Finding]) -> str:
    """DLA reconstruction table with a pass/fail badge."""
    dla = results.get("dla")
    if not dla:
        return missing("DLA reconstruction check")
    err = dla.get("relative_error")
    tol = dla_tolerance(results)
    ok = finite(err) and float(err) <= tol
    badge = (f'<span class="badge {"pass" if ok else "fail"}">'
             f'{"PASS" if ok else "FAIL"}</span>')
    recon = dla.get("reconstructed_mean")
    bias = dla.get("bias_term")
    total = float(recon) + float(bias) if finite(recon) and finite(bias) else math.nan
    max_abs = dla.get("max_abs_error")
    rows = [
        ["reconstructed mean (components)", fmt(recon)],
        ["bias term (b_U + final-norm bias)", fmt(bias)],
        ["reconstructed + bias", fmt(total)],
        ["model's mean logit diff", fmt(dla.get("model_mean"))],
        ["max over prompts of |reconstructed + bias − logit diff|",
         f"{float(max_abs):.2e}" if finite(max_abs) else "n/a"],
        ["relative error (max over prompts, relative to max(1, |logit diff|))",
         f"{float(err):.2e}" if finite(err) else "n/a"],
        [f"check (relative error ≤ {tol:.0e})", badge],
    ]
    return (
        note("Direct logit attribution decomposes the final residual stream (final-norm scale "
             "frozen) into per-component terms. If the decomposition is right, the components "
             "plus the bias term reproduce every prompt's own logit difference; the check takes the "
             "largest per-prompt error, so errors cannot cancel across prompts and a mean near 0 "
             "does not inflate it.")
        + table(["quantity", "value"], rows, "kv")
    )


def section_logit_lens(results: Results, figures: Figures,
                       findings: Sequence[Finding]) -> str:
    """Logit lens over the accumulated residual stream."""
    if "logit_lens" not in figures:
        return missing("logit lens")
    return (
        note("The residual stream accumulated up to each point (before each layer, after its "
             "attention, and at the end), read out through the frozen final norm and the "
             "answer direction. Where the line rises is where the answer becomes linearly "
             "available; the band is ± stderr over prompts, the lighter band the 95% bootstrap CI.")
        + figure_html(figures, "logit_lens")
    )


def section_layer_attribution(results: Results, figures: Figures,
                              findings: Sequence[Finding]) -> str:
    """Per-component direct logit attribution."""
    la = results.get("layer_attribution")
    if not la or "layer_attribution" not in figures:
        return missing("layer attribution")
    total = sum(float(v) for v in la.get("values") or [])
    return (
        note("Each component's direct contribution to the final logit difference (mean over "
             f"prompts; dark error bars ± stderr, grey whiskers the 95% bootstrap CI). The bars sum to {esc(fmt(total))}, the reconstructed mean of "
             "the DLA check. Positive bars push towards the correct answer.")
        + figure_html(figures, "layer_attribution")
    )


def _naive_comparison(results: Results) -> str:
    """How different the naive (pre-post-norm) head attributions are, or ''."""
    detail = results.get("head_attribution_detail") or {}
    naive, exact = detail.get("naive"), results.get("head_attribution")
    if not (is_matrix(naive) and is_matrix(exact)):
        return ""
    a = [float(v) for row in exact for v in row]
    b = [float(v) for row in naive for v in row]
    if len(a) != len(b) or not a:
        return ""
    diffs = [abs(x - y) for x, y in zip(a, b)]
    scale = max(abs(x) for x in a) or 1.0
    corr = math.nan
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va > 0 and vb > 0:
        corr = sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(va * vb)
    return note(
        "This model has post-attention norms, so each head is pushed through the post-norm "
        "with its scale frozen at the cached value (exact). TransformerLens's naive "
        "<code>stack_head_results</code> (z·W_O before the post-norm) differs by up to "
        f"{esc(fmt(max(diffs)))} ({esc(fmt_pct(max(diffs) / scale))} of the largest head), "
        f"mean |Δ| {esc(fmt(sum(diffs) / len(diffs)))}, correlation r = {esc(fmt(corr))}. "
        "The naive numbers are shown below for comparison only."
    )


def section_head_attribution(results: Results, figures: Figures,
                             findings: Sequence[Finding]) -> str:
    """Per-head direct logit attribution (and the naive comparison if present)."""
    if "head_attribution" not in figures:
        return missing("head attribution")
    detail = results.get("head_attribution_detail") or {}
    bias = [float(v) for v in detail.get("attn_bias") or [] if finite(v)]
    bias_txt = (f" The attention output bias adds {esc(fmt(sum(bias)))} in total across layers "
                "(not shown per head)." if any(abs(v) > 0 for v in bias) else "")
    return (
        note("Each query head's direct contribution to the logit difference (mean over prompts; "
             "hover for stderr and the 95% bootstrap CI). Blue pushes towards the correct answer, red against it; the "
             "colour scale is centred at 0. Per layer, the heads plus the attention bias sum "
             "to that layer's attention bar above." + bias_txt)
        + figure_html(figures, "head_attribution")
        + _naive_comparison(results)
        + figure_html(figures, "head_attribution_naive")
    )


def section_attention(results: Results, figures: Figures,
                      findings: Sequence[Finding]) -> str:
    """Interactive attention patterns of the top heads."""
    viewer = attention_viewer_html(results)
    if not viewer:
        return missing("attention patterns")
    att = results["attention"]
    return (
        note(f"Attention patterns of the {len(att['heads'])} heads with the largest "
             f"|attribution|, on prompt {esc(att.get('prompt_index', 0))}. Pick a head, then "
             "hover a token: it becomes the query, and every earlier token's background shows "
             "how much the query attends to it (opacity = attention weight).")
        + viewer
    )


def section_head_ablation(results: Results, figures: Figures,
                          findings: Sequence[Finding]) -> str:
    """Zero- and mean-ablation heatmaps for logit difference and loss."""
    ab = results.get("head_ablation")
    if not ab:
        return missing("head ablation")
    ids = ["head_ablation_zero_logit_diff", "head_ablation_zero_loss",
           "head_ablation_mean_logit_diff", "head_ablation_mean_loss"]
    return (
        note("Each cell is the metric after ablating that one head (at every position) minus "
             f"the unablated baseline: logit difference {esc(fmt(ab.get('baseline_logit_diff')))}, "
             f"loss {esc(fmt(ab.get('baseline_loss')))} nats (−log p(correct)). Colour scales "
             "are centred at 0 = no change. Red on the logit-difference maps / blue on the loss "
             "maps means the head was helping. Zero-ablation sets the head's output to 0; "
             "mean-ablation replaces it by its mean over the task's prompts.")
        + grid(figures, ids)
    )


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
    return text


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
             "templates are pooled)." + base + esc(_pairs_sentence(rp)))  # type: ignore[arg-type]
        + figure_html(figures, "resid_patching")
        + figure_html(figures, "attn_patching")
        + figure_html(figures, "mlp_patching")
        + figure_html(figures, "head_patching")
    )


def section_unembed_bias(results: Results, figures: Figures,
                         findings: Sequence[Finding]) -> str:
    """The unembedding bias of the first prompt's answers."""
    ub = results.get("unembed_bias")
    if not ub:
        return missing("unembedding bias")
    if ub.get("present"):
        txt = (f"b_U[{chip(ub.get('correct', '?'))}] = {esc(fmt(ub.get('b_U_correct')))}, "
               f"b_U[{chip(ub.get('incorrect', '?'))}] = {esc(fmt(ub.get('b_U_incorrect')))}: "
               f"difference {esc(fmt(ub.get('difference'), signed=True))}, i.e. the bias alone "
               f"gives odds {esc(fmt_ratio(ub.get('prob_ratio')))} for the correct answer.")
    else:
        txt = "The model has no unembedding bias."
    extra = f" {esc(ub['note'])}" if ub.get("note") else ""
    pairs = ub.get("pairs") or []
    pair_table = ""
    if ub.get("present") and len(pairs) > 1:
        rows = [[chip(p.get("correct", "?")), chip(p.get("incorrect", "?")), esc(fmt(p.get("b_U_correct"))),
                 esc(fmt(p.get("b_U_incorrect"))), esc(fmt(p.get("difference"), signed=True)),
                 esc(p.get("n_prompts", "?"))] for p in pairs]
        pair_table = ("<p>Every answer pair of the task:</p>" + table(
            ["correct", "incorrect", "b_U correct", "b_U incorrect (mean)", "difference", "prompts"], rows, "kv"))
    return (f"<p>{txt}{extra}</p>"
            + pair_table
            + note("A constant offset per vocabulary entry, independent of the prompt; it is "
                   "part of the DLA check's bias term.")
            + figure_html(figures, "unembed_bias"))


def section_robustness(results: Results, figures: Figures,
                       findings: Sequence[Finding]) -> str:
    """Per-template logit difference and top heads; per-subject logit difference."""
    rob = results.get("robustness")
    if not rob:
        return note("No robustness analysis: the task's prompts come from fewer than two templates.")
    kinds = sorted({k for r in rob["templates"] for k in r["top_ablation"]}, key=lambda k: k != "zero")

    def ci(r: Mapping[str, Any]) -> str:
        return esc(f"{fmt(r['mean'])} [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]")

    rows = [[esc(r["index"]), f'<span class="prompt">{esc(r["template"])}</span>', esc(r["n"]), ci(r),
             esc(f"{head_name(*r['top_dla']['head'])} ({fmt(r['top_dla']['value'], signed=True)})"),
             *[esc(f"{head_name(*r['top_ablation'][k]['head'])} ({fmt(r['top_ablation'][k]['value'], signed=True)})")
               if k in r["top_ablation"] else "" for k in kinds]] for r in rob["templates"]]
    header = ["#", "template", "prompts", "logit diff [95% CI]", "top DLA head",
              *[f"top {k}-ablation head (Δ)" for k in kinds]]
    srows = [[esc(s["subject"]), esc(s["subject_class"]), esc(s["n"]), ci(s)] for s in rob["subjects"]]
    return (
        note("The logit difference and the key heads, template by template: the mean over each template's "
             "prompts with its 95% bootstrap CI, the head with the largest |mean| direct logit attribution "
             "on those prompts, and the head whose ablation lowers their mean logit difference most "
             "(mean of the per-prompt changes). Explicit prompts are not counted.")
        + figure_html(figures, "robustness")
        + '<div class="scroll">' + table(header, rows, "prompts") + "</div>"
        + "<details><summary>Per subject</summary>"
        + table(["subject", "class", "prompts", "logit diff [95% CI]"], srows, "kv") + "</details>"
    )


SECTIONS = (
    ("findings", "Key findings", section_findings),
    ("setup", "Setup", section_setup),
    ("predictions", "Predictions", section_predictions),
    ("logit-diff", "Logit difference", section_logit_diff),
    ("dla-check", "DLA reconstruction check", section_dla_check),
    ("logit-lens", "Logit lens", section_logit_lens),
    ("layer-attribution", "Layer attribution", section_layer_attribution),
    ("head-attribution", "Head attribution", section_head_attribution),
    ("attention", "Attention patterns", section_attention),
    ("head-ablation", "Head ablation", section_head_ablation),
    ("patching", "Activation patching", section_patching),
    *CIRCUIT_SECTIONS,  # each left out when its results key is absent
    ("robustness", "Robustness across templates", section_robustness),
    ("unembed-bias", "Unembedding bias", section_unembed_bias),
)
