"""Screened head ablation: estimate every head's ablation effect to first order, ablate exactly only some.

Exact head ablation (:func:`logitlab.analyses.ablation.head_ablation`) runs one partial forward pass per head and
prompt. Most heads do little, so the default run screens them first (:mod:`logitlab.screen`):

1. **Estimate** every head's effect on every prompt, for the logit difference and for the loss, from one forward
   and two backward passes of the clean run (shared by zero- and mean-ablation, :func:`screened_ablations`) (attribution patching's linearisation, Nanda 2023, applied to
   ablation)::

       Δm[l, h, b] ≈ Σ_pos (r − z)[l, b, pos, h, :] · ∂m_b/∂z[l, b, pos, h, :]

   with ``z`` the head's clean output and ``r`` what ablation puts in its place (0, or the mean of
   :func:`logitlab.interventions.ablation_replacement`). Positions after a prompt's end are left out (they never
   reach its final position). Gradients and products are in at least float32.
2. **Select** the top ``screen_top`` heads by |mean Δ logit-difference estimate|, together with the top
   ``screen_top`` by |mean Δ loss estimate|, plus a seeded random ``screen_sample`` of the other heads.
3. **Ablate exactly** those heads (``head_ablation(..., heads=)``). Every other head holds baseline + estimate,
   per prompt, and is labelled "estimated".
4. **Measure**: the sample's exact values against their estimates give the error of the estimate where it was
   not selected for; :attr:`logitlab.screen.Screen.bound` (largest |estimate| left out + the sample's largest
   error, at least the sample's largest |exact| value) is how large a screened-out head's mean effect can be
   expected to be. ``AblationResult.screen`` is measured on the logit difference, ``loss_screen`` on the loss
   (the same heads).

Findings read exact heads only: ``top_drop`` is chosen among them and says whether it is larger than the bound.
``ScreenSettings.exact`` (``--exact``), a ``screen_top`` covering every head, or a backend without gradients
ablate every head exactly (no screen).

Invariants (tested): exact heads equal the full sweep's values; estimated heads equal baseline + estimate; as
α → 0, exactly replacing z by z + α (r − z) changes each metric by α × the estimate (float64, every tiny
architecture, zero and mean).

Example:
    >>> res = screened_ablation(run, "zero", ScreenSettings(screen_top=8, screen_sample=8))
    >>> res.screen.bound, res.exact.sum()          # what the screen leaves out; how many heads are exact
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun
from logitlab.analyses.ablation import AblationResult, head_ablation
from logitlab.errors import LogitlabError
from logitlab.interventions import ablation_replacement
from logitlab.model.backend import GRAD, has
from logitlab.model.readout import wide
from logitlab.model.runner import Runner
from logitlab.screen import ScreenSettings, select
from logitlab.sweep import SweepSettings

__all__ = ["AblationEstimate", "MetricGrads", "ablation_estimates", "metric_grads", "screened_ablation",
           "screened_ablations"]

log = logging.getLogger(__name__)

#: Rows of the loss's log-partition function differentiated at once (each holds a row × vocabulary of logits).
_LOSS_ROWS = 16
#: Prompts per forward + backward pass of the estimates (bounds the autograd graph held at once).
_GRAD_ROWS = 64
#: Vocabulary columns per block of the log-partition function (bounds the float32 copy of W_U's columns).
_LOSS_COLS = 32768


@dataclass(frozen=True)
class AblationEstimate:
    """First-order estimates of ablating each head: the change of each metric per prompt, in float32 or wider."""

    kind: Literal["zero", "mean"]
    logit_diff: Float[Tensor, "layer head batch"]  # estimated Δ logit difference
    loss: Float[Tensor, "layer head batch"]  # estimated Δ loss


def _loss(r: Runner, final: Tensor, correct: Tensor) -> Tensor:
    """−log p(correct) of final residual streams (n, D), differentiable, in at least float32: the model's own
    logits (after any soft-cap), the vocabulary in blocks."""
    normed = wide(r.final_norm(final)[0])  # (n, D)
    W_U, b_U = r.w.W_U, r.w.b_U  # (D, vocab), (vocab,)
    lc = r.softcap((normed * wide(W_U[:, correct].T)).sum(-1) + wide(b_U[correct]))
    lse = None
    for c in range(0, W_U.shape[1], _LOSS_COLS):
        part = r.softcap(normed @ wide(W_U[:, c:c + _LOSS_COLS]) + wide(b_U[c:c + _LOSS_COLS]))  # (n, cols)
        block = torch.logsumexp(part, -1)
        lse = block if lse is None else torch.logaddexp(lse, block)
    assert lse is not None
    return lse - lc


def _metric_grads(r: Runner, tokens: Tensor, final_pos: Tensor, correct: Tensor, incorrect: Tensor,
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each prompt's logit difference and loss, and their gradients with respect to every layer's ``z``.

    One forward pass of the staged block (as :meth:`Runner.grad_run`) and one backward pass per metric. The
    metrics' gradients at the final residual stream are taken first (the loss in blocks of rows, so no
    prompts × vocabulary graph is held at once), then pulled back through the body. Returns
    ``(diff (B,), loss (B,), ∂diff/∂z, ∂loss/∂z)``, the gradients (layer, B, T, H, dh).
    """
    dev = r.device
    tokens, final_pos, correct, incorrect = (x.to(dev) for x in (tokens, final_pos, correct, incorrect))
    B = tokens.shape[0]
    with torch.enable_grad():
        rec: list[dict[str, Tensor | None]] = []
        # The weights need no gradient; the embedding, a leaf, carries autograd through every block.
        x = r.embed_sum(tokens).detach().requires_grad_(True)
        final = r.run_from(0, "pre", x, record=rec)
        final = final[torch.arange(B, device=dev), final_pos]  # (B, D)
        f = final.detach().requires_grad_(True)
        diff, _ = r.answer_metrics(f, correct, incorrect, False)
        g_diff = torch.autograd.grad(diff.sum(), f)[0]  # rows do not interact: row b is ∂diff_b/∂final_b
        losses, g_loss = [], []
        for i in range(0, B, _LOSS_ROWS):
            fi = f[i:i + _LOSS_ROWS].detach().requires_grad_(True)
            li = _loss(r, fi, correct[i:i + _LOSS_ROWS])
            g_loss.append(torch.autograd.grad(li.sum(), fi)[0])
            losses.append(li.detach())
        zs = [rl["z"] for rl in rec]
        gz_diff = torch.autograd.grad(final, zs, grad_outputs=g_diff, retain_graph=True, allow_unused=True)
        gz_loss = torch.autograd.grad(final, zs, grad_outputs=torch.cat(g_loss), allow_unused=True)

    def stack(gs: tuple[Tensor | None, ...]) -> Tensor:
        return torch.stack([torch.zeros_like(z) if g is None else g for g, z in zip(gs, zs)])  # type: ignore[arg-type]

    return diff.detach(), torch.cat(losses), stack(gz_diff), stack(gz_loss)


@dataclass(frozen=True)
class MetricGrads:
    """Each prompt's ∂(logit difference)/∂z and ∂loss/∂z at the clean run, every layer: what every ablation kind's
    estimate needs (computed once for both kinds)."""

    logit_diff: Float[Tensor, "layer batch pos head d_head"]
    loss: Float[Tensor, "layer batch pos head d_head"]


def metric_grads(run: CleanRun) -> MetricGrads:
    """:class:`MetricGrads` of the clean run (one forward, two backward passes).

    Raises:
        LogitlabError: when the model's backend has no gradients.
    """
    model, t = run.model, run.task
    if not has(model, GRAD):
        raise LogitlabError(f"{model.spec.model_type}: screening ablation needs gradients through the forward "
                            "pass, which this backend lacks", "use --exact")
    # Prompts do not interact, so the passes run on chunks of prompts: the autograd graph of one chunk at a time.
    parts = [_metric_grads(model.runner, t.tokens[i:i + _GRAD_ROWS], t.final_pos[i:i + _GRAD_ROWS],
                           t.correct_ids[i:i + _GRAD_ROWS], t.incorrect_ids[i:i + _GRAD_ROWS])
             for i in range(0, t.tokens.shape[0], _GRAD_ROWS)]
    if len(parts) == 1:
        return MetricGrads(parts[0][2], parts[0][3])
    return MetricGrads(torch.cat([p[2] for p in parts], 1), torch.cat([p[3] for p in parts], 1))


def ablation_estimates(run: CleanRun, kind: Literal["zero", "mean"] = "zero",
                       grads: MetricGrads | None = None) -> AblationEstimate:
    """First-order estimate of ablating each head, per prompt, for the logit difference and the loss.

    Raises:
        LogitlabError: when the model's backend has no gradients, or the estimates are not finite.
    """
    t = run.task
    grads = grads or metric_grads(run)
    g_diff, g_loss = grads.logit_diff, grads.loss
    rep = ablation_replacement(kind, run.cache, t.final_pos)  # (L, H, T, dh) shared, or (L, H, B, T, dh)
    z = run.cache.z  # (L, B, T, H, dh)
    # What ablation puts in place of z, laid out like z: (L, 1 or B, T, H, dh).
    rep = rep.permute(0, 2, 1, 3)[:, None] if rep.dim() == 4 else rep.permute(0, 2, 3, 1, 4)
    # Differences in at least float32: in bfloat16 r − z would round before the product.
    dz = wide(rep) - wide(z)  # (L, B, T, H, dh)
    T = z.shape[2]
    real = (torch.arange(T, device=z.device)[None, :] <= t.final_pos.to(z.device)[:, None])  # (B, T)
    dz = dz * real[None, :, :, None, None].to(dz.dtype)  # positions after a prompt's end: not part of it
    est = {name: torch.einsum("lbphe,lbphe->lhb", dz, wide(g.to(dz.device))).cpu()  # (L, H, B)
           for name, g in (("logit_diff", g_diff), ("loss", g_loss))}
    bad = [name for name, e in est.items() if not bool(torch.isfinite(e).all())]
    if bad:
        raise LogitlabError(f"the first-order ablation estimates of {', '.join(bad)} are not finite",
                            "load the model in float32, or use --exact")
    return AblationEstimate(kind, est["logit_diff"], est["loss"])


def _screens(run: CleanRun, settings: ScreenSettings) -> bool:
    spec = run.model.spec
    if settings.exact or settings.screen_top >= spec.n_layers * spec.n_heads:
        return False
    if not has(run.model, GRAD):
        log.info("head ablation: every head exact (this backend has no gradients to screen with)")
        return False
    return True


def screened_ablations(run: CleanRun, kinds: tuple[Literal["zero", "mean"], ...] = ("zero", "mean"),
                       settings: ScreenSettings | None = None,
                       sweep: Callable[[str, int], SweepSettings] | None = None) -> dict[str, AblationResult]:
    """:func:`screened_ablation` of each kind, the gradients computed once; ``sweep(kind, n)``."""
    settings = settings or ScreenSettings()
    grads = metric_grads(run) if _screens(run, settings) else None
    return {kind: screened_ablation(run, kind, settings, None if sweep is None else
                                    (lambda n, k=kind: sweep(k, n)), grads)  # type: ignore[misc]
            for kind in kinds}


def screened_ablation(run: CleanRun, kind: Literal["zero", "mean"] = "zero",
                      settings: ScreenSettings | None = None,
                      sweep: Callable[[int], SweepSettings] | None = None,
                      grads: MetricGrads | None = None) -> AblationResult:
    """Head ablation with a first-order screen (module docstring); every head exact when screening is off.

    Args:
        run: the clean run.
        kind: zero- or mean-ablation.
        settings: what to compute exactly (default :class:`ScreenSettings`).
        sweep: the sweep settings for a sweep of ``n`` items (e.g. a progress bar of that total).
        grads: :func:`metric_grads` of ``run``, if already computed.
    """
    settings = settings or ScreenSettings()
    sweep = sweep or (lambda _n: SweepSettings())
    spec, B = run.model.spec, run.task.n_prompts
    L, H = spec.n_layers, spec.n_heads
    if not _screens(run, settings):
        return head_ablation(run, kind, sweep(L * H * B))
    if settings.screen_top == 0 and settings.screen_sample == 0:  # no head exact: no finding could be made
        raise LogitlabError("head ablation with --screen-top 0 and --screen-sample 0 would ablate no head exactly",
                            "give --screen-top or --screen-sample a positive value, or use --exact")
    est = ablation_estimates(run, kind, grads)
    ld_est, loss_est = est.logit_diff.mean(-1).flatten(), est.loss.mean(-1).flatten()  # (L·H,)
    by_loss = select(loss_est, settings.screen_top, 0).flagged
    screen = select(ld_est, settings.screen_top, settings.screen_sample, always=by_loss)
    exact = screen.exact.view(L, H)
    res = head_ablation(run, kind, sweep(int(exact.sum()) * B), heads=exact)
    # Screened-out heads: baseline + estimate, per prompt.
    ld = torch.where(exact[..., None], res.logit_diff, res.baseline_logit_diff.float() + est.logit_diff.float())
    lo = torch.where(exact[..., None], res.loss, res.baseline_loss.float() + est.loss.float())
    ld_exact = (ld - res.baseline_logit_diff.float()).mean(-1).flatten()  # (L·H,) exact where measured
    lo_exact = (lo - res.baseline_loss.float()).mean(-1).flatten()
    left = ~screen.exact
    loss_screen = replace(screen, left_out_max_estimate=float(loss_est[left].abs().max()) if bool(left.any()) else 0.0)
    return AblationResult(kind, ld, lo, res.baseline_logit_diff, res.baseline_loss,
                          screen=screen.measured(ld_est, ld_exact), loss_screen=loss_screen.measured(loss_est, lo_exact))
