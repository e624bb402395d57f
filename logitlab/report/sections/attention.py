"""The report's attention section: the interactive attention patterns of the top heads."""

from __future__ import annotations

from collections.abc import Sequence

from logitlab.results import Results

from ..attention import attention_viewer_html
from ..markup import Figures, esc, missing, note
from ..registry import Finding, Section, register


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


SECTION = register(Section(name="attention", title="Attention patterns", render=section_attention,
                           analysis="attention", keys=("attention",)))
