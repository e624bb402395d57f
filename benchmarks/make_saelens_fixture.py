"""Regenerate tests/data/saelens/: small dictionaries written by SAELens itself, with the features and outputs
SAELens computes on fixed inputs, so the tests check that logitlab reads SAELens's files into the same features.

Needs SAELens, which logitlab does not depend on: run it in its own environment, e.g.
    python -m venv /tmp/saevenv && /tmp/saevenv/bin/pip install sae-lens
    /tmp/saevenv/bin/python benchmarks/make_saelens_fixture.py
(written with sae-lens 6.54). Each folder: cfg.json + sae_weights.safetensors (SAELens's ``save_model``) and
expected.safetensors (``x``, ``features`` = SAELens's ``encode(x)``, ``out`` = its ``decode`` of them, plus the
skip term for a skip transcoder).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import sae_lens
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from sae_lens.saes.transcoder import JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "saelens"
D_IN, D_SAE, N = 16, 32, 24


def _fill(sae: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name != "threshold" else 0.3))
            if name == "threshold":
                p.abs_()
                p[0] = -0.2  # a negative threshold: SAELens's JumpReLU still zeroes negative pre-activations


def main() -> None:
    g = torch.Generator().manual_seed(0)
    meta = {"model_name": "tiny", "hook_name": "blocks.0.hook_mlp_out"}
    saes = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True)),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, apply_b_dec_to_input=False)),
        "jumprelu_skip_transcoder": JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(
            d_in=D_IN, d_sae=D_SAE, d_out=D_IN, apply_b_dec_to_input=False)),
    }
    for name, sae in saes.items():
        for k, v in meta.items():
            sae.cfg.metadata[k] = v
        if "transcoder" in name:
            sae.cfg.metadata["hook_name"] = "blocks.0.mlp.hook_in"
            sae.cfg.metadata["hook_name_out"] = "blocks.0.hook_mlp_out"
        _fill(sae, g)
        folder = OUT / name
        sae.save_model(folder)
        x = torch.randn(N, D_IN, generator=g)
        with torch.no_grad():
            f = sae.encode(x)
            out = sae.forward(x) if "transcoder" in name else sae.decode(f)
        save_file({"x": x, "features": f.contiguous(), "out": out.contiguous()}, str(folder / "expected.safetensors"))
        cfg = json.loads((folder / "cfg.json").read_text())
        print(name, cfg["architecture"], "active per row", float((f != 0).sum(-1).float().mean()))
    (OUT / "VERSION").write_text(f"sae-lens {sae_lens.__version__}\n")


if __name__ == "__main__":
    main()
