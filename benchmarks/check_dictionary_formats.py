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

Gemma Scope 2's own layout (:func:`gemma_scope_2`): circuit-tracer 0.5's ``load_gemma_scope_2_transcoder``, picked
by its own ``load_transcoders`` for a config that lists the raw layer files, and logitlab read the same folder into
logitlab's features and outputs. It runs on its own, in an environment with circuit-tracer 0.5.0 and the
``huggingface_hub`` it installs (its hub utilities import names newer releases dropped), e.g.
    python -m venv /tmp/ct-env && /tmp/ct-env/bin/pip install circuit-tracer==0.5.0
    PYTHONPATH=. /tmp/ct-env/bin/python benchmarks/check_dictionary_formats.py --gemma-scope-2
"""

from __future__ import annotations

import json
import sys
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


def gemma_scope_2() -> None:
    """Gemma Scope 2's own layout: circuit-tracer 0.5 selects ``load_gemma_scope_2_transcoder`` for a config whose
    repository is a ``gemma-scope-2`` one and that lists the layer files under ``transcoders:``; logitlab reads the
    same folder. Files hold the raw tensors (``w_enc`` (d_model, n_features), ``affine_skip_connection``) of a
    JumpReLU set, on ``ln2.hook_normalized`` as in memory, or on ``mlp.hook_in`` with the stand-in norm divided
    out as logitlab writes it for a model (``formats._convert``)."""
    from circuit_tracer.utils.hf_utils import load_transcoders
    from safetensors.torch import save_file

    from logitlab.features import load_dictionaries
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, D, generator=g)
    w, b = _norm(g)
    stub = SimpleNamespace(spec=SimpleNamespace(n_layers=L, d_model=D, model_type="gemma3_text", post_norms=True),
                           name="tiny")
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(formats, "mlp_norm", lambda m: (w, b)):
        for hooked in (False, True):
            model, xin = (stub, x * w[1].float() + b[1].float()) if hooked else (None, x)
            hook = "mlp.hook_in" if hooked else "ln2.hook_normalized"
            for skip in (False, True):
                d = _set("jumprelu", "transcoder", skip, g)
                folder = Path(tmp) / f"gs_{hooked}_{skip}"
                listed = []
                for i, tc in enumerate(d.layers):
                    tc = formats._convert(tc, w[i], b[i], i, to_hook_in=True) if hooked else tc
                    state = {"w_enc": tc.W_enc, "w_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec,
                             "threshold": tc.threshold}
                    if tc.W_skip is not None:
                        state["affine_skip_connection"] = tc.W_skip  # circuit-tracer's W_skip is its transpose
                    rel = f"transcoder/layer_{i}_width_32_l0_small/params.safetensors"
                    (folder / rel).parent.mkdir(parents=True)
                    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / rel))
                    listed.append(rel)
                cfg = {"model_kind": "transcoder_set", "feature_input_hook": hook,
                       "feature_output_hook": "hook_mlp_out", "transcoders": listed}
                (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
                ours = load_dictionaries(folder, model)
                # circuit-tracer resolves paths against the working directory: give them absolute
                ts = load_transcoders({**cfg, "transcoders": [str(folder / p) for p in listed],
                                       "repo_id": "google/gemma-scope-2-270m-pt", "scan": "check"},
                                      device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
                with torch.no_grad():
                    ref_f, ref_o = d.layers[1].encode(x), d.layers[1](x)
                    lf = (ours.layers[1].encode(x) - ref_f).abs().max()
                    lo = (ours.layers[1](x) - ref_o).abs().max()
                    cf = (ts[1].encode(xin) - ref_f).abs().max()
                    co = (ts[1](xin) - ref_o).abs().max()
                    active = float((ref_f != 0).float().mean())
                where = f"{hook}{' (norm divided out)' if hooked else ''}{', skip' if skip else ''}"
                print(f"Gemma Scope 2 layout {where:42s} logitlab features {lf:.1e} output {lo:.1e}  "
                      f"circuit-tracer features {cf:.1e} output {co:.1e}  ({active:.0%} active)")


if __name__ == "__main__":
    if "--gemma-scope-2" in sys.argv:  # circuit-tracer alone, in its own environment (see the docstring)
        gemma_scope_2()
    else:
        main()
