"""The MLP input of dictionaries on disk: logitlab's ``mlp_in`` (the pre-MLP norm's output without its weight)
against ``mlp.hook_in`` (with it, on an unfolded model, as circuit-tracer and SAELens run models) and
``ln2.hook_normalized``, on tiny models whose pre-MLP norm weights are far from 1.

Each file is checked two ways: read back by logitlab (the same pre-activations as the set in memory, on the
model's ``mlp_in``), and read as the external library would, with plain torch: the saved raw tensors applied to
the activations at the file's hook of a TransformerLens bridge booted *without* processing (norms unfolded).

Gemma Scope 2's own layout (``w_enc`` (d_model, n_features), ``affine_skip_connection``) is checked against the
same weights in circuit-tracer's layout and against circuit-tracer 0.5's computation on the raw tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from logitlab.errors import LogitlabError
from logitlab.features import load_dictionaries
from logitlab.features.formats import input_hook, mlp_norm, save_circuit_tracer, save_saelens
from logitlab.features.quality import mlp_io
from tests.tiny import make_model_folder, random_dictionaries

# kind → (the pre-MLP norm's weight in the HF checkpoint, whether it is used as 1 + weight)
NORMS = {"llama_gqa": ("post_attention_layernorm", False), "gemma3": ("pre_feedforward_layernorm", True),
         "gpt2": ("ln_2", False)}  # gpt2: LayerNorm, with a bias
KIND = {"llama": "llama_gqa", "gemma3_text": "gemma3", "gpt2": "gpt2"}  # HF model_type → kind
IDS = [0, 5, 9, 6, 7, 12, 8, 10]
TOL = 1e-5


def _with_norm_weights(kind: str, folder: Path) -> Path:
    """A tiny model of ``kind`` whose pre-MLP norm weights are set explicitly: magnitudes 0.3–3, some negative."""
    from transformers import AutoModelForCausalLM
    make_model_folder(kind, folder)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    name, offset = NORMS[kind]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if f".{name}.weight" in pname:
                eff = torch.empty(p.shape).uniform_(0.3, 3.0, generator=g)
                eff = eff * torch.where(torch.rand(p.shape, generator=g) < 0.2, -1.0, 1.0)
                p.copy_(eff - 1.0 if offset else eff)
    hf.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module", params=list(NORMS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from logitlab.model.load import load_model
    folder = _with_norm_weights(request.param, tmp_path_factory.mktemp(request.param))
    return load_model(str(folder), cache=False)


@pytest.fixture(scope="module")
def unfolded(model):  # noqa: ANN001, ANN201
    """Every hook's activation on IDS from a TransformerLens bridge of the checkpoint, booted without processing."""
    from transformer_lens.model_bridge import TransformerBridge

    from logitlab.model.hub import load_hf
    hf, tok = load_hf(model.source, False)
    bridge = TransformerBridge.boot_transformers(model.source, hf_model=hf, tokenizer=tok)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.tensor([IDS]))
    return {k: v[0].float() for k, v in cache.items()}


@pytest.fixture(scope="module")
def mlp_in(model):  # noqa: ANN001, ANN201
    """logitlab's mlp_in on IDS, per layer, (pos, d_model)."""
    with torch.no_grad():
        io = mlp_io(model, torch.tensor([IDS]))
    return [io[l][0][0].float() for l in range(model.spec.n_layers)]


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_norm_weights_are_not_trivial(model) -> None:  # noqa: ANN001
    """The point of these tests: mlp.hook_in differs from mlp_in by far more than the tolerance."""
    w, b = mlp_norm(model)
    assert float((w - 1).abs().max()) > 1.0 and bool((w < 0).any())
    name, offset = NORMS[KIND[model.spec.model_type]]
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(model.source, dtype=torch.float32)
    raw = torch.stack([p.detach() for n, p in hf.named_parameters() if f".{name}.weight" in n]).double()
    assert torch.allclose(w, raw + 1 if offset else raw), "effective weight: Gemma's 1 + weight, else the weight"
    if model.spec.normalization == "LN":
        assert float(b.abs().max()) > 0.1  # the tiny LayerNorm models have random biases


@pytest.mark.parametrize("fmt", ["circuit_tracer", "saelens"])
@pytest.mark.parametrize("variant", ["relu", "jumprelu_skip"])
def test_written_files_give_logitlabs_features(model, unfolded, mlp_in, tmp_path: Path, fmt: str,
                                               variant: str) -> None:
    """(1) logitlab reads its file back into the same pre-activations on mlp_in; (2) the raw tensors applied with
    plain torch to the unfolded model's activations at the file's hook (what circuit-tracer and SAELens compute)
    give logitlab's pre-activations and skip output."""
    s = model.spec
    dset = random_dictionaries(s.d_model, s.n_layers, variant)
    dset = type(dset)(layers=dset.layers, model=model.name, d_model=s.d_model)
    if fmt == "circuit_tracer":
        folder = save_circuit_tracer(dset, tmp_path / "tc", model)
        hook = yaml.safe_load((folder / "config.yaml").read_text())["feature_input_hook"]
        raw = [load_file(str(folder / f"layer_{l}.safetensors")) for l in range(s.n_layers)]
        hooks = [f"blocks.{l}.{hook}" for l in range(s.n_layers)]
        W_enc = [r["W_enc"].T for r in raw]  # stored (n_features, d_model)
    else:
        folder = save_saelens(dset, tmp_path / "sl", model)
        cfgs = [json.loads((folder / f"layer_{l}" / "cfg.json").read_text()) for l in range(s.n_layers)]
        raw = [load_file(str(folder / f"layer_{l}" / "sae_weights.safetensors")) for l in range(s.n_layers)]
        hooks = [c["metadata"]["hook_name"] for c in cfgs]
        W_enc = [r["W_enc"] for r in raw]  # stored (d_in, d_sae)
    assert hooks[0].endswith(input_hook(model))
    assert hooks[0].endswith("ln2.hook_normalized" if s.model_type == "gemma3_text" else "mlp.hook_in")
    back = load_dictionaries(folder, model)
    for l in range(s.n_layers):
        tc, x = dset.layers[l], mlp_in[l]
        want = tc.pre(x)
        d = _maxdiff(back.layers[l].pre(x), want)
        assert d <= TOL, f"layer {l}: read back {d:.2e}"
        y = unfolded[hooks[l]]
        theirs = y @ W_enc[l] + raw[l]["b_enc"]
        assert _maxdiff(theirs, want) <= TOL, f"layer {l} at {hooks[l]}: external {_maxdiff(theirs, want):.2e}"
        assert torch.equal(back.layers[l].encode(x) != 0, tc.encode(x) != 0)
        if tc.W_skip is not None:  # both libraries store W_skip (d_out, d_in) and add x @ W_skip.T to the output
            out = y @ raw[l]["W_skip"].T + raw[l]["b_dec"]
            ref = x @ tc.W_skip + tc.b_dec
            assert _maxdiff(out, ref) <= TOL, f"layer {l}: skip + b_dec {_maxdiff(out, ref):.2e}"
            assert _maxdiff(back.layers[l].decode(torch.zeros_like(want), x), ref) <= TOL


@pytest.mark.parametrize("fmt", ["circuit_tracer", "saelens"])
def test_dictionaries_trained_on_mlp_hook_in_are_read_for_mlp_in(model, unfolded, mlp_in, tmp_path: Path,
                                                                  fmt: str) -> None:
    """A file written elsewhere for mlp.hook_in (raw tensors, not logitlab's writer) gives, on logitlab's mlp_in,
    the features its tensors give on the unfolded model's mlp.hook_in; without the model it is refused."""
    s = model.spec
    g = torch.Generator().manual_seed(3)
    F, D = 20, s.d_model
    raw = [{"W_enc": torch.randn(F, D, generator=g) / D ** 0.5, "b_enc": torch.randn(F, generator=g) * 0.2,
            "W_dec": torch.randn(F, D, generator=g) * 0.1, "b_dec": torch.randn(D, generator=g) * 0.1,
            "W_skip": torch.randn(D, D, generator=g) * 0.05} for _ in range(s.n_layers)]
    folder = tmp_path / fmt
    if fmt == "circuit_tracer":
        folder.mkdir()
        (folder / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                            "feature_output_hook: hook_mlp_out\n")
        for l, r in enumerate(raw):
            save_file(r, str(folder / f"layer_{l}.safetensors"))
    else:
        for l, r in enumerate(raw):
            (folder / f"layer_{l}").mkdir(parents=True)
            save_file({**r, "W_enc": r["W_enc"].T.contiguous()}, str(folder / f"layer_{l}" / "sae_weights.safetensors"))
            cfg = {"architecture": "skip_transcoder", "d_in": D, "d_sae": F, "d_out": D, "apply_b_dec_to_input": False,
                   "normalize_activations": "none", "hook_name": f"blocks.{l}.mlp.hook_in",
                   "hook_name_out": f"blocks.{l}.hook_mlp_out"}
            (folder / f"layer_{l}" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(LogitlabError, match="mlp.hook_in.*needs that weight"):
        load_dictionaries(folder)
    dset = load_dictionaries(folder, model)
    for l in range(s.n_layers):
        y, x = unfolded[f"blocks.{l}.mlp.hook_in"], mlp_in[l]
        theirs = y @ raw[l]["W_enc"].T + raw[l]["b_enc"]
        ours = dset.layers[l].pre(x)
        assert _maxdiff(ours, theirs) <= TOL, f"layer {l}: {_maxdiff(ours, theirs):.2e}"
        skip = y @ raw[l]["W_skip"].T + raw[l]["b_dec"]
        ours_skip = dset.layers[l].decode(torch.zeros_like(ours), x)
        assert _maxdiff(ours_skip, skip) <= TOL, f"layer {l}: skip {_maxdiff(ours_skip, skip):.2e}"


def test_ln2_hook_normalized_needs_no_conversion(model, unfolded, mlp_in, tmp_path: Path) -> None:
    """Written without a model, the input is ln2.hook_normalized: the same tensors as in memory, read back
    unchanged without a model; on RMSNorm models it is the unfolded bridge's ln2.hook_normalized."""
    s = model.spec
    dset = random_dictionaries(s.d_model, s.n_layers, "relu")
    folder = save_circuit_tracer(dset, tmp_path / "tc")
    assert yaml.safe_load((folder / "config.yaml").read_text())["feature_input_hook"] == "ln2.hook_normalized"
    back = load_dictionaries(folder)
    for a, b in zip(dset.layers, back.layers):
        assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.b_enc, b.b_enc)
    if s.normalization == "RMS":
        for l in range(s.n_layers):
            d = _maxdiff(unfolded[f"blocks.{l}.ln2.hook_normalized"], mlp_in[l])
            assert d <= TOL, f"layer {l}: ln2.hook_normalized vs mlp_in {d:.2e}"


def test_refusals(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A zero norm weight cannot be divided out; a checkpoint that cannot be read, or is not the loaded model's,
    is refused by name."""
    import logitlab.features.formats as formats
    s = model.spec
    dset = random_dictionaries(s.d_model, s.n_layers, "relu")
    w, b = mlp_norm(model)
    w[1, 3] = 0.0
    with monkeypatch.context() as mp:
        mp.setattr(formats, "mlp_norm", lambda m: (w, b))
        mp.setattr(formats, "input_hook", lambda m=None: "mlp.hook_in")  # Gemma too: the division itself
        with pytest.raises(LogitlabError, match=r"layer 1: the pre-MLP norm's weight is about 0 at 1 coordinate"):
            save_saelens(dset, tmp_path / "zero", model)

    class Elsewhere:  # the loaded model, its checkpoint somewhere else
        spec, name, runner, dtype = model.spec, model.name, model.runner, model.dtype
        source = str(tmp_path / "gone")
    with pytest.raises(LogitlabError, match="unfolded pre-MLP norm weights.*cannot be loaded"):
        mlp_norm(Elsewhere())
    Elsewhere.source = str(make_model_folder(KIND[s.model_type], tmp_path / "other"))  # the norms tiny.py draws
    with pytest.raises(LogitlabError, match="is not the loaded model"):
        mlp_norm(Elsewhere())


# ---- Gemma Scope 2's own layout -------------------------------------------------------------------------------
def _gs2(tc) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """A logitlab JumpReLU transcoder as Gemma Scope 2 stores it (circuit-tracer's loader transposes w_enc and
    affine_skip_connection into its W_enc, W_skip)."""
    s = {"w_enc": tc.W_enc, "w_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec, "threshold": tc.threshold}
    if tc.W_skip is not None:
        s["affine_skip_connection"] = tc.W_skip  # (d_in, d_out): circuit-tracer adds x @ W_skip.T = x @ this
    return {k: v.contiguous() for k, v in s.items()}


def _ct(tc) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The same transcoder in circuit-tracer's own layout (W_enc, W_skip stored transposed)."""
    s = {"W_enc": tc.W_enc.T, "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec,
         "activation_function.threshold": tc.threshold}
    if tc.W_skip is not None:
        s["W_skip"] = tc.W_skip.T
    return {k: v.contiguous() for k, v in s.items()}


def _write_set(folder: Path, states: list[dict[str, torch.Tensor]], hook: str = "ln2.hook_normalized",
               listed: bool = True, **extra: object) -> Path:
    """A circuit-tracer folder: config.yaml + one file per layer, listed under transcoders: (layer 0 by an absolute
    path, the others relative to the folder, in Gemma Scope 2's repository naming) or as layer_{i}.safetensors."""
    folder.mkdir(parents=True)
    paths = []
    for l, s in enumerate(states):
        rel = Path(f"transcoder/layer_{l}_width_16k_l0_small/params.safetensors") if listed else \
            Path(f"layer_{l}.safetensors")
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(s, str(folder / rel))
        paths.append(str(folder / rel) if l == 0 else str(rel))
    config = {"model_kind": "transcoder_set", "feature_input_hook": hook, "feature_output_hook": "hook_mlp_out",
              **extra}
    if listed:
        config["transcoders"] = paths
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _reference(s: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, output) of a Gemma Scope 2 file computed with plain torch as circuit-tracer 0.5 does:
    jumprelu(x @ W_enc.T + b_enc) with W_enc = w_enc.T, decoded plus x @ W_skip.T with W_skip = skip.T."""
    W_enc = s["w_enc"].T
    pre = x @ W_enc.T + s["b_enc"]
    f = pre * (pre > s["threshold"])
    out = f @ s["w_dec"] + s["b_dec"]
    if "affine_skip_connection" in s:
        W_skip = s["affine_skip_connection"].T
        out = out + x @ W_skip.T
    return f, out


@pytest.mark.parametrize("listed", [True, False], ids=["transcoders-list", "layer-files"])
@pytest.mark.parametrize("variant", ["jumprelu", "jumprelu_skip"])
def test_gemma_scope_2_layout_reads_as_circuit_tracers(tmp_path: Path, variant: str, listed: bool) -> None:
    """The same weights in Gemma Scope 2's layout and in circuit-tracer's load into the same features and outputs,
    which are circuit-tracer's computation on the raw tensors; the thresholds matter on these inputs."""
    D, L = 16, 3
    dset = random_dictionaries(D, L, variant, seed=4)
    gs = _write_set(tmp_path / "gs", [_gs2(tc) for tc in dset.layers], listed=listed, model_name="gemma-3-270m")
    ct = _write_set(tmp_path / "ct", [_ct(tc) for tc in dset.layers], listed=False)
    a, b = load_dictionaries(gs), load_dictionaries(ct)
    assert a.n_layers == L and a.model == "gemma-3-270m" and a.kind == "transcoder"
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(5))
    for l in range(L):
        ta, tb = a.layers[l], b.layers[l]
        assert ta.activation == "jumprelu" and (ta.W_skip is not None) == variant.endswith("_skip")
        fa, fb = ta.encode(x), tb.encode(x)
        f_ref, out_ref = _reference(_gs2(dset.layers[l]), x)
        assert _maxdiff(fa, fb) <= 1e-6 and _maxdiff(ta(x), tb(x)) <= 1e-6, \
            f"layer {l}: features {_maxdiff(fa, fb):.2e}, outputs {_maxdiff(ta(x), tb(x)):.2e}"
        assert _maxdiff(fa, f_ref) <= 1e-6 and _maxdiff(ta(x), out_ref) <= 1e-6, \
            f"layer {l}: against the raw tensors {_maxdiff(fa, f_ref):.2e}, {_maxdiff(ta(x), out_ref):.2e}"
        pre = ta.pre(x)
        assert 0.05 < float((fa != 0).float().mean()) < 0.95
        assert bool(((pre > 0) & (pre <= ta.threshold)).any()), "no pre-activation between 0 and its threshold"


def test_gemma_scope_2_transposition_mistakes_are_caught(tmp_path: Path) -> None:
    """The comparison above has teeth: w_enc or affine_skip_connection stored the other way round (square, so
    no shape check can catch it) changes features or outputs far beyond 1e-6; non-square, w_enc is refused."""
    D = 16
    dset = random_dictionaries(D, 1, "jumprelu_skip", seed=6, n_features=D)
    tc = dset.layers[0]
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(7))
    right = load_dictionaries(_write_set(tmp_path / "right", [_gs2(tc)])).layers[0]
    assert _maxdiff(right.encode(x), tc.encode(x)) <= 1e-6 and _maxdiff(right(x), tc(x)) <= 1e-6
    enc_t = load_dictionaries(_write_set(tmp_path / "enc", [{**_gs2(tc), "w_enc": tc.W_enc.T.contiguous()}])).layers[0]
    assert _maxdiff(enc_t.encode(x), tc.encode(x)) > 1e-2
    skip_t = load_dictionaries(_write_set(tmp_path / "skip",
                                          [{**_gs2(tc), "affine_skip_connection": tc.W_skip.T.contiguous()}])).layers[0]
    assert _maxdiff(skip_t.encode(x), tc.encode(x)) <= 1e-6 and _maxdiff(skip_t(x), tc(x)) > 1e-2
    wide = random_dictionaries(D, 1, "jumprelu", seed=6).layers[0]  # 48 features
    with pytest.raises(LogitlabError, match=r"w_enc \(48, 16\), expected \(16, 48\)"):
        load_dictionaries(_write_set(tmp_path / "wide", [{**_gs2(wide), "w_enc": wide.W_enc.T.contiguous()}]))


def test_gemma_scope_2_malformed_files_are_refused(tmp_path: Path) -> None:
    """Missing, unknown or misshapen tensors, both encoders or neither, a set mixing layouts, a hub address and
    a missing file are refused by name."""
    D = 16
    tcs = random_dictionaries(D, 2, "jumprelu", seed=8).layers
    good = [_gs2(tc) for tc in tcs]
    cases = {
        "lacks": ([{k: v for k, v in good[0].items() if k != "threshold"}, good[1]], r"lacks \['threshold'\]"),
        "unknown": ([{**good[0], "norm_factor": torch.ones(1)}, good[1]],
                    r"tensors circuit-tracer does not read: \['norm_factor'\]"),
        "b_dec": ([{**good[0], "b_dec": torch.zeros(D + 1)}, good[1]], r"w_dec \(48, 16\), expected \(48, 17\)"),
        "threshold": ([{**good[0], "threshold": torch.zeros(47)}, good[1]], r"threshold \(47,\), expected \(48,\)"),
        "both": ([{**good[0], "W_enc": good[0]["w_enc"].T.contiguous()}, good[1]], "both w_enc .* ambiguous"),
        "neither": ([{k: v for k, v in good[0].items() if k != "w_enc"}, good[1]], "neither W_enc .* nor w_enc"),
        "mixed": ([good[0], _ct(tcs[1])], r"layers \[0\] are in Gemma Scope 2's layout .* layers \[1\] in "
                                          "circuit-tracer's"),
    }
    for name, (states, message) in cases.items():
        with pytest.raises(LogitlabError, match=message):
            load_dictionaries(_write_set(tmp_path / name, states))
    folder = _write_set(tmp_path / "hub", good)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / config["transcoders"][1]).write_bytes(b"not a safetensors file")
    with pytest.raises(LogitlabError, match="layer_1_width_16k_l0_small/params.safetensors is not a readable"):
        load_dictionaries(folder)
    for listed, message in [(["hf://google/gemma-scope-2-270m-pt/transcoder/params.safetensors"], "hub address"),
                            ([config["transcoders"][0], "nowhere/params.safetensors"], "layer 1's transcoder file .*"
                                                                                      "does not exist"),
                            ("params.safetensors", "must be a list of file paths")]:
        (folder / "config.yaml").write_text(yaml.safe_dump({**config, "transcoders": listed}))
        with pytest.raises(LogitlabError, match=message):
            load_dictionaries(folder)


def test_gemma_scope_2_on_a_model(model, unfolded, mlp_in, tmp_path: Path) -> None:  # noqa: ANN001
    """On a model: files on mlp.hook_in are converted to logitlab's mlp_in (the raw tensors on the unfolded
    model's mlp.hook_in give logitlab's features on mlp_in), like circuit-tracer's own layout; the width, layer
    count and model name are checked."""
    s = model.spec
    dset = random_dictionaries(s.d_model, s.n_layers, "jumprelu_skip", seed=9)
    states = [_gs2(tc) for tc in dset.layers]
    gs = _write_set(tmp_path / "gs", states, hook="mlp.hook_in", model_name=model.name)
    ct = _write_set(tmp_path / "ct", [_ct(tc) for tc in dset.layers], hook="mlp.hook_in", listed=False)
    with pytest.raises(LogitlabError, match="mlp.hook_in.*needs that weight"):
        load_dictionaries(gs)
    a, b = load_dictionaries(gs, model), load_dictionaries(ct, model)
    for l in range(s.n_layers):
        x, y = mlp_in[l], unfolded[f"blocks.{l}.mlp.hook_in"]
        f_ref, out_ref = _reference(states[l], y)
        fa, oa = a.layers[l].encode(x), a.layers[l](x)
        assert _maxdiff(fa, b.layers[l].encode(x)) <= 1e-6 and _maxdiff(oa, b.layers[l](x)) <= 1e-6
        assert _maxdiff(a.layers[l].pre(x), y @ states[l]["w_enc"] + states[l]["b_enc"]) <= TOL
        assert _maxdiff(oa, out_ref) <= TOL, f"layer {l}: output on mlp.hook_in {_maxdiff(oa, out_ref):.2e}"
        assert torch.equal(fa != 0, f_ref != 0)
    with pytest.raises(LogitlabError, match="trained on 'gemma-2-2b'"):
        load_dictionaries(_write_set(tmp_path / "other", states, hook="mlp.hook_in", model_name="gemma-2-2b"), model)
    with pytest.raises(LogitlabError, match=f"covers? {s.n_layers - 1} layers"):
        load_dictionaries(_write_set(tmp_path / "short", states[:-1], hook="mlp.hook_in"), model)
