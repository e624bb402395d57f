"""Activation patching, clean into corrupted, normalised to (patched − corrupted) / (clean − corrupted).

The metric is the logit difference of the *clean* prompt's answers, averaged over the task's patching
pairs. Patched activations: ``resid_pre`` per (layer, position); each layer's attention output (after any
post-attention norm) and MLP output per (layer, position); each head's ``hook_z`` output at every position.
0 means the patch restores nothing, 1 that it restores the clean behaviour.

Invariants (tested): patching the whole residual stream at a layer gives 1, patching nothing 0; every entry
equals one hooked TransformerLens forward per patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from logitlab.analyses._common import CleanRun
from logitlab.analyses.ablation import with_head_change
from logitlab.errors import LogitlabError
from logitlab.model.load import Model
from logitlab.model.runner import CleanCache
from logitlab.sweep import Entry, SweepSettings, run_sweep
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
    if r.hooked:  # architectures outside logitlab's forward pass: one hooked forward per patch
        from logitlab.reference import loop_patching
        args = (model, clean_t, corr_t, correct, incorrect)
        loops = [loop_patching(*args, what, progress=settings.progress) for what in ("resid_pre", "attn_out", "mlp_out", "z")]
        return PatchingResult(tokens, clean_ld, corr_ld, *loops)
    fp = lambda k: torch.full((k * n_pairs,), T - 1, device=dev)  # noqa: E731  every item ends at T-1
    rep = lambda t, k: t.repeat(k, *([1] * (t.dim() - 1)))  # noqa: E731  item-major: (what, pair)

    # Patching position p leaves positions < p as in the corrupted run: those items skip them, reading their
    # keys and values from the corrupted run.
    corr_kv = [r.keys_values(layer, corr.resid_pre[layer]) for layer in range(spec.n_layers)]

    def pos_entries(layer: int, stage: str, base: Tensor, delta: Tensor) -> list[Entry]:
        # base: (pair, T, D) corrupted residual at the entry; delta: (pair, T, D) change at each position.
        out = []
        for p in range(T):
            def make(b: Tensor, p: int = p) -> Tensor:  # items: the pairs
                x = base[b].clone()
                x[:, p] += delta[b, p]
                return x

            def kv(layer: int, b: Tensor, p: int = p) -> tuple[Tensor, Tensor]:
                return corr_kv[layer][0][b, :p], corr_kv[layer][1][b, :p]
            out.append(Entry(layer, stage, make, fp(1), correct, incorrect, prefix=p, prefix_kv=kv))
        return out

    def head_entry(layer: int) -> Entry:
        heads = torch.arange(spec.n_heads, device=dev)

        def make(idx: Tensor) -> Tensor:
            h, b = heads[idx // n_pairs], idx % n_pairs
            return with_head_change(r, corr, layer, b, h, clean.z[layer, b, :, h] - corr.z[layer, b, :, h])
        return Entry(layer, r.attn_entry_stage, make, fp(H), rep(correct, H), rep(incorrect, H))

    H, L = spec.n_heads, spec.n_layers
    entries = []
    for layer in range(L):
        entry = r.after_attention(corr.resid_pre[layer], corr.attn_out[layer], corr.mlp_out[layer])
        post = corr.resid_mid[layer] + corr.mlp_out[layer]
        entries += pos_entries(layer, "pre", corr.resid_pre[layer], clean.resid_pre[layer] - corr.resid_pre[layer])
        entries += pos_entries(layer, r.attn_entry_stage, entry, clean.attn_out[layer] - corr.attn_out[layer])
        entries += pos_entries(layer, "post", post, clean.mlp_out[layer] - corr.mlp_out[layer])
        entries.append(head_entry(layer))
    out = [d for d, _ in run_sweep(r, entries, False, settings)]  # all patches in a few growing batches
    per_layer = 3 * T + 1
    per_pos = lambda i: torch.stack([d.mean() for d in out[i:i + T]])  # noqa: E731  (T,): mean over pairs
    resid = [per_pos(per_layer * l) for l in range(L)]
    attn = [per_pos(per_layer * l + T) for l in range(L)]
    mlp = [per_pos(per_layer * l + 2 * T) for l in range(L)]
    heads = [out[per_layer * l + 3 * T].view(H, n_pairs).mean(-1) for l in range(L)]
    return PatchingResult(tokens, clean_ld, corr_ld, torch.stack(resid).cpu(), torch.stack(attn).cpu(),
                          torch.stack(mlp).cpu(), torch.stack(heads).cpu())
