"""Check that SAELens and circuit-tracer read the dictionaries logitlab writes into the same features.

Needs both libraries, which logitlab does not depend on; run it in their own environment, e.g.
    python -m venv /tmp/saevenv && /tmp/saevenv/bin/pip install sae-lens circuit-tracer==0.5.0
    PYTHONPATH=. /tmp/saevenv/bin/python benchmarks/check_dictionary_formats.py
Prints, per activation, the largest difference between logitlab's features and outputs and the library's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import yaml

from logitlab.features.dictionary import DictionarySet, Transcoder
from logitlab.features.formats import save_circuit_tracer, save_saelens


def _set(act: str, kind: str, skip: bool, g: torch.Generator) -> DictionarySet:
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tcs = tuple(Transcoder(W_enc=r(16, 32) * .3, b_enc=r(32) * .1, W_dec=r(32, 16) * .3, b_dec=r(16) * .1,
                           activation=act, threshold=r(32).abs() * .2 if act == "jumprelu" else None,
                           k=5 if act == "topk" else None, W_skip=r(16, 16) * .1 if skip else None) for _ in range(2))
    return DictionarySet(layers=tcs, kind=kind, input_point="mlp_in" if kind == "transcoder" else "mlp_out",
                         model="tiny", d_model=16)


def main() -> None:
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from sae_lens import SAE
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 16, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        for act, kind, skip in [("relu", "sae", False), ("jumprelu", "sae", False), ("topk", "sae", False),
                                ("relu", "transcoder", False), ("jumprelu", "transcoder", True)]:
            d = _set(act, kind, skip, g)
            folder = Path(tmp) / f"sl_{act}_{kind}"
            save_saelens(d, folder)
            sae = SAE.load_from_disk(folder / "layer_1")
            with torch.no_grad():
                df = (sae.encode(x) - d.layers[1].encode(x)).abs().max()
                do = (sae.forward(x) - d.layers[1](x)).abs().max()
            print(f"SAELens {type(sae).__name__:24s} features {df:.1e}  output {do:.1e}")
            if kind != "transcoder":
                continue
            folder = Path(tmp) / f"ct_{act}"
            save_circuit_tracer(d, folder)
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
            ts = load_transcoder_set({i: str(folder / f"layer_{i}.safetensors") for i in range(2)}, scan="check",
                                     feature_input_hook=cfg["feature_input_hook"],
                                     feature_output_hook=cfg["feature_output_hook"], device=torch.device("cpu"),
                                     lazy_encoder=False, lazy_decoder=False)
            with torch.no_grad():
                df = (ts[1].encode(x) - d.layers[1].encode(x)).abs().max()
                do = (ts[1](x) - d.layers[1](x)).abs().max()
            print(f"circuit-tracer {act:17s} features {df:.1e}  output {do:.1e}")


if __name__ == "__main__":
    main()
