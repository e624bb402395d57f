"""The report's setup section: model, task, prompts with their tokenisation, answers, patching pairs and the
run's configuration."""

from __future__ import annotations

import json
from collections.abc import Sequence

from logitlab.results import Results

from ..markup import Figures, chip, chips, esc, missing, table
from ..registry import Finding, Section, register


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


SECTION = register(Section(name="setup", title="Setup", order=1, render=section_setup,
                           keys=("model", "task", "config")))
