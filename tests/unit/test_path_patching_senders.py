"""Path patching's senders (logitlab/analyses/path_patching.py::top_senders): ranked by exact numbers only."""

from __future__ import annotations

import torch

from logitlab.analyses.ablation import AblationResult
from logitlab.analyses.heads import HeadAttributionResult
from logitlab.analyses.path_patching import top_senders
from logitlab.screen import select


def test_senders_rank_exactly_ablated_heads_only() -> None:
    """A screened-out head whose (estimated) ablation value is the largest is not made a sender for it; the exact
    heads are ranked as without a screen; the DLA list is unchanged."""
    g = torch.Generator().manual_seed(0)
    L, H, B = 3, 4, 6
    base = torch.randn(B, generator=g)
    ld = base + 0.1 * torch.randn(L, H, B, generator=g)
    ld[2, 3] -= 5.0  # the largest |effect|, but only an estimate: screened out below
    ld[1, 0] -= 2.0  # the largest exact one
    ld[0, 2] += 1.5  # the second largest exact one
    estimate = (ld - base).mean(-1).flatten().clone()
    estimate[2 * H + 3] = 0.0  # ranked low by the screen, so it is not ablated exactly
    screen = select(estimate, top=3, sample=2)
    assert not bool(screen.exact[2 * H + 3]) and bool(screen.exact[1 * H + 0]) and bool(screen.exact[0 * H + 2])
    screened = AblationResult("zero", ld, ld.clone(), base, base.clone(), screen=screen, loss_screen=screen)
    dla = torch.zeros(L, H, B)
    dla[0, 1], dla[2, 0] = 3.0, -2.0  # DLA's top two: neither is an ablation top head
    heads = HeadAttributionResult(dla, torch.zeros(L, B), None)
    senders = top_senders(heads, screened, 4)
    assert (2, 3) not in senders, f"an estimated ablation value chose a sender: {senders}"
    assert senders == [(1, 0), (0, 1), (0, 2), (2, 0)], senders
    # Every head exact (no screen): the same ld ranks (2, 3) first.
    full = AblationResult("zero", ld, ld.clone(), base, base.clone())
    assert top_senders(heads, full, 4) == [(2, 3), (0, 1), (1, 0), (2, 0)]
    assert top_senders(heads, None, 2) == [(0, 1), (2, 0)]
