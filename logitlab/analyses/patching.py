"""Activation patching over many clean/corrupted pairs, per pair normalised, with paired uncertainty.

Method: run the corrupted prompt, put one activation of the clean prompt in its place and score the clean
prompt's answers (logit difference correct − mean incorrect at the final position). Patched activations:
``resid_pre`` per (layer, position); each layer's attention output (after any post-attention norm) and MLP
output per (layer, position); each head's ``hook_z`` output at every position. Each pair's value is
normalised by *its own* gap, (patched − corrupted) / (clean − corrupted): 0 = the patch restores nothing, 1 =
it restores the clean behaviour. The edits are built in :mod:`logitlab.interventions`; one sweep per set of
pairs of one token length runs every patch of every pair (results keyed ``(what, layer[, position])``).

Pairs come from two places:

* **reference pairs**: the task file's explicit ``patching:`` list (the built-in ``pronouns`` task: Mary → John);
* **generated pairs** (:func:`logitlab.task.generated_pairs`): within each template, every subject against every
  subject of another class whose prompt has the same token length, at most
  :data:`~logitlab.task.MAX_PAIRS_PER_TEMPLATE` per template; one group per (template, token length).

Gap threshold: a pair whose |clean − corrupted| is below :data:`MIN_GAP` (1 logit) is left out of every
normalised number and counted (``n_excluded``): dividing by a gap of 0.05 multiplies the noise by 20.
Summaries over the used pairs (:func:`logitlab.stats.paired`): mean, standard error and a seeded 95% bootstrap CI.

Pooling across templates: a group's positions are labelled by role, the subject's tokens as ``{name}`` and the
other tokens as themselves (``<bos>``, `` is``, …). When every group has the same role sequence, the groups pool
position by position. Otherwise they pool on the positions all groups share at both ends: from the start while
the roles agree (``<bos>``, ``{name}``, …) and from the end while they agree (final, final − 1, …; the final
position, where the answer is read, is always kept, labelled ``[final]`` when its tokens differ). Heads pool
over every pair.

Invariants (tested): patching the whole residual stream at a layer gives 1 for every pair, patching nothing 0;
every pair's entry equals one hooked TransformerLens forward per patch; pairs below the gap are excluded and
counted.

Example:
    >>> res = activation_patching(model, tokenize_task(load_task("pronouns-large"), model.tokenizer))
    >>> res.pooled.resid.ci[:, 1]             # (layer, 2): CI at the subject position
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses.pairset import MIN_GAP, WHATS, PairSet, PatchingSummary, pool_positions, summarise
from logitlab.errors import LogitlabError
from logitlab.interventions import head_entry, position_entries
from logitlab.model.backend import HOOKED_LOOPS, SWEEP, has, require
from logitlab.model.load import Model
from logitlab.model.readout import CleanCache
from logitlab.registry import setting
from logitlab.results.patching import PatchingSections
from logitlab.sweep import SweepSettings, run_sweep
from logitlab.task import MAX_PAIRS_PER_TEMPLATE, TokenizedTask, generated_pairs

__all__ = ["PatchingSettings", "MIN_GAP", "PairSet", "PatchingSummary", "PatchingResult", "activation_patching", "patching_items",
           "pool_positions"]


@dataclass(frozen=True)
class PatchingSettings:
    """Which clean/corrupted pairs activation patching (and attribution patching) runs on."""

    patching_pairs: int = setting(MAX_PAIRS_PER_TEMPLATE,
                                  "patching pairs generated per template (0: the task's explicit pairs only)",
                                  flag="--patching-pairs", commands=("run", "circuit"),
                                  help="Patching pairs generated per template (each costs as much as the task's "
                                       "own pair; 0: the task's explicit pairs only).")

    patching_target: float = setting(0.1, "95% CI half-width (in units of each pair's gap) that generated pairs are "
                                          "added until the pooled residual-stream cells reach (0: use every pair)",
                                     flag="--patching-target", commands=("run", "circuit"),
                                     help="Add generated pairs (in a fixed order) until every pooled residual-stream "
                                          "cell's 95% CI half-width is below this, in units of the gap, or "
                                          "--patching-pairs per template are used (0: use them all).")

    def __post_init__(self) -> None:
        if self.patching_pairs < 0:
            raise LogitlabError("patching_pairs must be ≥ 0", "0 patches the task's explicit pairs only")
        if not (self.patching_target >= 0 and math.isfinite(self.patching_target)):
            raise LogitlabError("patching_target must be ≥ 0", "0 uses every generated pair")


@dataclass(frozen=True)
class PatchingResult:
    """Raw per-pair sets and their summaries.

    ``reference``: the task's explicit pairs (None without); ``groups``: the generated pairs, one set per
    (template, token length); ``per_template`` summarises each group with a used pair, ``pooled`` all groups
    (None without groups; no numbers without a used pair); ``reference_summary`` the reference set (None
    without reference pairs; no numbers if none of them is used).
    """

    reference: PairSet | None
    groups: tuple[PairSet, ...]
    reference_summary: PatchingSummary | None
    per_template: tuple[PatchingSummary, ...]
    pooled: PatchingSummary | None

    # The reference pairs as one mean (the view of earlier versions; formation and benchmarks read it):
    # raw patched logit differences averaged over the pairs, normalised by the mean gap.

    def _ref(self) -> PairSet:
        if self.reference is None:
            raise LogitlabError("this task has no explicit patching pairs", "read .pooled and .per_template")
        return self.reference

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._ref().tokens

    @property
    def clean_logit_diff(self) -> float:
        return float(self._ref().clean.mean())

    @property
    def corrupted_logit_diff(self) -> float:
        return float(self._ref().corrupted.mean())

    @property
    def resid(self) -> Float[Tensor, "layer pos"]:
        return self._ref().resid.mean(-1)

    @property
    def attn(self) -> Float[Tensor, "layer pos"]:
        return self._ref().attn.mean(-1)

    @property
    def mlp(self) -> Float[Tensor, "layer pos"]:
        return self._ref().mlp.mean(-1)

    @property
    def heads(self) -> Float[Tensor, "layer head"]:
        return self._ref().heads.mean(-1)

    def normalise(self, x: Tensor) -> Tensor:
        """``(x − mean corrupted) / (mean clean − mean corrupted)`` over the reference pairs."""
        return (x - self.corrupted_logit_diff) / (self.clean_logit_diff - self.corrupted_logit_diff)

    @property
    def main(self) -> PatchingSummary | None:
        """What ``values`` holds in the results: the reference pairs if one of them is used, else the pooled
        groups if one of them is, else whichever set exists (then without numbers); None without pairs."""
        ref, pooled = self.reference_summary, self.pooled
        if ref is not None and (ref.n_pairs or pooled is None or not pooled.n_pairs):
            return ref
        return pooled

    def to_dict(self) -> PatchingSections:
        """The four patching sections of ``results.json`` (empty without pairs)."""
        main = self.main
        if main is None:
            return {}
        source = "reference" if main is self.reference_summary else "pooled"
        out = {}
        for what, key in zip(WHATS, ("resid_patching", "attn_patching", "mlp_patching", "head_patching")):
            d = main.to_dict(what)
            pooled = self.pooled.to_dict(what) if self.pooled is not None and source == "reference" else None
            per = [{"template": t.label, **t.to_dict(what)} for t in self.per_template]
            if pooled is not None:
                pooled = {"template": None, **pooled}
            out[key] = {**d, "pairs": source, "pooled": pooled, "per_template": per}
        return cast(PatchingSections, out)


def patching_items(model: Model, tt: TokenizedTask, generated: bool = True,
                   max_pairs: int = MAX_PAIRS_PER_TEMPLATE) -> int:
    """How many sweep items :func:`activation_patching` runs (for a progress bar)."""
    spec = model.spec
    sets = [tt.clean_tokens] if tt.clean_tokens is not None else []
    if generated and max_pairs > 0:
        sets += [g.clean_tokens for g in generated_pairs(tt, max_pairs)]
    return sum(spec.n_layers * n * (3 * T + spec.n_heads) for n, T in (s.shape for s in sets))


def activation_patching(model: Model, task: TokenizedTask, settings: SweepSettings | None = None,
                        generated: bool = True, min_gap: float = MIN_GAP,
                        max_pairs: int = MAX_PAIRS_PER_TEMPLATE) -> PatchingResult:
    """Patch clean activations into the corrupted run for the reference pairs and, if ``generated``, the
    pairs built from the task's templates (at most ``max_pairs`` per template), one (layer, position) or
    (layer, head) at a time. Each generated pair costs as much as a reference pair.

    Pairs with |clean − corrupted| < ``min_gap`` are excluded from the normalised numbers and counted.
    """
    settings = settings or SweepSettings()
    ref = None
    if task.clean_tokens is not None:
        assert task.corrupted_tokens is not None and task.pair_correct_ids is not None
        assert task.pair_incorrect_ids is not None
        tokens = tuple(model.to_str_tokens(task.clean_tokens[0]))
        ref = _patch_set(model, "reference", -1, tokens, tokens, task.clean_tokens, task.corrupted_tokens,
                         task.pair_correct_ids, task.pair_incorrect_ids, settings, min_gap)
    groups = []
    for g in generated_pairs(task, max_pairs) if generated and max_pairs > 0 else ():
        groups.append(_patch_set(model, g.template_text, g.template, tuple(model.to_str_tokens(g.clean_tokens[0])),
                                 g.roles, g.clean_tokens, g.corrupted_tokens, g.correct_ids, g.incorrect_ids,
                                 settings, min_gap))
    ref_summary = summarise("reference", ref.tokens, [ref], None) if ref is not None else None
    live = [g for g in groups if g.n_used]
    per_template = tuple(summarise(g.label, g.roles, [g], None) for g in live)
    pooled = None
    if groups:
        pos = pool_positions([g.roles for g in live or groups])
        pooled = summarise("pooled", tuple(lab for lab, _ in pos), live or list(groups), [p for _, p in pos])
        # Pairs of groups without a used pair count as excluded in the pooled set.
        dead = sum(g.n for g in groups if not g.n_used) if live else 0
        pooled = PatchingSummary(**{**pooled.__dict__, "n_excluded": pooled.n_excluded + dead})
    return PatchingResult(ref, tuple(groups), ref_summary, per_template, pooled)


def _score(model: Model, cache: CleanCache, T: int, correct: Tensor, incorrect: Tensor) -> Tensor:
    final = cache.resid_final[:, T - 1]
    d, _ = model.runner.answer_metrics(final, correct, incorrect, with_loss=False)
    return d.float()


def _patch_set(model: Model, label: str, template: int, tokens: tuple[str, ...], roles: tuple[str, ...],
               clean_tokens: Tensor, corrupted_tokens: Tensor, correct: Tensor, incorrect: Tensor,
               settings: SweepSettings, min_gap: float) -> PairSet:
    """Every patch of every pair of one token length: one sweep (or, on the fallback, hooked loops)."""
    r, spec = model.runner, model.spec
    dev = r.device
    clean_t, corr_t = clean_tokens.to(dev), corrupted_tokens.to(dev)
    correct, incorrect = correct.to(dev), incorrect.to(dev)
    n_pairs, T = clean_t.shape
    with torch.no_grad():
        clean, corr = r.run_with_cache(clean_t), r.run_with_cache(corr_t)
    clean_ld = _score(model, clean, T, correct, incorrect).cpu()
    corr_ld = _score(model, corr, T, correct, incorrect).cpu()
    common = dict(label=label, template=template, tokens=tokens, roles=roles, clean=clean_ld, corrupted=corr_ld,
                  min_gap=min_gap)
    if not has(model, SWEEP):
        require(model, HOOKED_LOOPS, "activation patching")
        from logitlab.reference import loop_patching
        args = (model, clean_t, corr_t, correct, incorrect)
        loops = [loop_patching(*args, what, progress=settings.progress, per_pair=True)
                 for what in ("resid_pre", "attn_out", "mlp_out", "z")]
        return PairSet(**common, resid=loops[0], attn=loops[1], mlp=loops[2], heads=loops[3])
    H, L = spec.n_heads, spec.n_layers
    fp = torch.full((n_pairs,), T - 1, device=dev)  # every pair ends at T-1
    # Patching position p leaves positions < p as in the corrupted run: those items skip them, reading their
    # keys and values from the corrupted run.
    corr_kv = [r.keys_values(layer, corr.resid_pre[layer]) for layer in range(L)]
    heads = torch.arange(H, device=dev)
    entries = []
    for layer in range(L):
        after_attn = r.after_attention(layer, corr.resid_pre[layer], corr.attn_out[layer], corr.mlp_out[layer])
        post = corr.resid_mid[layer] + corr.mlp_out[layer]
        for what, stage, base, delta in (
                ("resid_pre", "pre", corr.resid_pre[layer], clean.resid_pre[layer] - corr.resid_pre[layer]),
                ("attn_out", r.attn_entry_stage, after_attn, clean.attn_out[layer] - corr.attn_out[layer]),
                ("mlp_out", "post", post, clean.mlp_out[layer] - corr.mlp_out[layer])):
            # A position where no pair's clean and corrupted activations differ (those before the subject, such
            # as BOS) cannot change anything: its patched score is the corrupted run's, and it is not swept.
            same = (delta == 0).flatten(2).all(-1).all(0).tolist()  # (T,)
            entries += [e for e, skip in zip(position_entries((what, layer), r, layer, stage, base, delta, corr_kv,
                                                              fp, correct, incorrect), same) if not skip]
        # Each head's z from the clean run, per pair, into the corrupted run.
        clean_z = clean.z[layer][:, :, heads].permute(2, 0, 1, 3)  # (H, pair, T, dh)
        entries.append(head_entry(("z", layer), r, corr, layer, heads, clean_z, fp, correct, incorrect))
    out = run_sweep(r, entries, False, settings)  # all patches of all pairs in a few growing batches
    if settings.progress is not None:  # the skipped items count as done
        skipped = n_pairs * (L * (3 * T + H)) - sum(e.n for e in entries)
        if skipped:
            settings.progress(skipped)
    unchanged = corr_ld.to(dev)
    per_pos = lambda what: torch.stack([torch.stack([out[(what, l, p)].logit_diff if (what, l, p) in out  # noqa: E731
                                                     else unchanged for p in range(T)])
                                        for l in range(L)]).cpu()  # (L, T, pair)
    head = torch.stack([out[("z", l)].logit_diff.view(H, n_pairs) for l in range(L)]).cpu()  # (L, H, pair)
    return PairSet(**common, resid=per_pos("resid_pre"), attn=per_pos("attn_out"), mlp=per_pos("mlp_out"),
                   heads=head)
