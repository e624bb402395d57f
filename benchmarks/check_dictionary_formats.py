"""Check that SAELens and circuit-tracer read the dictionaries logitlab writes into the same features.

Needs both libraries, which logitlab does not depend on; run it in their own environment, e.g.
    python -m venv /tmp/saevenv && /tmp/saevenv/bin/pip install sae-lens circuit-tracer==0.5.0
    PYTHONPATH=. /tmp/saevenv/bin/python benchmarks/check_dictionary_formats.py
Prints, per activation, the largest difference between logitlab's features and outputs and the library's.

Two input points. Written without a model, a transcoder reads ``ln2.hook_normalized`` (logitlab's ``mlp_in``
itself): the libraries get the same input vectors ``x`` as logitlab. Written for a model on ``mlp.hook_in`` (the
MLP's input after the pre-MLP norm's weight ``w`` and bias ``b``, as both libraries run models), the files hold
the weights with the norm divided out: the libraries get ``x · w + b`` and must give logitlab's features and
outputs on ``x``. That needs a model's unfolded norm; here a stand-in (``w`` of magnitude 0.3–3, some negative,
and a random ``b``) replaces ``logitlab.features.formats.mlp_norm``, so that no model is loaded. The
conversion on real models, against TransformerLens's unprocessed activations, is tested in
``tests/unit/test_features_formats.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
import yaml

from logitlab.features import formats
from logitlab.features.dictionary import DictionarySet, Transcoder
from logitlab.features.formats import save_circuit_tracer, save_saelens

D, L = 16, 2


def _set(act: str, kind: str, skip: bool, g: torch.Generator) -> DictionarySet:
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tcs = tuple(Transcoder(W_enc=r(D, 32) * .3, b_enc=r(32) * .1, W_dec=r(32, D) * .3, b_dec=r(D) * .1,
                           activation=act, threshold=r(32).abs() * .2 if act == "jumprelu" else None,
                           k=5 if act == "topk" else None, W_skip=r(D, D) * .1 if skip else None) for _ in range(L))
    return DictionarySet(layers=tcs, kind=kind, input_point="mlp_in" if kind == "transcoder" else "mlp_out",
                         model="tiny", d_model=D)


def _norm(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in for a model's unfolded pre-MLP norms: (w, b), each (layer, d_model)."""
    w = (torch.rand(L, D, generator=g) * 2.7 + 0.3) * torch.where(torch.rand(L, D, generator=g) < 0.2, -1.0, 1.0)
    return w.double(), (torch.randn(L, D, generator=g) * 0.3).double()


def main() -> None:
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from sae_lens import SAE
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, D, generator=g)
    w, b = _norm(g)
    stub = SimpleNamespace(spec=SimpleNamespace(n_layers=L, d_model=D, model_type="llama", post_norms=False),
                           name="tiny")
    with tempfile.TemporaryDirectory() as tmp:
        for hooked in (False, True):
            model, xin = (stub, x * w[1].float() + b[1].float()) if hooked else (None, x)
            where = "mlp.hook_in (norm divided out)" if hooked else "ln2.hook_normalized"
            with mock.patch.object(formats, "mlp_norm", lambda m: (w, b)):
                for act, kind, skip in [("relu", "sae", False), ("jumprelu", "sae", False), ("topk", "sae", False),
                                        ("relu", "transcoder", False), ("jumprelu", "transcoder", True)]:
                    if hooked and kind == "sae":
                        continue  # SAEs read hook_mlp_out: no norm
                    d = _set(act, kind, skip, g)
                    folder = Path(tmp) / f"sl_{act}_{kind}_{hooked}"
                    save_saelens(d, folder, model)
                    sae = SAE.load_from_disk(folder / "layer_1")
                    hook = json.loads((folder / "layer_1" / "cfg.json").read_text())["metadata"]["hook_name"]
                    assert hook.endswith(where.split(" ")[0] if kind == "transcoder" else "hook_mlp_out"), hook
                    with torch.no_grad():
                        df = (sae.encode(xin) - d.layers[1].encode(x)).abs().max()
                        do = (sae.forward(xin) - d.layers[1](x)).abs().max()
                    print(f"SAELens {type(sae).__name__:24s} {where if kind != 'sae' else 'hook_mlp_out':32s} "
                          f"features {df:.1e}  output {do:.1e}")
                    if kind != "transcoder":
                        continue
                    folder = Path(tmp) / f"ct_{act}_{hooked}"
                    save_circuit_tracer(d, folder, model)
                    cfg = yaml.safe_load((folder / "config.yaml").read_text())
                    assert cfg["feature_input_hook"] == where.split(" ")[0]
                    ts = load_transcoder_set({i: str(folder / f"layer_{i}.safetensors") for i in range(L)},
                                             scan="check", feature_input_hook=cfg["feature_input_hook"],
                                             feature_output_hook=cfg["feature_output_hook"],
                                             device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
                    with torch.no_grad():
                        df = (ts[1].encode(xin) - d.layers[1].encode(x)).abs().max()
                        do = (ts[1](xin) - d.layers[1](x)).abs().max()
                    print(f"circuit-tracer {act:17s} {where:32s} features {df:.1e}  output {do:.1e}")


if __name__ == "__main__":
    main()
