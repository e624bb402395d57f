"""Dictionaries (logitlab.features): the in-memory type, circuit-tracer's and SAELens's formats, quality metrics,
the replacement model and training, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from logitlab.errors import LogitlabError
from logitlab.features import DictionarySet, Transcoder, load_dictionaries
from logitlab.features.formats import hook_point, load_saelens, save_circuit_tracer, save_saelens
from logitlab.features.quality import agreement, jacobian_stats, layer_quality, mlp_io, replacement_final
from logitlab.features.train import TrainConfig, train_transcoders

DATA = Path(__file__).resolve().parents[1] / "data" / "saelens"
KINDS = ["gemma3", "llama_gqa"]  # post-norms; grouped KV heads


def random_tc(d: int, F: int, activation: str = "relu", skip: bool = False, seed: int = 0) -> Transcoder:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return Transcoder(W_enc=r(d, F) * 0.3, b_enc=r(F) * 0.1, W_dec=r(F, d) * 0.3, b_dec=r(d) * 0.1,
                      activation=activation, threshold=r(F).abs() * 0.2 if activation == "jumprelu" else None,
                      k=4 if activation == "topk" else None, W_skip=r(d, d) * 0.1 if skip else None)


def random_set(model, F: int = 24, activation: str = "relu", skip: bool = False, kind: str = "transcoder") -> DictionarySet:
    d, L = model.spec.d_model, model.spec.n_layers
    tcs = tuple(random_tc(d, F, activation, skip, seed=i) for i in range(L))
    return DictionarySet(layers=tcs, kind=kind, input_point="mlp_in" if kind == "transcoder" else "mlp_out",
                         model=model.name, d_model=d)


def assert_same(a: DictionarySet, b: DictionarySet) -> None:
    assert (a.kind, a.input_point, a.output_point, a.d_model, a.n_layers) == \
        (b.kind, b.input_point, b.output_point, b.d_model, b.n_layers)
    for x, y in zip(a.layers, b.layers):
        assert (x.activation, x.k) == (y.activation, y.k)
        tx, ty = x.tensors(), y.tensors()
        assert tx.keys() == ty.keys()
        for k in tx:
            assert torch.equal(tx[k], ty[k]), f"{k}: max diff {(tx[k] - ty[k]).abs().max()}"


# ---- the type -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_encode_decode_by_hand(activation: str) -> None:
    tc = random_tc(8, 12, activation, skip=True)
    x = torch.randn(5, 8)
    pre = x @ tc.W_enc + tc.b_enc
    f = torch.zeros_like(pre)
    for i in range(5):
        for j in range(12):
            p = float(pre[i, j])
            if activation == "relu":
                f[i, j] = max(p, 0.0)
            elif activation == "jumprelu":
                f[i, j] = p if p > float(tc.threshold[j]) else 0.0
            else:
                kth = float(pre[i].sort(descending=True).values[tc.k - 1])
                f[i, j] = max(p, 0.0) if p >= kth else 0.0
    assert torch.allclose(tc.pre(x), pre)
    assert torch.allclose(tc.encode(x), f), (tc.encode(x) - f).abs().max()
    out = f @ tc.W_dec + tc.b_dec + x @ tc.W_skip
    assert torch.allclose(tc.decode(f, x), out, atol=1e-6)
    assert torch.allclose(tc(x), out, atol=1e-6)
    assert torch.allclose(tc.decode(f), f @ tc.W_dec + tc.b_dec)  # no input: no skip term


def test_validation() -> None:
    tc = random_tc(8, 12)
    with pytest.raises(LogitlabError, match="features"):
        Transcoder(W_enc=tc.W_enc, b_enc=tc.b_enc, W_dec=tc.W_dec[:5], b_dec=tc.b_dec)
    with pytest.raises(LogitlabError, match="threshold"):
        Transcoder(W_enc=tc.W_enc, b_enc=tc.b_enc, W_dec=tc.W_dec, b_dec=tc.b_dec, activation="jumprelu")
    with pytest.raises(LogitlabError, match="integer k"):
        Transcoder(W_enc=tc.W_enc, b_enc=tc.b_enc, W_dec=tc.W_dec, b_dec=tc.b_dec, activation="topk")
    with pytest.raises(LogitlabError, match="unknown activation"):
        Transcoder(W_enc=tc.W_enc, b_enc=tc.b_enc, W_dec=tc.W_dec, b_dec=tc.b_dec, activation="gelu")  # type: ignore[arg-type]
    with pytest.raises(LogitlabError, match="same number of features"):
        DictionarySet(layers=(tc, random_tc(8, 10)), d_model=8)
    with pytest.raises(LogitlabError, match="d_model"):
        DictionarySet(layers=(tc,), d_model=9)
    moved = tc.to("cpu", torch.float64)
    assert moved.W_enc.dtype == torch.float64 and moved.threshold is None


# ---- formats ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tiny_model", KINDS, indirect=True)
@pytest.mark.parametrize("activation,skip", [("relu", False), ("jumprelu", True), ("topk", False)])
def test_round_trip_both_formats(tiny_model, tmp_path: Path, activation: str, skip: bool) -> None:
    dset = random_set(tiny_model, activation=activation, skip=skip)
    save_circuit_tracer(dset, tmp_path / "ct")
    assert_same(dset, load_dictionaries(tmp_path / "ct", tiny_model))
    if activation != "topk":  # SAELens has no TopK transcoder
        save_saelens(dset, tmp_path / "sl")
        assert_same(dset, load_dictionaries(tmp_path / "sl", tiny_model))
    else:
        with pytest.raises(LogitlabError, match="TopK transcoder"):
            save_saelens(dset, tmp_path / "sl")
    sae = random_set(tiny_model, activation=activation, kind="sae")
    save_saelens(sae, tmp_path / "sae")
    assert_same(sae, load_dictionaries(tmp_path / "sae", tiny_model))


@pytest.mark.parametrize("name", ["standard", "jumprelu", "topk", "jumprelu_skip_transcoder"])
def test_saelens_written_file_gives_saelens_features(name: str, tmp_path: Path) -> None:
    """Files written by SAELens itself (benchmarks/make_saelens_fixture.py) give the features SAELens computed."""
    import shutil

    from safetensors.torch import load_file
    folder = DATA / name
    if "transcoder" in name:  # on mlp.hook_in, which needs a model to convert: the same tensors on a point without
        folder = Path(shutil.copytree(DATA / name, tmp_path / name))  # conversion, to compare on the same inputs
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == "blocks.0.mlp.hook_in"
        with pytest.raises(LogitlabError, match="needs that weight"):
            load_saelens(folder)
        cfg["metadata"]["hook_name"] = "blocks.0.ln2.hook_normalized"
        (folder / "cfg.json").write_text(json.dumps(cfg))
    dset = load_saelens(folder)
    exp = load_file(str(DATA / name / "expected.safetensors"))
    tc = dset.layers[0]
    f = tc.encode(exp["x"])
    assert (f != 0).any()
    assert torch.equal(f != 0, exp["features"] != 0), "active features differ"
    assert torch.allclose(f, exp["features"], atol=1e-5), (f - exp["features"]).abs().max()
    assert torch.allclose(tc(exp["x"]), exp["out"], atol=1e-5), (tc(exp["x"]) - exp["out"]).abs().max()
    assert dset.kind == ("transcoder" if "transcoder" in name else "sae")
    if name == "jumprelu":  # the fixture has a negative threshold, where SAELens's JumpReLU still applies a ReLU
        assert json.loads((DATA / name / "cfg.json").read_text())["architecture"] == "jumprelu"


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_mismatches_are_refused(tiny_model, tmp_path: Path) -> None:
    d, L = tiny_model.spec.d_model, tiny_model.spec.n_layers
    wide = DictionarySet(layers=tuple(random_tc(d + 8, 10, seed=i) for i in range(L)), d_model=d + 8,
                         model=tiny_model.name)
    with pytest.raises(LogitlabError, match="width"):
        wide.check(tiny_model)
    short = DictionarySet(layers=(random_tc(d, 10),), d_model=d, model=tiny_model.name)
    with pytest.raises(LogitlabError, match="cover 1 layers"):
        short.check(tiny_model)
    other = random_set(tiny_model)
    other = DictionarySet(layers=other.layers, d_model=d, model="google/gemma-2-2b")
    save_circuit_tracer(other, tmp_path / "other")
    with pytest.raises(LogitlabError, match="trained on 'google/gemma-2-2b'"):
        load_dictionaries(tmp_path / "other", tiny_model)
    load_dictionaries(tmp_path / "other", tiny_model, check_name=False)
    # hook points
    for hook in ("blocks.3.hook_resid_post", "blocks.3.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_in"):
        with pytest.raises(LogitlabError, match="unsupported hook point"):
            hook_point(hook)
    assert hook_point("blocks.2.ln2.hook_normalized") == ("mlp_in", 2)
    assert hook_point("hook_mlp_out") == ("mlp_out", None)
    cfg = (tmp_path / "other" / "config.yaml")
    cfg.write_text(cfg.read_text().replace("ln2.hook_normalized", "hook_resid_mid"))
    with pytest.raises(LogitlabError, match="hook_resid_mid"):
        load_dictionaries(tmp_path / "other")
    cfg.write_text("model_kind: cross_layer_transcoder\n")
    with pytest.raises(LogitlabError, match="cross-layer"):
        load_dictionaries(tmp_path / "other")
    # post-norm model: mlp.hook_out is before the norm
    cfg.write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n")
    with pytest.raises(LogitlabError, match="post-MLP norm"):
        load_dictionaries(tmp_path / "other", tiny_model, check_name=False)
    # an SAE folder of a residual-stream point
    sae = tmp_path / "sae"
    save_saelens(random_set(tiny_model, kind="sae"), sae)
    c = json.loads((sae / "layer_0" / "cfg.json").read_text())
    c["metadata"]["hook_name"] = "blocks.0.hook_resid_post"
    (sae / "layer_0" / "cfg.json").write_text(json.dumps(c))
    with pytest.raises(LogitlabError, match="hook_resid_post"):
        load_dictionaries(sae)


def test_hub_name_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("logitlab.model.hub.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(LogitlabError, match="hub cannot be reached") as e:
        load_dictionaries("google/gemma-scope-2-270m-pt")
    assert "train-transcoders" in str(e.value)


# ---- quality and the replacement model -----------------------------------------------------------------------
@pytest.mark.parametrize("tiny_model", KINDS, indirect=True)
def test_replacement_loop_and_agreement(tiny_model) -> None:
    from logitlab.task import tokenize_task, task_from_dict
    import yaml
    from tests.tiny import TASK_YAML
    tt = tokenize_task(task_from_dict(yaml.safe_load(TASK_YAML)), tiny_model.tokenizer)
    r = tiny_model.runner
    # the loop with the real MLP is the runner's own forward pass
    real = r.run_from(0, "pre", r.embed_sum(tt.tokens))
    mine = replacement_final(tiny_model, tt.tokens, lambda _l, _x, true_out: true_out)
    assert torch.allclose(real, mine, atol=1e-5), (real - mine).abs().max()
    io = mlp_io(tiny_model, tt.tokens)
    cache = r.run_with_cache(tt.tokens)
    for l, (x_in, y) in io.items():
        assert torch.allclose(y, cache.mlp_out[l], atol=1e-6)
        assert torch.allclose(r.mlp(l, cache.resid_mid[l]), y, atol=1e-5)
    dset = random_set(tiny_model, activation="jumprelu", skip=True)
    exact = agreement(dset, tiny_model, tt.tokens, tt.final_pos, tt.correct_ids, tt.incorrect_ids, error_terms=True)
    assert exact.kl < 1e-8 and exact.top1 == 1.0
    assert abs(exact.logit_diff_real - exact.logit_diff_replacement) < 1e-4
    rough = agreement(dset, tiny_model, tt.tokens, tt.final_pos, tt.correct_ids, tt.incorrect_ids)
    assert rough.kl > 1e-3, rough  # random dictionaries do not reproduce the model
    assert rough.logit_diff_real == pytest.approx(exact.logit_diff_real)
    q = layer_quality(dset, tiny_model, tt.tokens)
    assert len(q) == tiny_model.spec.n_layers and all(0 <= x.dead_fraction <= 1 for x in q)
    assert all(x.l0 > 0 for x in q)


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_quality_by_hand(tiny_model) -> None:
    """EV 1 for a dictionary that reproduces the output exactly (W_skip fit by least squares on a linear target)."""
    tokens = torch.randint(2, 200, (3, 9))
    io = mlp_io(tiny_model, tokens)
    dset = random_set(tiny_model)
    q = layer_quality(dset, tiny_model, tokens)
    x, y = io[1][0][:, 1:].reshape(-1, 64), io[1][1][:, 1:].reshape(-1, 64)
    tc = dset.layers[1]
    yhat = tc(x)
    ev = 1 - ((y - yhat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    f = tc.encode(x)
    assert q[1].explained_variance == pytest.approx(float(ev), rel=1e-4)
    assert q[1].l0 == pytest.approx(float((f != 0).sum(-1).float().mean()), rel=1e-5)
    assert q[1].dead_fraction == pytest.approx(float(((f != 0).sum(0) == 0).float().mean()))


# ---- training -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_training_reduces_error_and_resumes(tiny_model, tmp_path: Path) -> None:
    cfg = TrainConfig(n_features=32, n_tokens=6000, k=8, seq_len=16, chunk_seqs=8, batch_tokens=32, lr=3e-3,
                      holdout_seqs=8, epochs=1)
    dset = train_transcoders(tiny_model, tmp_path / "a", cfg, progress=False)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    evs = [m["explained_variance"] for m in metrics["layers"]]
    assert min(evs) > 0.2, evs  # the initial (random) dictionaries explain none: EV < 0 (checked below)
    # the same pipeline after 0 steps (lr 0: the initial dictionaries, thresholds at the first steps' k-th value)
    still = train_transcoders(tiny_model, tmp_path / "z", TrainConfig(**{**cfg.__dict__, "lr": 0.0}), progress=False)
    tokens = torch.randint(2, 200, (4, 16))
    before = [q.explained_variance for q in layer_quality(still, tiny_model, tokens)]
    after = [q.explained_variance for q in layer_quality(dset, tiny_model, tokens)]
    assert all(a > b + 0.2 for a, b in zip(after, before)), (before, after)
    again = load_dictionaries(tmp_path / "a", tiny_model)
    assert_same(dset, again)
    # resume: a run stopped part-way and continued equals one run straight through
    (tmp_path / "b").mkdir()
    n_chunks = -(-(-(-cfg.n_tokens // (cfg.seq_len - 1))) // cfg.chunk_seqs)
    resumed = _stopped_and_resumed(tiny_model, tmp_path / "b", cfg, n_chunks // 2)
    for x, y in zip(dset.layers, resumed.layers):
        assert torch.allclose(x.W_enc, y.W_enc, atol=1e-5), (x.W_enc - y.W_enc).abs().max()
    with pytest.raises(LogitlabError, match="other settings"):
        train_transcoders(tiny_model, tmp_path / "b",
                          TrainConfig(n_features=16, n_tokens=6000, k=8, seq_len=16, epochs=1), progress=False)


def _stopped_and_resumed(model, folder: Path, cfg: TrainConfig, after: int):  # noqa: ANN001, ANN202
    """Train into ``folder``, interrupted after ``after`` chunks (checkpointing every chunk), then continue."""
    import logitlab.features.train as tr
    orig, calls = tr.mlp_io, {"n": 0}

    def stop(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return orig(*a, **k)
    tr.mlp_io = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train_transcoders(model, folder, cfg, progress=False, checkpoint_every=1)
    finally:
        tr.mlp_io = orig
    assert not (folder / "layer_0.safetensors").exists()
    return train_transcoders(model, folder, cfg, progress=False, checkpoint_every=1)


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)  # the passes do not depend on the family
def test_epochs_repeat_the_training_tokens_and_resume(tiny_model, tmp_path: Path) -> None:
    """``epochs`` = 2 runs the model on the same training sequences twice, in the same order, and lowers the
    held-out error of the one-pass run; a run stopped in the second pass and continued equals one run through."""
    import logitlab.features.train as tr
    cfg = TrainConfig(n_features=32, n_tokens=3000, k=8, seq_len=16, chunk_seqs=8, batch_tokens=32, lr=3e-3,
                      holdout_seqs=8, epochs=1)
    two = TrainConfig(**{**cfg.__dict__, "epochs": 2})
    orig, seen = tr.mlp_io, []

    def spy(model, tokens, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(tokens.clone())
        return orig(model, tokens, *a, **k)
    tr.mlp_io = spy
    try:
        one_set = train_transcoders(tiny_model, tmp_path / "one", cfg, progress=False)
        n_one = len(seen)
        seen.clear()
        two_set = train_transcoders(tiny_model, tmp_path / "two", two, progress=False)
    finally:
        tr.mlp_io = orig
    per_epoch = -(-tr.n_train_seqs(cfg) // cfg.chunk_seqs)
    held = n_one - per_epoch  # the metrics' passes over the held-out sequences
    assert held > 0 and len(seen) == 2 * per_epoch + held
    for a, b in zip(seen[:per_epoch], seen[per_epoch:2 * per_epoch]):
        assert torch.equal(a, b)
    assert not torch.equal(seen[0], seen[1])
    ev = {name: [m["explained_variance"] for m in json.loads((tmp_path / name / "metrics.json").read_text())["layers"]]
          for name in ("one", "two")}
    assert sum(ev["two"]) > sum(ev["one"]), ev
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["epochs"] == 2
    assert tr._settings(cfg).keys() == tr._settings(two).keys() - {"epochs"}  # one pass keeps the old cache key
    resumed = _stopped_and_resumed(tiny_model, tmp_path / "r", two, per_epoch + 2)  # stopped in the second pass
    for x, y in zip(two_set.layers, resumed.layers):
        assert torch.allclose(x.W_enc, y.W_enc, atol=1e-5), (x.W_enc - y.W_enc).abs().max()
    assert not torch.allclose(one_set.layers[0].W_enc, two_set.layers[0].W_enc, atol=1e-3)


@pytest.mark.parametrize("skip", [False, True])
def test_written_transcoder_is_the_trained_one(skip: bool) -> None:
    """Folding the input and output normalisation (and the skip connection) into the written weights is exact:
    the same features, and ``decode`` equal to the trained output mapped back to the model's units."""
    from logitlab.features.train import _Layer
    g = torch.Generator().manual_seed(3)
    D, F = 12, 20
    st = _Layer(D, TrainConfig(n_features=F, k=4, skip=skip), g)
    with torch.no_grad():
        for t in st.params.values():
            t.copy_(torch.randn(t.shape, generator=g))
    assert ("W_skip" in st.params) == skip
    mx, my = torch.randn(D, generator=g), torch.randn(D, generator=g)
    st.scales = {"x_mean": mx, "x_scale": torch.tensor(2.5), "y_mean": my, "y_scale": torch.tensor(0.3)}
    st.kth = 0.5
    tc = st.transcoder()
    assert (tc.W_skip is not None) == skip
    x = torch.randn(7, D, generator=g, dtype=torch.float64) * 3
    xn = (x - mx.double()) / 2.5
    p = {k: v.detach().double() for k, v in st.params.items()}
    pre_n = xn @ p["W_enc"] + p["b_enc"]
    tc64 = tc.to(dtype=torch.float64)
    assert torch.allclose(tc64.pre(x), pre_n, atol=1e-4)
    f = tc64.encode(x)
    assert torch.equal(f != 0, pre_n > 0.5)
    lin = p["b_dec"] + (xn @ p["W_skip"] if skip else 0)
    want = 0.3 * (f @ p["W_dec"] + lin) + my.double()
    assert torch.allclose(tc64.decode(f, x), want, atol=1e-4), (tc64.decode(f, x) - want).abs().max()


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_training_a_skip_transcoder(tiny_model, tmp_path: Path) -> None:
    cfg = TrainConfig(n_features=32, n_tokens=3000, k=8, seq_len=16, chunk_seqs=8, batch_tokens=32, lr=3e-3,
                      holdout_seqs=8, skip=True, epochs=1)
    dset = train_transcoders(tiny_model, tmp_path / "s", cfg, progress=False)
    assert all(tc.W_skip is not None and tc.W_skip.abs().max() > 0 for tc in dset.layers)
    evs = [m["explained_variance"] for m in json.loads((tmp_path / "s" / "metrics.json").read_text())["layers"]]
    assert min(evs) > 0.2, evs
    assert_same(dset, load_dictionaries(tmp_path / "s", tiny_model))  # W_skip through circuit-tracer's files
    with pytest.raises(LogitlabError, match="other settings"):  # the same folder without the skip is another run
        train_transcoders(tiny_model, tmp_path / "s", TrainConfig(**{**cfg.__dict__, "skip": False}), progress=False)


@pytest.mark.parametrize("tiny_model", ["gpt2", "gemma3", "qwen3_moe"], indirect=True)
def test_jacobian_stats_against_autograd(tiny_model) -> None:
    """A transcoder whose skip is the MLP's full Jacobian at x (torch.autograd.functional.jacobian) and whose
    features never fire has J_tc·v = J·v there: cosine 1, error 0; a multiple c·J gives error |1 − c|."""
    r, D = tiny_model.runner, tiny_model.spec.d_model
    x = torch.randn(1, D, generator=torch.Generator().manual_seed(0)) * 2
    J = torch.autograd.functional.jacobian(lambda t: r.mlp(1, t[None, None], normed=True)[0, 0], x[0])  # (D, D)
    for c, cos, rel in ((1.0, 1.0, 0.0), (0.5, 1.0, 0.5), (-1.0, -1.0, 2.0)):
        tc = Transcoder(W_enc=torch.zeros(D, 4), b_enc=-torch.ones(4), W_dec=torch.randn(4, D), b_dec=torch.zeros(D),
                        W_skip=c * J.T.contiguous())
        got = jacobian_stats(r, 1, tc, x)
        assert got == pytest.approx((cos, rel), abs=1e-4), (c, got)
    # the features' part: one feature always on, slope 1, adds W_enc[:, 0] ⊗ W_dec[0] to J_tc
    u, w = torch.randn(D, 1), torch.randn(1, D)
    tc = Transcoder(W_enc=u, b_enc=torch.tensor([1e4]), W_dec=w, b_dec=torch.zeros(D), W_skip=J.T - u @ w)
    assert jacobian_stats(r, 1, tc, x) == pytest.approx((1.0, 0.0), abs=1e-4)


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_jacobian_matching_lowers_the_jacobian_error(tiny_model, tmp_path: Path) -> None:
    cfg = TrainConfig(n_features=32, n_tokens=3000, k=8, seq_len=16, chunk_seqs=8, batch_tokens=32, lr=3e-3,
                      holdout_seqs=8, skip=True, epochs=1)
    runs = {}
    for w in (0.0, 1.0):
        train_transcoders(tiny_model, tmp_path / str(w), TrainConfig(**{**cfg.__dict__, "jacobian": w}), progress=False)
        runs[w] = json.loads((tmp_path / str(w) / "metrics.json").read_text())["layers"]
    before = [m["jacobian_rel_error"] for m in runs[0.0]]
    after = [m["jacobian_rel_error"] for m in runs[1.0]]
    assert all(a < b for a, b in zip(after, before)), (before, after)
    assert all(m["explained_variance"] > 0.2 for m in runs[1.0]), runs[1.0]


@pytest.mark.parametrize("tiny_model", ["llama_gqa"], indirect=True)
def test_train_transcoders_command(tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from logitlab.cli import main
    monkeypatch.setenv("LOGITLAB_CACHE", str(tmp_path / "cache"))
    args = ["train-transcoders", "--model", tiny_model.source, "--features", "16", "--tokens", "1500",
            "--device", "cpu", "--layers", "0"]
    assert main(args) == 2  # only layer 0 trained: the set cannot be written yet
    cached = list((tmp_path / "cache" / "transcoders").iterdir())
    assert len(cached) == 1 and (cached[0] / "checkpoints" / "layer_0.pt").exists()
    assert main(args[:-2]) == 0  # the other layers, in the same cached folder
    assert load_dictionaries(cached[0], tiny_model).n_layers == tiny_model.spec.n_layers
    out = tmp_path / "tc"
    rc = main(["train-transcoders", "--model", tiny_model.source, "--out", str(out), "--features", "16",
               "--tokens", "1500", "--epochs", "2", "--device", "cpu"])
    assert rc == 0
    assert json.loads((out / "train_config.json").read_text())["epochs"] == 2
    assert json.loads((cached[0] / "train_config.json").read_text())["epochs"] == 4  # the default
    dset = load_dictionaries(out, tiny_model)
    assert dset.n_features == 16 and dset.layers[0].activation == "jumprelu"
    assert len(json.loads((out / "metrics.json").read_text())["layers"]) == tiny_model.spec.n_layers
