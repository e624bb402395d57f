"""Head ablation: replace one query head's output and measure the logit difference and the answer loss.

Zero-ablation sets the head's ``hook_z`` output to 0 at every position; mean-ablation sets it to its mean over
the task's prompts at each position, counted back from each prompt's own end: on a task whose prompts differ
in length, a prompt's final position gets the mean of the prompts' final positions (an absolute-position mean
would give it other prompts' earlier tokens). Same-length tasks: the plain mean at each position. The edits
themselves are built in :mod:`logitlab.interventions`. Heads
are ablated per *query* head at ``hook_z``: on grouped-KV models ``hook_v`` is shared by several query
heads, so zeroing it would ablate all of them. The loss is −log p(correct) at the prompt's final position,
i.e. what the model pays for the answer token when reading prompt + answer; one pass serves both metrics.

Effects are paired: each prompt's ablated value minus that prompt's own baseline, summarised by the mean, the
paired standard error and a seeded 95% bootstrap CI over prompts (:mod:`logitlab.stats`); the head that hurts
most is named alone only when the CI of its paired difference to every other head excludes 0.

A result may be *screened* (:mod:`logitlab.analyses.ablation_screen`): only some heads are ablated exactly, the
others carry a first-order estimate; ``screen`` then says which, and every finding (``top_drop``) reads exact
heads only.

Invariant (tested): ablating nothing reproduces the baseline; every head equals one hooked TransformerLens
forward per head; ablating a subset of the heads (``heads=``) gives those heads' values of the full sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from logitlab.analyses._common import CleanRun, mean_stderr
from logitlab.interventions import ablation_replacement, head_entry, head_mean_values, shared_prefix
from logitlab.model.backend import HOOKED_LOOPS, SWEEP, has, require
from logitlab.results.ablation import AblationScores
from logitlab.screen import Screen, methods
from logitlab.stats import paired
from logitlab.sweep import SweepSettings, run_sweep

__all__ = ["AblationResult", "head_ablation"]


@dataclass(frozen=True)
class AblationResult:
    """Per-prompt logit difference and loss with each head ablated.

    ``screen`` (logit difference) and ``loss_screen`` (the same cells, measured on the loss) are set when only
    some heads were ablated exactly: the other cells hold baseline + first-order estimate
    (:mod:`logitlab.analyses.ablation_screen`). None: every head exact.
    """

    kind: Literal["zero", "mean"]
    logit_diff: Float[Tensor, "layer head batch"]
    loss: Float[Tensor, "layer head batch"]
    baseline_logit_diff: Float[Tensor, " batch"]
    baseline_loss: Float[Tensor, " batch"]
    screen: Screen | None = None
    loss_screen: Screen | None = None

    @property
    def exact(self) -> Bool[Tensor, "layer head"]:
        """Which heads were ablated exactly (all of them without a screen)."""
        L, H = self.logit_diff.shape[:2]
        if self.screen is None:
            return torch.ones(L, H, dtype=torch.bool)
        return self.screen.exact.view(L, H)

    def to_dict(self) -> AblationScores:
        ld, ld_se = mean_stderr(self.logit_diff)
        lo, lo_se = mean_stderr(self.loss)
        out: dict[str, Any] = {"logit_diff": ld.tolist(), "loss": lo.tolist(), "logit_diff_stderr": ld_se.tolist(),
                               "loss_stderr": lo_se.tolist()}
        # Paired effects: each prompt's change against its own baseline.
        for name, values, base in (("logit_diff", self.logit_diff, self.baseline_logit_diff),
                                   ("loss", self.loss, self.baseline_loss)):
            delta = values - base  # (L, H, B)
            p = paired(delta)
            out[f"delta_{name}"], out[f"delta_{name}_stderr"] = p.mean.tolist(), p.stderr.tolist()
            out[f"delta_{name}_ci"], out[f"delta_{name}_per_prompt"] = p.ci.tolist(), delta.tolist()
        out["top_drop"] = self.top_drop()
        if self.screen is not None:
            L, H = self.logit_diff.shape[:2]
            out["method"] = methods(self.screen, (L, H))
            out["screen"] = _screen_dict(self.screen, self.loss_screen)
        return cast(AblationScores, out)

    def top_drop(self) -> dict[str, Any]:
        """The head whose ablation lowers the logit difference most, and the heads it is not separated from.

        Among the exact heads only (every head without a screen). A head is *tied* with the top one when the
        95% bootstrap CI of their paired difference (per prompt) includes 0: "the largest" is then not supported
        by the data. ``above_bound``: the top head's |delta| exceeds the screen's bound on the screened-out heads
        (always true without a screen, unless the delta is 0), so no screened-out head can be expected to be
        larger.
        """
        H = self.logit_diff.shape[1]
        index = self.exact.flatten().nonzero().flatten().tolist()  # the exact heads, as flat L·H indices
        delta = (self.logit_diff - self.baseline_logit_diff).flatten(0, 1)[index]  # (n_exact, B)
        mean = delta.mean(-1)
        top = int(mean.argmin())
        diff = paired(delta - delta[top])  # (n_exact,): ≥ 0 on average
        tied = [[index[i] // H, index[i] % H] for i in range(delta.shape[0])
                if i != top and float(diff.ci[i, 0]) <= 0.0]
        order = mean.argsort().tolist()
        runner = order[1] if len(order) > 1 else top
        p_top = paired(delta[top][None])
        bound = 0.0 if self.screen is None else self.screen.bound
        t, ru = index[top], index[runner]
        return {"layer": t // H, "head": t % H, "delta": float(mean[top]), "ci": p_top.ci[0].tolist(),
                "runner_up": [ru // H, ru % H], "difference": float(diff.mean[runner]),
                "difference_ci": diff.ci[runner].tolist(), "tied": tied,
                "above_bound": bound is not None and abs(float(mean[top])) > bound}

    def to_frame(self) -> Any:
        import pandas as pd
        L, H, _ = self.logit_diff.shape
        return pd.DataFrame({"ablation": self.kind, "layer": [l for l in range(L) for _ in range(H)],
                             "head": list(range(H)) * L, "logit_diff": self.logit_diff.mean(-1).flatten().numpy(),
                             "loss": self.loss.mean(-1).flatten().numpy(),
                             "method": [m for row in methods(self.screen, (L, H)) for m in row]})


def _screen_dict(screen: Screen, loss: Screen | None) -> dict[str, Any]:
    """The ``screen`` entry: the logit-difference screen, and the same cells' errors on the loss."""
    out = screen.to_dict()
    ld = loss.to_dict() if loss is not None else {}
    for key in ("left_out_max_estimate", "sample_max_error", "sample_max_exact", "max_error", "bound"):
        out[f"loss_{key}"] = ld.get(key)
    return out


def head_ablation(run: CleanRun, kind: Literal["zero", "mean"] = "zero",
                  settings: SweepSettings | None = None,
                  heads: Bool[Tensor, "layer head"] | None = None) -> AblationResult:
    """Ablate every query head in turn (batched), returning per-prompt logit difference and loss.

    On the staged backend every layer's heads run in one growing batch (:mod:`logitlab.sweep`); on the hooked
    fallback, one hooked forward per head. ``heads``: ablate only these heads (the others are NaN in the
    result, which is then raw material for :mod:`logitlab.analyses.ablation_screen`, not for ``to_dict``).
    """
    if heads is not None:
        return _some_heads(run, kind, settings or SweepSettings(), heads)
    settings = settings or SweepSettings()
    model, t, c = run.model, run.task, run.cache
    spec, r = model.spec, model.runner
    replacement = ablation_replacement(kind, c, t.final_pos)  # (L, H, T, dh) shared, or (L, H, B, T, dh)
    if not has(model, SWEEP):
        require(model, HOOKED_LOOPS, f"{kind}-ablation")
        from logitlab.reference import loop_head_ablation
        means = head_mean_values(c, t.final_pos) if kind == "mean" else None
        d, lo = loop_head_ablation(model, t.tokens, t.final_pos, t.correct_ids, t.incorrect_ids, means,
                                   progress=settings.progress)
        return AblationResult(kind, d, lo, run.logit_diff.cpu(), run.loss.cpu())
    H, B = spec.n_heads, t.n_prompts
    heads = torch.arange(H)
    # Shared positions (BOS) run once per head only when the replacement is the same for every prompt.
    prefix = shared_prefix(t.tokens, t.final_pos) if replacement.dim() == 4 else 0
    entries = [head_entry(layer, r, c, layer, heads, replacement[layer].to(r.dtype), t.final_pos, t.correct_ids,
                          t.incorrect_ids, prefix) for layer in range(spec.n_layers)]
    out = run_sweep(r, entries, True, settings)  # every layer's heads in one growing batch
    lds = torch.stack([out[layer].logit_diff.view(H, B) for layer in range(spec.n_layers)])
    losses = torch.stack([out[layer].loss.view(H, B) for layer in range(spec.n_layers)])  # type: ignore[union-attr]
    return AblationResult(kind, lds.cpu(), losses.cpu(), run.logit_diff.cpu(), run.loss.cpu())


def _some_heads(run: CleanRun, kind: Literal["zero", "mean"], settings: SweepSettings,
                heads: Bool[Tensor, "layer head"]) -> AblationResult:
    """:func:`head_ablation` of the heads in ``heads`` only; NaN elsewhere."""
    model, t, c = run.model, run.task, run.cache
    spec, r = model.spec, model.runner
    L, H, B = spec.n_layers, spec.n_heads, t.n_prompts
    heads = heads.cpu().bool()
    if heads.shape != (L, H):
        raise ValueError(f"heads mask {tuple(heads.shape)} is not (layers, heads) = {(L, H)}")
    lds = torch.full((L, H, B), float("nan"))
    losses = torch.full((L, H, B), float("nan"))
    if not has(model, SWEEP):  # the fallback has no partial runs: every head, the others then masked
        full = head_ablation(run, kind, settings)
        lds[heads], losses[heads] = full.logit_diff[heads].float(), full.loss[heads].float()
        return AblationResult(kind, lds, losses, run.logit_diff.cpu(), run.loss.cpu())
    replacement = ablation_replacement(kind, c, t.final_pos)  # (L, H, T, dh) shared, or (L, H, B, T, dh)
    prefix = shared_prefix(t.tokens, t.final_pos) if replacement.dim() == 4 else 0
    chosen = {layer: heads[layer].nonzero().flatten() for layer in range(L) if bool(heads[layer].any())}
    # replacement[layer] is indexed by head: keep the chosen heads' rows, in the order head_entry sweeps them.
    entries = [head_entry(layer, r, c, layer, idx, replacement[layer][idx.to(replacement.device)].to(r.dtype),
                          t.final_pos, t.correct_ids, t.incorrect_ids, prefix) for layer, idx in chosen.items()]
    out = run_sweep(r, entries, True, settings) if entries else {}
    for layer, idx in chosen.items():
        lds[layer, idx] = out[layer].logit_diff.view(len(idx), B).float().cpu()
        losses[layer, idx] = out[layer].loss.view(len(idx), B).float().cpu()  # type: ignore[union-attr]
    return AblationResult(kind, lds, losses, run.logit_diff.cpu(), run.loss.cpu())
