"""Top-activating contexts of dictionary features (logitlab.features.contexts) against a brute force: every
activation computed at once with plain torch, then sorted; the file's format; the commands that write it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from logitlab.features import DictionarySet, Transcoder, load_dictionaries
from logitlab.features.contexts import _TopK, feature_contexts, save_contexts
from logitlab.features.formats import save_circuit_tracer
from logitlab.features.quality import mlp_io

WINDOW = (8, 2)


def random_set(model, F: int, activation: str, kind: str = "transcoder", seed: int = 0) -> DictionarySet:
    d, L = model.spec.d_model, model.spec.n_layers
    tcs = []
    for layer in range(L):
        g = torch.Generator().manual_seed(seed + layer)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        b_enc = r(F) * 0.3
        b_enc[-1] = -1e4  # a feature that never fires: left out of the file
        tcs.append(Transcoder(W_enc=r(d, F) * 0.3, b_enc=b_enc, W_dec=r(F, d) * 0.3, b_dec=r(d) * 0.1,
                              activation=activation,
                              threshold=r(F).abs() * 0.3 if activation == "jumprelu" else None,
                              k=5 if activation == "topk" else None))
    return DictionarySet(layers=tuple(tcs), kind=kind, input_point="mlp_in" if kind == "transcoder" else "mlp_out",
                         model=model.name, d_model=d)


def brute_acts(model, dset: DictionarySet, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's activations (N, T, F) in one forward pass, the activation function written out by hand."""
    io = mlp_io(model, tokens)
    out = []
    for layer, tc in enumerate(dset.layers):
        x = io[layer][1 if dset.kind == "sae" else 0].float()
        pre = x @ tc.W_enc + tc.b_enc  # (N, T, F)
        if tc.activation == "relu":
            f = pre.clamp(min=0)
        elif tc.activation == "jumprelu":
            f = torch.where(pre > tc.threshold, pre, torch.zeros_like(pre))
        else:
            kth = pre.topk(tc.k, dim=-1).values[..., -1:]
            f = torch.where(pre >= kth, pre, torch.zeros_like(pre)).clamp(min=0)
        out.append(f)
    return out


def brute_top(acts: torch.Tensor, feature: int, top: int) -> list[tuple[float, int, int]]:
    """A feature's top positive activations (value, sequence, position), position 0 left out, by sorting all."""
    N, T, _ = acts.shape
    every = [(float(acts[s, t, feature]), s, t) for s in range(N) for t in range(1, T) if acts[s, t, feature] > 0]
    return sorted(every, key=lambda e: (-e[0], e[1], e[2]))[:top]


@pytest.mark.parametrize("tiny_model", ["gemma3", "llama_gqa"], indirect=True)
@pytest.mark.parametrize(("activation", "kind"), [("relu", "transcoder"), ("jumprelu", "transcoder"),
                                                  ("topk", "transcoder"), ("relu", "sae")])
def test_contexts_equal_brute_force(tiny_model, activation: str, kind: str) -> None:
    F, top, N, T = 12, 4, 11, 14
    dset = random_set(tiny_model, F, activation, kind)
    tokens = torch.randint(2, 250, (N, T))
    tokens[:, 0] = tiny_model.tokenizer.bos_token_id
    ctx = feature_contexts(tiny_model, dset, tokens, top=top, window=WINDOW, batch=3)  # 4 batches: merges
    acts = brute_acts(tiny_model, dset, tokens)
    assert ctx.n_tokens == N * (T - 1)
    for layer in range(tiny_model.spec.n_layers):
        a = acts[layer]
        live = [f for f in range(F) if (a[:, 1:, f] > 0).any()]
        assert sorted(ctx.layers[layer]) == live and F - 1 not in live
        for f in live:
            want, got = brute_top(a, f, top), ctx.layers[layer][f]
            assert len(got) == len(want) == min(top, int((a[:, 1:, f] > 0).sum()))
            # the same positions in the same order (no two of these random activations are within float
            # rounding of each other: exact ties are checked in the next test), with the same values
            assert [(c.seq, c.position) for c in got] == [w[1:] for w in want], f"layer {layer} feature {f}"
            gv = torch.tensor([c.max for c in got])
            wv = torch.tensor([w[0] for w in want])
            assert torch.allclose(gv, wv, atol=1e-5, rtol=1e-5), f"layer {layer} feature {f}: {(gv - wv).abs().max()}"
            for c in got:
                lo, hi = max(1, c.position - WINDOW[0]), min(T, c.position + WINDOW[1] + 1)
                assert c.tokens == tuple(tiny_model.tokenizer.decode([i]) for i in tokens[c.seq, lo:hi].tolist())
                assert c.pos == c.position - lo and c.acts[c.pos] == c.max
                diff = (torch.tensor(c.acts) - a[c.seq, lo:hi, f]).abs().max()
                assert diff < 1e-5, f"layer {layer} feature {f} window: max diff {diff}"


def test_running_top_k_order_and_ties() -> None:
    """Exact ties go to the earlier (sequence, position), across batches, as a stable sort of everything does."""
    g = torch.Generator().manual_seed(1)
    N, T, F, top = 9, 6, 5, 3
    acts = torch.randint(-2, 4, (N, T, F), generator=g).float()  # few distinct values: many ties
    acts[:, :, 4] = 0  # never active
    acts[:, 0] = 10.0  # position 0 is never read
    offsets = torch.arange(-2, 2)
    st = _TopK(F, top, len(offsets), torch.device("cpu"))
    for s0 in range(0, N, 2):
        st.update(acts[s0:s0 + 2], s0, 1, offsets)
    got: dict[int, list[tuple[float, int, int]]] = {}
    for f, v, gp, w in zip(st.feat.tolist(), st.val.tolist(), st.gpos.tolist(), st.win.tolist()):
        s, t = divmod(gp, T)
        got.setdefault(f, []).append((v, s, t))
        tt = (torch.tensor([t]) + offsets).clamp(1, T - 1)
        assert w == acts[s, tt, f].tolist()
    for f in range(F):
        want = brute_top(acts, f, top)
        assert got.get(f, []) == want, (f, got.get(f), want)
    assert 4 not in got


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_file_format(tiny_model, tmp_path: Path) -> None:
    dset = random_set(tiny_model, 10, "jumprelu")
    tokens = torch.randint(2, 250, (5, 20))
    tokens[:, 0] = tiny_model.tokenizer.bos_token_id
    ctx = feature_contexts(tiny_model, dset, tokens, top=3, corpus="random tokens")
    path = save_contexts(ctx, tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == "feature_contexts.json"
    assert set(data) == {"version", "corpus", "n_tokens", "layers"}
    assert (data["version"], data["corpus"], data["n_tokens"]) == (1, "random tokens", 5 * 19)
    assert list(data["layers"]) == [str(l) for l in range(tiny_model.spec.n_layers)]
    for layer, feats in data["layers"].items():
        assert "9" not in feats and feats  # the dead feature is left out
        for f, cs in feats.items():
            assert 1 <= len(cs) <= 3
            assert [c["max"] for c in cs] == sorted((c["max"] for c in cs), reverse=True)
            for c, full in zip(cs, ctx.layers[int(layer)][int(f)]):
                assert set(c) == {"tokens", "acts", "max", "pos"}
                assert len(c["tokens"]) == len(c["acts"]) and all(isinstance(t, str) for t in c["tokens"])
                assert c["acts"][c["pos"]] == c["max"] > 0
                assert c["max"] == float(f"{full.max:.4g}") and abs(c["max"] - full.max) <= 5e-4 * full.max
                for a, b in zip(c["acts"], full.acts):
                    assert (a == 0 and type(a) is int) if b == 0 else abs(a - b) <= 5e-4 * abs(b)
                assert len(c["tokens"]) == min(full.position + 3, 20) - max(1, full.position - 8)


@pytest.mark.parametrize("tiny_model", ["llama_gqa"], indirect=True)
def test_feature_contexts_command(tiny_model, tmp_path: Path) -> None:
    from logitlab.cli import main
    from logitlab.features.train import corpus_sequences
    dset = random_set(tiny_model, 8, "relu")
    folder = tmp_path / "tc"
    save_circuit_tracer(dset, folder, tiny_model)
    rc = main(["feature-contexts", "--transcoders", str(folder), "--model", tiny_model.source, "--tokens", "600",
               "--device", "cpu"])
    assert rc == 0
    data = json.loads((folder / "feature_contexts.json").read_text(encoding="utf-8"))
    assert data["n_tokens"] == 5 * 127  # whole 128-token sequences: ceil(600 / 127)
    # no training run in the folder: the corpus's first sequences (the trainer's shuffled order)
    seqs = corpus_sequences(tiny_model.tokenizer, 5, 128)
    want = feature_contexts(tiny_model, load_dictionaries(folder, tiny_model), seqs)
    assert data == json.loads(json.dumps(want.to_dict() | {"corpus": data["corpus"]}))
    assert main(["feature-contexts", "--transcoders", str(tmp_path / "none"), "--model", tiny_model.source]) == 2


@pytest.mark.parametrize("tiny_model", ["gemma3"], indirect=True)
def test_training_writes_contexts_of_held_out_text(tiny_model, tmp_path: Path) -> None:
    from logitlab.features.train import TrainConfig, corpus_contexts, corpus_sequences, n_train_seqs, train_transcoders
    cfg = TrainConfig(n_features=16, n_tokens=600, k=4, seq_len=16, holdout_seqs=4, epochs=1)
    dset = train_transcoders(tiny_model, tmp_path, cfg, progress=False, context_tokens=100)
    data = json.loads((tmp_path / "feature_contexts.json").read_text(encoding="utf-8"))
    # the sequences after the training ones (the metrics' held-out ones first), in the trainer's shuffled order
    seqs = corpus_sequences(tiny_model.tokenizer, None, cfg.seq_len, cfg.seed)
    n_train = n_train_seqs(cfg)
    assert n_train == 40 and data["n_tokens"] == 7 * 15  # ceil(100 / 15) sequences
    assert torch.equal(seqs[:n_train], corpus_sequences(tiny_model.tokenizer, n_train + 4, cfg.seq_len)[:n_train])
    want = feature_contexts(tiny_model, dset, seqs[n_train:n_train + 7])
    assert data == json.loads(json.dumps(want.to_dict() | {"corpus": data["corpus"]}))
    assert "held out from training" in data["corpus"]
    # the same file from the folder alone; another model's run: the corpus from its first sequence
    assert json.loads(corpus_contexts(tiny_model, tmp_path, 100, progress=False).read_text(encoding="utf-8")) == data
    saved = json.loads((tmp_path / "train_config.json").read_text(encoding="utf-8"))
    (tmp_path / "train_config.json").write_text(json.dumps({**saved, "model": "some-other-model"}), encoding="utf-8")
    other = json.loads(corpus_contexts(tiny_model, tmp_path, 100, dset, progress=False).read_text(encoding="utf-8"))
    first = feature_contexts(tiny_model, dset, corpus_sequences(tiny_model.tokenizer, 8, 128)[:1])
    assert other["layers"] == json.loads(json.dumps(first.to_dict()))["layers"] and other["n_tokens"] == 127
