"""Fallback for architectures TransformerLens supports but logitlab's own forward pass does not.

Every activation is read from the bridge's hooks, and ablation and patching run as one hooked forward per
intervention (``logitlab.reference``): slower, but as general as TransformerLens. Before any analysis the
fallback checks, on a probe input, the facts the attributions rest on, and refuses the model (naming the
failed check) instead of returning numbers it cannot vouch for:

* the final residual stream is the sum of the embeddings and every layer's attention and MLP output;
* the model's logits are the final norm (scale frozen) of that residual stream times ``W_U`` plus ``b_U``;
* each layer's heads (``z_h · W_O[h]``, through a post-attention norm's frozen scale if there is one) plus the
  output bias add up to the layer's attention output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.model.backend import HOOKED_LOOPS
from logitlab.model.readout import CleanCache, Readout
from logitlab.model.spec import ArchSpec, Weights, _norm_params, _stack_or_zeros

__all__ = ["HookRunner", "generic_spec", "read_output_weights"]

_EMPTY = torch.empty(0)


def generic_spec(bridge: Any, hf_config: Any) -> ArchSpec:
    """The shape facts of any decoder-only model the bridge wraps (forward-pass details are left to it)."""
    cfg = bridge.cfg
    if not hasattr(bridge, "blocks") or getattr(cfg, "is_visual_model", False) or getattr(cfg, "is_audio_model", False):
        raise LogitlabError(f"architecture {hf_config.model_type!r} is not a decoder-only text transformer")
    if getattr(cfg, "attention_dir", "causal") != "causal":
        raise LogitlabError(f"architecture {hf_config.model_type!r} is not a causal language model")
    if cfg.normalization_type not in ("LN", "RMS"):
        raise LogitlabError(f"architecture {hf_config.model_type!r}: normalization {cfg.normalization_type!r} "
                            "is not supported (LayerNorm or RMSNorm only)")
    L, H = int(cfg.n_layers), int(cfg.n_heads)
    return ArchSpec(
        model_type=str(hf_config.model_type), n_layers=L, n_heads=H,
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or H), d_model=int(cfg.d_model),
        d_head=int(cfg.d_head), d_vocab=int(cfg.d_vocab), normalization=cfg.normalization_type, eps=float(cfg.eps),
        positional="learned", rotary=(), sliding_window=(None,) * L, act_fn="gelu", gated_mlp=False,
        post_norms=hasattr(bridge.blocks[0], "ln1_post"), qk_norm=False, attn_scale=0.0, embed_scale=1.0,
        parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
    )


def read_output_weights(bridge: Any, spec: ArchSpec) -> Weights:
    """The weights the read-out and attributions use (unembedding, final norm, W_O/b_O, post-norms).

    The rest stays empty: this backend never runs the blocks itself (the bridge does).
    """
    L, D = spec.n_layers, spec.d_model
    offset = bool(getattr(bridge.cfg, "rmsnorm_uses_offset", False))
    lnf_w, lnf_b = _norm_params(bridge.ln_final, offset, D)
    post1 = torch.stack([_norm_params(b.ln1_post, offset, D)[0] for b in bridge.blocks]) if spec.post_norms else None
    W_U = bridge.W_U.detach().float().clone()
    empty = {n: _EMPTY for n in ("W_E", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_in", "b_in", "W_out",
                                 "b_out", "ln1_w", "ln1_b", "ln2_w", "ln2_b")}
    return Weights(**empty, W_pos=None, W_gate=None, W_O=bridge.W_O.detach().float().clone(),
                   b_O=_stack_or_zeros(bridge, "b_O", (L, D)), post1_w=post1, post2_w=None, q_norm_w=None,
                   k_norm_w=None, lnf_w=lnf_w, lnf_b=lnf_b, W_U=W_U,
                   b_U=_stack_or_zeros(bridge, "b_U", (W_U.shape[1],)))


class HookRunner(Readout):
    """The hooked backend: activations from TransformerBridge hooks, interventions as hooked forward passes.

    It shares the read-out (final norm, answer metrics) with the staged runner but cannot start mid-model.
    """

    capabilities = frozenset({HOOKED_LOOPS})

    def __init__(self, spec: ArchSpec, weights: Weights, bridge: Any) -> None:
        super().__init__(spec, weights)
        self.bridge = bridge

    def run_with_cache(self, tokens: Tensor) -> CleanCache:
        L = self.spec.n_layers
        with torch.no_grad():
            _, cache = self.bridge.run_with_cache(tokens)

        def get(name: str) -> Tensor:
            if name not in cache:
                raise LogitlabError(f"architecture {self.spec.model_type!r} has no hook {name!r}, which the "
                                    "analyses read", "this model cannot be analysed by logitlab yet")
            return cache[name]

        stack = lambda fmt: torch.stack([get(fmt.format(l)) for l in range(L)])  # noqa: E731
        attn_out = stack("blocks.{}.hook_attn_out")
        resid_pre = stack("blocks.{}.hook_resid_pre")
        post = None
        attn_pre = attn_out
        if self.spec.post_norms:
            attn_pre = stack("blocks.{}.ln1_post.hook_in")
            post = stack("blocks.{}.ln1_post.hook_scale").squeeze(-1)
        mid = torch.stack([cache[f"blocks.{l}.hook_resid_mid"] if f"blocks.{l}.hook_resid_mid" in cache
                           else resid_pre[l] + attn_out[l] for l in range(L)])
        return CleanCache(
            embed=get("hook_embed"), pos_embed=cache["hook_pos_embed"] if "hook_pos_embed" in cache else None,
            resid_pre=resid_pre, attn_pre=attn_pre, attn_out=attn_out, post_attn_scale=post, resid_mid=mid,
            mlp_out=stack("blocks.{}.hook_mlp_out"), resid_final=get(f"blocks.{L - 1}.hook_resid_post"),
            final_scale=get("ln_final.hook_scale").squeeze(-1), z=stack("blocks.{}.attn.hook_z"),
            pattern=stack("blocks.{}.attn.hook_pattern"),
        )

    def logits(self, tokens: Tensor) -> Tensor:
        with torch.no_grad():
            return self.bridge(tokens)

    def last_logits(self, tokens: Tensor, final_pos: Tensor) -> Tensor:
        """Full logits at each row's final position, (B, vocab)."""
        logits = self.logits(tokens)
        return logits[torch.arange(tokens.shape[0], device=logits.device), final_pos.to(logits.device)]

    def check(self, tokens: Tensor) -> None:
        """Verify on ``tokens`` the additivity the attributions rest on; raise naming what fails."""
        c = self.run_with_cache(tokens)
        total = c.embed + (0 if c.pos_embed is None else c.pos_embed) + c.attn_out.sum(0) + c.mlp_out.sum(0)
        scale = max(1.0, c.resid_final.abs().max().item())
        if (total - c.resid_final).abs().max().item() > 1e-3 * scale:
            raise LogitlabError(f"architecture {self.spec.model_type!r}: the residual stream is not the sum of the "
                                "embeddings and the attention and MLP outputs, so attributions would not add up")
        normed, _ = self.final_norm(c.resid_final)
        ours = normed @ self.w.W_U + self.w.b_U
        ref = self.logits(tokens)
        centre = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731  (centring W_U shifts logits uniformly)
        if (centre(ours) - centre(ref)).abs().max().item() > 1e-3 * max(1.0, ref.abs().max().item()):
            raise LogitlabError(f"architecture {self.spec.model_type!r}: its logits are not a linear read-out of "
                                "the final residual stream (e.g. logit soft-capping), so direct logit attribution "
                                "would not reconstruct them")
        heads = torch.einsum("lbthe,lhed->lbtd", c.z.float(), self.w.W_O.float()) + self.w.b_O[:, None, None]
        if c.post_attn_scale is not None:
            heads = heads / c.post_attn_scale[..., None] * self.w.post1_w[:, None, None]
        if (heads - c.attn_out).abs().max().item() > 1e-3 * max(1.0, c.attn_out.abs().max().item()):
            raise LogitlabError(f"architecture {self.spec.model_type!r}: its heads' outputs (z · W_O) do not add "
                                "up to the attention output, so head attribution and ablation would be wrong")
