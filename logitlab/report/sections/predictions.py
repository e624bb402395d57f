"""The report's predictions section: the model's top next tokens after each example prompt."""

from __future__ import annotations

import math
from collections.abc import Sequence

from logitlab.results import Results

from .._util import finite, fmt
from ..markup import Figures, chip, chips, esc, missing, note, table
from ..registry import Finding, Section, register


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


SECTION = register(Section(name="predictions", title="Predictions", render=section_predictions,
                           analysis="predictions", keys=("predictions",)))
