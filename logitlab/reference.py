"""The one-forward-per-intervention way, through TransformerLens hooks on the bridge.

This is how the reference analysis is written (``run_with_hooks`` in loops, full-vocabulary logits each
time). logitlab's sweep engine must give the same numbers; tests and the benchmark compare the two. It is slow
by design and not used by ``logitlab run``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from logitlab import answers
from logitlab.model.load import Model

__all__ = ["hooked_metrics", "loop_head_ablation", "loop_patching"]


def hooked_metrics(model: Model, tokens: Tensor, final_pos: Tensor, correct: Tensor, incorrect: Tensor,
                   hooks: list[tuple[str, Callable]] | None = None) -> tuple[Tensor, Tensor]:
    """Logit difference and −log p(correct) at each row's final position from one hooked bridge forward."""
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks or [])
    rows = torch.arange(tokens.shape[0])
    final = logits[rows, final_pos].float()  # (B, vocab)
    diff = final[rows, correct] - answers.mean_incorrect(final.gather(1, answers.columns(incorrect)), incorrect)
    loss = -final.log_softmax(-1)[rows, correct]
    return diff, loss


def loop_head_ablation(model: Model, tokens: Tensor, final_pos: Tensor, correct: Tensor, incorrect: Tensor,
                       means: Tensor | None = None, layers: list[int] | None = None,
                       progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Zero- (or, with ``means``, mean-) ablate each head at ``hook_z``: one forward per head.

    ``means`` is (L, T, H, dh), shared by the prompts, or (L, B, T, H, dh), one per prompt.
    """
    spec = model.spec
    layers = list(range(spec.n_layers)) if layers is None else layers
    out_d = torch.zeros(len(layers), spec.n_heads, tokens.shape[0])
    out_l = torch.zeros_like(out_d)
    for i, layer in enumerate(layers):
        for h in range(spec.n_heads):
            def hook(z: Tensor, hook: object, h: int = h, layer: int = layer) -> Tensor:
                z = z.clone()
                if means is None:
                    z[:, :, h] = 0.0
                elif means.dim() == 4:
                    z[:, :, h] = means[layer, : z.shape[1], h].to(z.dtype)
                else:
                    z[:, :, h] = means[layer, :, : z.shape[1], h].to(z.dtype)
                return z
            d, lo = hooked_metrics(model, tokens, final_pos, correct, incorrect, [(f"blocks.{layer}.attn.hook_z", hook)])
            out_d[i, h], out_l[i, h] = d, lo
            if progress is not None:
                progress(tokens.shape[0])
    return out_d, out_l


def loop_patching(model: Model, clean: Tensor, corrupted: Tensor, correct: Tensor, incorrect: Tensor,
                  what: str, layers: list[int] | None = None, progress: Callable[[int], None] | None = None,
                  per_pair: bool = False) -> Tensor:
    """Patch clean into corrupted one (layer, position) — or for ``what='z'`` one (layer, head) — at a time.

    ``what``: ``resid_pre``, ``attn_out``, ``mlp_out`` or ``z``. Returns the raw mean logit difference of
    the patched runs, (layers, positions) or (layers, heads); with ``per_pair`` each pair's, (layers, width, pair).
    """
    spec = model.spec
    layers = list(range(spec.n_layers)) if layers is None else layers
    n, T = clean.shape
    fp = torch.full((n,), T - 1)
    names = {"resid_pre": "blocks.{}.hook_resid_pre", "attn_out": "blocks.{}.hook_attn_out",
             "mlp_out": "blocks.{}.hook_mlp_out", "z": "blocks.{}.attn.hook_z"}
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(clean)
    width = spec.n_heads if what == "z" else T
    out = torch.zeros(len(layers), width, n)
    for i, layer in enumerate(layers):
        name = names[what].format(layer)
        clean_act = cache[name]
        for j in range(width):
            def hook(act: Tensor, hook: object, j: int = j, clean_act: Tensor = clean_act) -> Tensor:
                act = act.clone()
                if what == "z":
                    act[:, :, j] = clean_act[:, :, j]
                else:
                    act[:, j] = clean_act[:, j]
                return act
            d, _ = hooked_metrics(model, corrupted, fp, correct, incorrect, [(name, hook)])
            out[i, j] = d.cpu()
            if progress is not None:
                progress(n)
    return out if per_pair else out.mean(-1)
