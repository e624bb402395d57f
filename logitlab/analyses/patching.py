"""Activation patching, clean into corrupted, normalised to (patched − corrupted) / (clean − corrupted).

The metric is the logit difference of the *clean* prompt's answers, averaged over the task's patching
pairs. Patched activations: ``resid_pre`` per (layer, position); each layer's attention output (after any
post-attention norm) and MLP output per (layer, position); each head's ``hook_z`` output at every position.
0 means the patch restores nothing, 1 that it restores the clean behaviour. The edits are built in
:mod:`logitlab.interventions`; results come back from the sweep keyed ``(what, layer[, position])``.

Invariants (tested): patching the whole residual stream at a layer gives 1, patching nothing 0; every entry
equals one hooked TransformerLens forward per patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.interventions import head_entry, position_entries
from logitlab.model.backend import HOOKED_LOOPS, SWEEP, has, require
from logitlab.model.load import Model
from logitlab.model.readout import CleanCache
from logitlab.sweep import SweepSettings, run_sweep
from logitlab.task import TokenizedTask

__all__ = ["PatchingResult", "activation_patching"]


@dataclass(frozen=True)
class PatchingResult:
    tokens: tuple[str, ...]
    clean_logit_diff: float
    corrupted_logit_diff: float
    resid: Float[Tensor, "layer pos"]  # raw patched mean logit diff (not normalised)
    attn: Float[Tensor, "layer pos"]
    mlp: Float[Tensor, "layer pos"]
    heads: Float[Tensor, "layer head"]

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.corrupted_logit_diff) / (self.clean_logit_diff - self.corrupted_logit_diff)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        base = {"tokens": list(self.tokens)}
        return {
            "resid_patching": {**base, "values": self.normalise(self.resid).tolist(),
                               "clean_logit_diff": self.clean_logit_diff,
                               "corrupted_logit_diff": self.corrupted_logit_diff},
            "attn_patching": {**base, "values": self.normalise(self.attn).tolist()},
            "mlp_patching": {**base, "values": self.normalise(self.mlp).tolist()},
            "head_patching": {"values": self.normalise(self.heads).tolist()},
        }


def _score(model: Model, cache: CleanCache, T: int, correct: Tensor, incorrect: Tensor) -> Tensor:
    final = cache.resid_final[:, T - 1]
    d, _ = model.runner.answer_metrics(final, correct, incorrect, with_loss=False)
    return d.float()


def activation_patching(model: Model, task: TokenizedTask, settings: SweepSettings | None = None) -> PatchingResult:
    """Patch clean activations into the corrupted run, one (layer, position) or (layer, head) at a time."""
    if task.clean_tokens is None:
        raise LogitlabError(f"task {task.task.name!r} has no clean/corrupted pairs, so it cannot be patched",
                            "add a 'patching' list to the task file")
    settings = settings or SweepSettings()
    r, spec = model.runner, model.spec
    dev = r.device
    clean_t, corr_t = task.clean_tokens.to(dev), task.corrupted_tokens.to(dev)
    correct, incorrect = task.pair_correct_ids.to(dev), task.pair_incorrect_ids.to(dev)
    n_pairs, T = clean_t.shape
    with torch.no_grad():
        clean, corr = r.run_with_cache(clean_t), r.run_with_cache(corr_t)
    clean_ld = float(_score(model, clean, T, correct, incorrect).mean())
    corr_ld = float(_score(model, corr, T, correct, incorrect).mean())
    if abs(clean_ld - corr_ld) < 1e-6:
        raise LogitlabError("clean and corrupted prompts give the same logit difference; patching cannot be "
                            "normalised", "choose a corrupted prompt that changes the answer")
    tokens = tuple(model.to_str_tokens(task.clean_tokens[0]))
    if not has(model, SWEEP):
        require(model, HOOKED_LOOPS, "activation patching")
        from logitlab.reference import loop_patching
        args = (model, clean_t, corr_t, correct, incorrect)
        loops = [loop_patching(*args, what, progress=settings.progress) for what in ("resid_pre", "attn_out", "mlp_out", "z")]
        return PatchingResult(tokens, clean_ld, corr_ld, *loops)
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
            entries += position_entries((what, layer), r, layer, stage, base, delta, corr_kv, fp, correct, incorrect)
        # Each head's z from the clean run, per pair, into the corrupted run.
        clean_z = clean.z[layer][:, :, heads].permute(2, 0, 1, 3)  # (H, pair, T, dh)
        entries.append(head_entry(("z", layer), r, corr, layer, heads, clean_z, fp, correct, incorrect))
    out = run_sweep(r, entries, False, settings)  # all patches in a few growing batches
    mean = lambda key: out[key].logit_diff.mean()  # noqa: E731  mean over pairs
    per_pos = lambda what: torch.stack([torch.stack([mean((what, l, p)) for p in range(T)])  # noqa: E731
                                        for l in range(L)])  # (L, T)
    head = torch.stack([out[("z", l)].logit_diff.view(H, n_pairs).mean(-1) for l in range(L)])  # (L, H)
    return PatchingResult(tokens, clean_ld, corr_ld, per_pos("resid_pre").cpu(), per_pos("attn_out").cpu(),
                          per_pos("mlp_out").cpu(), head.cpu())
