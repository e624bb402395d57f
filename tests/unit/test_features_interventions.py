"""Feature interventions in the real forward pass on tiny random models with random dictionaries: no edits is the
real model, zeroing an inactive feature changes nothing, edits act as asked, the graph's predicted effects agree
in sign and rank with the real model's, and keeping every feature recovers the whole logit difference. Graphs with
a row budget: the predictions by one backward pass equal the adjacency series of the unbounded graph, and the
check gives the unbounded graph's numbers for the features both rank."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from logitlab.errors import LogitlabError
from logitlab.features.graph import attribute
from logitlab.features.interventions import (Edit, check_top_features, effects_by_backward, faithfulness_curve,
                                             intervene, predicted_effects, spearman, top_features)
from logitlab.model.runner import Runner
from tests.tiny import random_dictionaries

PROMPT = "Mary is a great friend, isn’t"
KINDS = ("gpt2", "llama_gqa", "gemma3", "neox")
AC = {"answer": " she", "contrast": " he"}


def _float64(model):  # noqa: ANN001, ANN202
    m = copy.copy(model)
    m.runner = Runner(model.spec, model.runner.w.to(model.runner.device, torch.float64))
    return m


def _real_diff(model, ids: list[int]) -> float:  # noqa: ANN001
    tok = model.tokenizer
    a, c = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (" she", " he"))
    r = model.runner
    x = r.run_from(0, "pre", r.embed_sum(torch.tensor([ids], device=r.device)))[0, -1]
    logits = r.final_norm(x)[0] @ r.w.W_U + r.w.b_U
    return float(logits[a] - logits[c])


@pytest.fixture(scope="module", params=KINDS)
def setup(request, tiny_dir):  # noqa: ANN001, ANN201
    from logitlab.model.load import load_model
    from tests.tiny import make_model_folder
    m = _float64(load_model(str(make_model_folder(request.param, tiny_dir / f"interv_{request.param}")), cache=False))
    d = random_dictionaries(m.spec.d_model, m.spec.n_layers, "relu_skip" if request.param == "gemma3" else "relu")
    g = attribute(m, PROMPT, d, dtype=torch.float64, **AC)
    return request.param, m, d, g


def test_no_edits_is_the_real_model(setup) -> None:  # noqa: ANN001
    kind, m, d, g = setup
    got = intervene(m, PROMPT, d, [], **AC)
    want = _real_diff(m, g.tokens)
    assert abs(got.logit_diff - want) < 1e-5, (kind, got.logit_diff, want)
    assert abs(got.logit_diff - float(g.values[-1])) < 1e-5
    held = intervene(m, PROMPT, d, [], hold_gates=True, **AC)  # gates held at their clean states: the same
    assert abs(held.logit_diff - got.logit_diff) < 1e-10
    assert got.logits.shape[-1] == m.runner.w.W_U.shape[1]


def test_no_edits_float32(tiny_model) -> None:  # noqa: ANN001
    """Every kind, in float32: transcoders + clean errors in place of the MLPs is the real model."""
    d = random_dictionaries(tiny_model.spec.d_model, tiny_model.spec.n_layers, "jumprelu")
    ids = [tiny_model.tokenizer.bos_token_id] + tiny_model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if i is not None]
    got = intervene(tiny_model, ids, d, [], **AC).logit_diff
    assert abs(got - _real_diff(tiny_model, ids)) < 1e-5


def test_edits(setup) -> None:  # noqa: ANN001
    kind, m, d, g = setup
    clean = intervene(m, PROMPT, d, [], **AC).logit_diff
    # a feature inactive at a position: zeroing it changes nothing (scaling neither)
    l, p = 1, g.n_pos - 1
    active = set(g.features[(g.features[:, 0] == l) & (g.features[:, 1] == p), 2].tolist())
    off = next(f for f in range(d.n_features) if f not in active)
    for e in (Edit(l, p, off, "zero"), Edit(l, p, off, "scale", 3.0)):
        assert abs(intervene(m, PROMPT, d, [e], **AC).logit_diff - clean) < 1e-12
    # an active feature: zeroing, scaling by 0 and steering by −activation give the same result; scale 1 = clean
    i = int(predicted_effects(g).abs().argmax())
    lf, pf, ff = (int(v) for v in g.features[i])
    a = float(g.activations[i])
    z = intervene(m, PROMPT, d, [(lf, pf, ff, "zero")], **AC).logit_diff
    assert abs(z - clean) > 1e-6, "zeroing the most effective feature changed nothing"
    assert abs(intervene(m, PROMPT, d, [(lf, pf, ff, "scale", 0.0)], **AC).logit_diff - z) < 1e-10
    assert abs(intervene(m, PROMPT, d, [(lf, pf, ff, "steer", -a)], **AC).logit_diff - z) < 1e-7
    assert abs(intervene(m, PROMPT, d, [(lf, pf, ff, "scale", 1.0)], **AC).logit_diff - clean) < 1e-12
    with pytest.raises(LogitlabError):
        intervene(m, PROMPT, d, [(0, 99, 0)], **AC)
    with pytest.raises(LogitlabError):
        Edit(0, 0, 0, "double")


def test_top_features_agree_with_the_model(setup) -> None:  # noqa: ANN001
    """The graph freezes attention and norms, the model does not: agreement is approximate. Measured on these
    models (top 10, zeroing): Spearman 0.99 / 0.64 / 0.93 / 0.47, sign agreement 1.0 / 0.8 / 0.9 / 0.9 for
    gpt2 / llama_gqa / gemma3 / neox."""
    kind, m, d, g = setup
    c = check_top_features(m, PROMPT, d, g, 10, **AC)
    assert len(c.predicted) == len(c.actual) == 10
    assert c.sign_agreement >= 0.7, (kind, c.sign_agreement)
    assert c.spearman >= 0.3, (kind, c.spearman)
    assert c.sign_agreement_derivative >= 0.7 and c.spearman_derivative >= 0.3, (kind, c)
    assert c.sign_agreement_gates_held >= 0.7 and c.spearman_gates_held >= 0.3, (kind, c)
    # the first-order prediction is minus the derivative; the top feature's derivative within 25%
    assert c.predicted == pytest.approx([-v for v in c.derivative_predicted])
    rel = abs(c.derivative_actual[0] - c.derivative_predicted[0]) / abs(c.derivative_predicted[0])
    assert rel < 0.25, (kind, c.derivative_actual[0], c.derivative_predicted[0])


def test_faithfulness(setup) -> None:  # noqa: ANN001
    kind, m, d, g = setup
    f = faithfulness_curve(m, PROMPT, d, g, sizes=[1, 10, g.n_features], n_random=2, **AC)
    assert f.sizes[-1] == g.n_features
    assert f.recovered[-1] == pytest.approx(1.0, abs=1e-8)
    assert f.logit_diff[-1] == pytest.approx(_real_diff(m, g.tokens), abs=1e-8)
    assert f.random_recovered[-1] == pytest.approx([1.0, 1.0], abs=1e-8)
    assert abs(f.logit_diff_none - f.logit_diff_clean) > 1e-3  # zeroing every feature moves the difference
    assert len(f.random_recovered[0]) == 2


def test_spearman() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)


def test_graph_check_from_the_command_line(tmp_path, capsys) -> None:  # noqa: ANN001
    """``logitlab graph --check k`` writes the check and the faithfulness curve into graph.json, and prints the
    agreement with zeroing in the real model first."""
    import json

    import logitlab
    from logitlab.cli import main
    from logitlab.features.formats import save_circuit_tracer
    from tests.tiny import make_model_folder
    folder = make_model_folder("llama_gqa", tmp_path / "model")
    spec = logitlab.load_model(str(folder), cache=False).spec
    tc = save_circuit_tracer(random_dictionaries(spec.d_model, spec.n_layers, "relu"), tmp_path / "tc")
    assert main(["graph", PROMPT, "--model", str(folder), "--transcoders", str(tc), "--answer", " she",
                 "--contrast", " he", "--out", str(tmp_path / "g"), "--check", "5"]) == 0
    data = json.loads((tmp_path / "g" / "graph.json").read_text(encoding="utf-8"))
    top, faith = data["intervention_check"]["top_features"], data["intervention_check"]["faithfulness"]
    assert len(top["predicted"]) == len(top["actual"]) == 5 and -1 <= top["spearman"] <= 1
    assert top["actual_all_held"] == pytest.approx(top["predicted"], abs=1e-4 * max(map(abs, top["predicted"])))
    assert sorted(top["spearman_released"]) == ["attention", "gates", "norms"]
    assert faith["recovered"][-1] == pytest.approx(1.0, abs=1e-4)
    assert faith["sizes"][-1] == data["counts"]["features"]
    said = " ".join(capsys.readouterr().err.split())
    m = top["model"]
    first = f"real model's (Spearman / sign agreement): zeroing {m['spearman']['zeroed']:.2f} / "
    assert first + f"{m['sign_agreement']['zeroed']:.2f}," in said, said
    assert f"transcoders downstream {top['spearman']:.2f} / {top['sign_agreement']:.2f}" in said, said


# ---- row-budgeted graphs ---------------------------------------------------------------------------------------
def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("tiny_model", ["gpt2", "llama_gqa", "gemma3", "neox", "olmo2"], indirect=True)
@pytest.mark.parametrize("variant", ["relu", "jumprelu_skip", "topk"])
def test_effects_by_backward_equal_the_series(tiny_model, variant: str) -> None:  # noqa: ANN001
    """LayerNorm (GPT-2, NeoX parallel), RMSNorm with grouped KV heads (Llama), pre- and post-norms (Gemma-3),
    post-norms only (OLMo-2); ReLU, JumpReLU with a skip connection, TopK; float64. The backward pass gives the
    unbounded graph's ``v A`` series, and the same numbers for a graph with a binding row budget, where the series
    over the attributed rows alone (paths through unattributed features lost) is measurably off."""
    m = _float64(tiny_model)
    d = random_dictionaries(m.spec.d_model, m.spec.n_layers, variant)
    full = attribute(m, PROMPT, d, dtype=torch.float64, **AC)
    budget = full.n_features // 4
    bounded = attribute(m, PROMPT, d, dtype=torch.float64, max_feature_nodes=budget, **AC)
    assert bounded.rows is not None and int((bounded.rows < bounded.n_features).sum()) == budget < full.n_features
    series = predicted_effects(full)
    exact = effects_by_backward(m, d, full, **AC)
    assert exact.shape == (full.n_features,) and exact.dtype == torch.float64
    assert _rel(exact, series) < 1e-9, f"backward vs series: {_rel(exact, series):.2e}"
    got = effects_by_backward(m, d, bounded, **AC)
    assert _rel(got, series) < 1e-9, f"budget {budget}: {_rel(got, series):.2e}"
    rows_only = predicted_effects(replace(bounded, adjacency=bounded.dense(), rows=None))
    assert _rel(rows_only, series) > 1e-4, "paths through unattributed features vanish here: the test sees nothing"
    with pytest.raises(LogitlabError, match="row budget"):
        predicted_effects(bounded)


def test_effects_by_backward_float32(tiny_model) -> None:  # noqa: ANN001
    """Every kind, the model and graph in float32 (as ``logitlab graph`` runs): the float64 backward pass agrees
    with the float32 series to float32's precision (measured ≤ 2e-7)."""
    d = random_dictionaries(tiny_model.spec.d_model, tiny_model.spec.n_layers, "jumprelu")
    g = attribute(tiny_model, PROMPT, d, **AC)
    got, want = effects_by_backward(tiny_model, d, g, **AC), predicted_effects(g)
    assert _rel(got, want.double()) < 1e-5, f"{_rel(got, want.double()):.2e}"


def test_effects_by_backward_refuses_another_target(setup) -> None:  # noqa: ANN001
    kind, m, d, g = setup
    with pytest.raises(LogitlabError, match="logit difference"):
        effects_by_backward(m, d, g, answer=" he", contrast=" she")
    with pytest.raises(LogitlabError, match="no logit-difference target"):
        effects_by_backward(m, d, attribute(m, PROMPT, d, dtype=torch.float64), **AC)


def test_check_with_a_row_budget(setup) -> None:  # noqa: ANN001
    """A check on a budgeted graph ranks its attributed features, and every feature it shares with the unbounded
    graph's check has the same numbers (prediction, derivative, interventions)."""
    kind, m, d, g = setup
    budget = g.n_features // 5
    b = attribute(m, PROMPT, d, dtype=torch.float64, max_feature_nodes=budget, **AC)
    order = top_features(b)
    att = b.attributed[:b.n_features]
    assert sorted(order.tolist()) == list(range(b.n_features))
    assert att[order[:budget]].all() and not att[order[budget:]].any()
    infl = b.influence("logit_diff")[order[:budget]]
    assert bool((infl[:-1] >= infl[1:]).all())
    full, got = check_top_features(m, PROMPT, d, g, 10, **AC), check_top_features(m, PROMPT, d, b, 10, **AC)
    assert all(att[int(((b.features == torch.tensor(f)).all(1)).nonzero())] for f in got.features)
    common = [f for f in got.features if f in full.features]
    assert len(common) >= 3, (kind, common)
    for f in common:
        i, j = got.features.index(f), full.features.index(f)
        for name in ("predicted", "derivative_predicted", "actual", "actual_gates_held", "derivative_actual",
                     "activations"):
            a, w = getattr(got, name)[i], getattr(full, name)[j]
            assert a == pytest.approx(w, rel=1e-9, abs=1e-12), (kind, name, f, a, w)
    assert got.logit_diff == full.logit_diff
    faith = faithfulness_curve(m, PROMPT, d, b, sizes=[1, budget, b.n_features], n_random=1, **AC)
    assert faith.recovered[-1] == pytest.approx(1.0, abs=1e-8)
    assert faith.logit_diff_none == pytest.approx(
        faithfulness_curve(m, PROMPT, d, g, sizes=[1], n_random=0, **AC).logit_diff_none, abs=1e-12)


def test_graph_check_with_a_row_budget_from_the_command_line(tmp_path) -> None:  # noqa: ANN001
    """``logitlab graph --check k --max-feature-nodes n``: the top k are attributed features, and their predictions
    are the backward pass's on the same graph unbounded, which the series confirms (float32)."""
    import json

    import logitlab
    from logitlab.cli import main
    from logitlab.features.formats import load_dictionaries, save_circuit_tracer
    from tests.tiny import make_model_folder
    folder = make_model_folder("gemma3", tmp_path / "model")
    m = logitlab.load_model(str(folder), cache=False)
    tc = save_circuit_tracer(random_dictionaries(m.spec.d_model, m.spec.n_layers, "jumprelu_skip"), tmp_path / "tc")
    assert main(["graph", PROMPT, "--model", str(folder), "--transcoders", str(tc), "--answer", " she",
                 "--contrast", " he", "--out", str(tmp_path / "g"), "--check", "4", "--max-feature-nodes", "30"]) == 0
    data = json.loads((tmp_path / "g" / "graph.json").read_text(encoding="utf-8"))
    assert data["counts"]["attributed_features"] == 30 < data["counts"]["features"]
    top, faith = data["intervention_check"]["top_features"], data["intervention_check"]["faithfulness"]
    assert len(top["predicted"]) == len(top["actual"]) == 4 and faith["recovered"][-1] == pytest.approx(1.0, abs=1e-4)
    attributed = {(n["layer"], n["pos"], n["feature"]) for n in data["nodes"] if n["kind"] == "feature"
                  and n["attributed"]}
    assert all(tuple(f) in attributed for f in top["features"])
    d = load_dictionaries(str(tc), m)
    full = attribute(m, PROMPT, d, **AC)
    exact, series = effects_by_backward(m, d, full, **AC), predicted_effects(full).double()
    for f, p in zip(top["features"], top["predicted"]):
        i = int(((full.features == torch.tensor(f)).all(1)).nonzero())
        assert p == pytest.approx(-float(exact[i]), rel=1e-9, abs=1e-12), (f, p, float(exact[i]))
        assert p == pytest.approx(-float(series[i]), rel=1e-4, abs=1e-6), (f, p, float(series[i]))


# ---- holding attention, norms and gates (logitlab.features.held) -------------------------------------------------
def test_holding_everything_is_the_graph(setup) -> None:  # noqa: ANN001
    """With attention patterns, norm scales and gates held at the clean run's, the real model's code runs the
    graph's linear model: zeroing any active feature changes Δ by exactly the graph's prediction (float64), and
    with no edit every hold (alone or together) is the clean run."""
    from logitlab.features.held import HOLDS
    from logitlab.features.interventions import _diff_dir, _logit_diffs, _run_many
    kind, m, d, g = setup
    clean = intervene(m, PROMPT, d, [], **AC).logit_diff
    for hold in [(h,) for h in HOLDS] + [HOLDS]:
        assert abs(intervene(m, PROMPT, d, [], hold=hold, **AC).logit_diff - clean) < 1e-10, (kind, hold)
    eff = predicted_effects(g)
    pick = torch.randperm(g.n_features, generator=torch.Generator().manual_seed(0))[:24]
    sets = [[]] + [[Edit(*(int(v) for v in g.features[i]), "zero")] for i in pick.tolist()]
    ld = _logit_diffs(_run_many(m, list(g.tokens), d, sets, hold=HOLDS), _diff_dir(m, AC["answer"], AC["contrast"]))
    got, want = ld[1:] - ld[0], -eff[pick]
    assert float((got - want).abs().max()) <= 1e-9 * float(eff.abs().max()), (kind, got, want)
    # releasing a hold is the real model's response: it differs from the linear one somewhere
    free = _logit_diffs(_run_many(m, list(g.tokens), d, sets), _diff_dir(m, AC["answer"], AC["contrast"]))
    assert float(((free[1:] - free[0]) - want).abs().max()) > 1e-6, kind
    c = check_top_features(m, PROMPT, d, g, 5, **AC)
    assert c.actual_all_held == pytest.approx(c.predicted, abs=1e-9 * float(eff.abs().max()))
    assert set(c.actual_released) == set(HOLDS) and all(len(v) == 5 for v in c.actual_released.values())


def test_holds_every_kind_float32(tiny_model) -> None:  # noqa: ANN001
    """Every kind (post-norms only, parallel blocks, soft-caps, mixtures of experts, …) in float32: the holds are
    the clean run without edits, and with all three held zeroing a feature is the graph's prediction."""
    from logitlab.features.held import HOLDS
    d = random_dictionaries(tiny_model.spec.d_model, tiny_model.spec.n_layers, "jumprelu")
    g = attribute(tiny_model, PROMPT, d, **AC)
    clean = intervene(tiny_model, PROMPT, d, [], **AC).logit_diff
    for hold in [(h,) for h in HOLDS] + [HOLDS]:
        assert abs(intervene(tiny_model, PROMPT, d, [], hold=hold, **AC).logit_diff - clean) < 1e-5, hold
    eff = predicted_effects(g)
    for i in eff.abs().argsort(descending=True)[:3].tolist():
        f = tuple(int(v) for v in g.features[i])
        got = intervene(tiny_model, PROMPT, d, [Edit(*f, "zero")], hold=HOLDS, **AC).logit_diff - clean
        assert abs(got + float(eff[i])) <= 1e-4 * max(1.0, float(eff.abs().max())), (f, got, float(eff[i]))


def test_holds_refused() -> None:
    from logitlab.features.held import _check_holds
    from logitlab.features.dictionary import DictionarySet
    d = random_dictionaries(16, 2, "relu")
    with pytest.raises(LogitlabError, match="unknown hold"):
        _check_holds(frozenset({"patterns"}), d)
    assert isinstance(d, DictionarySet)
    sae = replace(d, kind="sae", input_point="mlp_out")
    with pytest.raises(LogitlabError, match="cannot be held"):
        _check_holds(frozenset({"norms"}), sae)
    _check_holds(frozenset({"gates"}), sae)  # gates alone are fine


# ---- the real model itself (mlps="model") -----------------------------------------------------------------------
_HF_MLP_OUT = {"gpt2": "transformer.h.{}.mlp", "llama_gqa": "model.layers.{}.mlp",
               "gemma3": "model.layers.{}.post_feedforward_layernorm", "neox": "gpt_neox.layers.{}.mlp"}


def test_model_mlps_equal_a_hooked_hugging_face_forward(setup) -> None:  # noqa: ANN001
    """``mlps="model"``: the real model with an edit's change of the transcoder's output added to its layer's MLP
    output, checked against Hugging Face's model with a forward hook that adds the same vector (float64; the
    weights were processed in float32, hence 1e-5); with no edit it is the real model, and it differs from the
    replacement's response (transcoders downstream)."""
    from transformers import AutoModelForCausalLM

    from logitlab.features.held import _check_holds
    kind, m, d, g = setup
    hf = AutoModelForCausalLM.from_pretrained(m.source, dtype=torch.float64).eval()
    a_id, c_id = (m.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (AC["answer"], AC["contrast"]))
    tokens = torch.tensor([list(g.tokens)])

    def hf_diff(layer: int = -1, pos: int = 0, vec: torch.Tensor | None = None) -> float:
        def add(_mod, _inp, out):  # noqa: ANN001, ANN202
            out = out.clone()
            out[0, pos] += vec
            return out
        h = hf.get_submodule(_HF_MLP_OUT[kind].format(layer)).register_forward_hook(add) if vec is not None else None
        try:
            with torch.no_grad():
                logits = hf(tokens).logits[0, -1]
        finally:
            if h is not None:
                h.remove()
        return float(logits[a_id] - logits[c_id])

    clean = intervene(m, PROMPT, d, [], mlps="model", **AC).logit_diff
    hf_clean = hf_diff()
    assert abs(clean - hf_clean) < 1e-5 and abs(clean - float(g.values[-1])) < 1e-9, kind
    order = predicted_effects(g).abs().argsort(descending=True)[:4].tolist()
    moved = 0.0
    for i, (mode, value) in zip(order, [("zero", None), ("scale", 2.5), ("steer", 0.7), ("zero", None)]):
        l, p, f = (int(v) for v in g.features[i])
        a = float(g.activations[i])
        change = {"zero": -a, "scale": (value or 0) * a - a, "steer": value}[mode]
        vec = change * d.layers[l].W_dec[f].double()  # decode is affine in the features: this is its change
        e = Edit(l, p, f, mode, 0.0 if value is None else value)
        got = intervene(m, PROMPT, d, [e], mlps="model", **AC).logit_diff
        want = hf_diff(l, p, vec)
        assert abs((got - clean) - (want - hf_clean)) <= 1e-5 * max(1.0, abs(want)), (kind, e, got, want)
        assert abs(want - hf_clean) > 1e-3, (kind, e, "an edit too small to test")
        moved = max(moved, abs(got - intervene(m, PROMPT, d, [e], **AC).logit_diff))
    assert moved > 1e-6, f"{kind}: the real model's response equals the replacement's everywhere"
    for hold in ("attention", ("attention", "norms"), "norms"):
        held = intervene(m, PROMPT, d, [], mlps="model", hold=hold, **AC).logit_diff
        assert abs(held - clean) < 1e-10, (kind, hold)
    with pytest.raises(LogitlabError, match="only attention and norms"):
        _check_holds(frozenset({"gates"}), d, "model")
    with pytest.raises(LogitlabError, match="unknown mlps"):
        _check_holds(frozenset(), d, "hf")
    c = check_top_features(m, PROMPT, d, g, 5, **AC)
    assert set(c.model["spearman"]) == {"zeroed", "derivative", "derivative_attention_held",
                                        "derivative_attention_norms_held"}
    assert all(len(c.model[k]) == 5 for k in c.model["spearman"])
    # the real model's own first-order prediction of zeroing against its zeroing, ranked here by hand
    pred, got = -torch.tensor(c.model["derivative"]), torch.tensor(c.model["zeroed"])
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731
    rho = float(torch.corrcoef(torch.stack([rank(pred), rank(got)]))[0, 1])
    assert c.model["own_first_order"]["spearman"] == pytest.approx(rho, abs=1e-9)
    assert c.model["own_first_order"]["sign_agreement"] == pytest.approx(
        float((pred.sign() == got.sign()).double().mean()))


def test_model_mlps_with_attention_and_norms_held(setup) -> None:  # noqa: ANN001
    """With attention patterns and norm scales held, the real model differs from the graph's linear model only in
    its MLPs: a feature of the last layer at the last position reaches the logits through no MLP, so its first-order
    effect (scale by 1 + 2⁻¹², exact in the edits' float32) is the graph's a·dΔ/da (float64); with the norms live it
    is not (the final norm's response), nor is it for features of earlier layers (the real MLPs' Jacobian is not
    the transcoders'), unless both Jacobians are 0."""
    from logitlab.features.interventions import _diff_dir, _logit_diffs, _run_many
    kind, m, d, g = setup
    L, T = m.spec.n_layers, len(g.tokens)
    eff = predicted_effects(g)
    last = [i for i, (l, p, _f) in enumerate(g.features.tolist()) if l == L - 1 and p == T - 1][:4]
    early = [int(i) for i in eff.abs().argsort(descending=True).tolist() if int(g.features[i, 0]) < L - 1][:4]
    assert last and early, kind
    step = 2.0 ** -12
    diff = _diff_dir(m, AC["answer"], AC["contrast"])

    def derivative(idx: list[int], hold: tuple[str, ...], model=m, dicts=d, graph=g) -> torch.Tensor:  # noqa: ANN001
        sets = [[]] + [[Edit(*(int(v) for v in graph.features[i]), "scale", 1 + step)] for i in idx]
        v = _logit_diffs(_run_many(model, list(graph.tokens), dicts, sets, hold=hold, mlps="model"), diff)
        return (v[1:] - v[0]) / step

    scale = float(eff.abs().max())
    got = derivative(last, ("attention", "norms"))
    assert float((got - eff[last]).abs().max()) <= 1e-6 * scale, (kind, got, eff[last])
    norms_live = derivative(last, ("attention",))
    assert float((norms_live - eff[last]).abs().max()) > 1e-4 * scale, (kind, "the final norm held nothing")
    mlps_live = derivative(early, ("attention", "norms"))
    assert float((mlps_live - eff[early]).abs().max()) > 1e-4 * scale, (kind, "the real MLPs equal the transcoders")
    # Every MLP's response to its input zero (W_out = 0) and every transcoder but layer 0's silent (W_dec = 0, no
    # skip): both Jacobians are 0, so the held real model is the graph's linear model for every feature of layer
    # 0, whose effects run through later layers' attention values and held norms.
    w = m.runner.w
    m0 = copy.copy(m)
    m0.runner = Runner(m.spec, replace(w, W_out=torch.zeros_like(w.W_out)))
    d0 = replace(d, layers=d.layers[:1] + tuple(replace(t, W_dec=torch.zeros_like(t.W_dec), W_skip=None)
                                                 for t in d.layers[1:]))
    g0 = attribute(m0, PROMPT, d0, dtype=torch.float64, **AC)
    eff0 = predicted_effects(g0)
    first = [int(i) for i in eff0.abs().argsort(descending=True).tolist() if int(g0.features[i, 0]) == 0][:6]
    got0 = derivative(first, ("attention", "norms"), m0, d0, g0)
    assert float((got0 - eff0[first]).abs().max()) <= 1e-6 * float(eff0.abs().max()), (kind, got0, eff0[first])
    assert {int(g0.features[i, 1]) for i in first} - {T - 1}, (kind, "no feature before the last position")


# ---- frozen positions (massive activations, held like BOS) -----------------------------------------------------
def test_massive_positions() -> None:
    from types import SimpleNamespace

    from logitlab.features.replacement import MASSIVE_RATIO, massive_positions
    g = torch.Generator().manual_seed(0)
    L, T, D = 3, 7, 16
    pre = torch.randn(L, 1, T, D, generator=g)
    final = torch.randn(1, T, D, generator=g)
    pre[0, 0, 0] *= 100  # BOS (resid_pre of layer 0 is the embedding, not read) is never a candidate
    assert massive_positions(SimpleNamespace(resid_pre=pre, resid_final=final)) == []
    big = pre.clone()
    big[2, 0, 4] *= 1.5 * MASSIVE_RATIO * pre[2, 0, 1:].norm(dim=-1).median() / pre[2, 0, 4].norm()  # after layer 1
    assert massive_positions(SimpleNamespace(resid_pre=big, resid_final=final)) == [4]
    fin = final.clone()
    fin[0, 2] *= 0.9 * MASSIVE_RATIO * final[0, 1:].norm(dim=-1).median() / final[0, 2].norm()  # just below
    assert massive_positions(SimpleNamespace(resid_pre=pre, resid_final=fin)) == []
    assert massive_positions(SimpleNamespace(resid_pre=pre, resid_final=fin), ratio=0.8 * MASSIVE_RATIO) == [2]


def test_frozen_positions_keep_the_graph_exact(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A position frozen like BOS (here the last but one, as if it held a massive activation): no nodes there, the
    invariants hold, zeroing with attention, norms and gates held is still the graph's prediction (the passes hold
    the position's MLP outputs too; on sequential blocks a pass that does not differs), and the backward pass is
    the series."""
    import logitlab.features.graph as graph_mod
    from logitlab.features.held import HOLDS
    from logitlab.features.interventions import _diff_dir, _logit_diffs, _run_many
    from logitlab.features.prune import check_graph
    kind, m, d, g0 = setup
    p = g0.n_pos - 2
    monkeypatch.setattr(graph_mod, "massive_positions", lambda cache: [p])
    g = attribute(m, PROMPT, d, dtype=torch.float64, **AC)
    assert g.frozen_positions == [0, p] and not bool((g.features[:, 1] == p).any())
    assert g.n_features < g0.n_features
    assert max(check_graph(g).values()) < 1e-9, (kind, check_graph(g))
    assert abs(float(g.values[-1]) - _real_diff(m, g.tokens)) < 1e-9
    eff = predicted_effects(g)
    assert float((effects_by_backward(m, d, g, **AC) - eff).abs().max()) <= 1e-9 * float(eff.abs().max())
    early = ((g.features[:, 1] < p) & (g.features[:, 0] == 0)).nonzero().flatten()[-12:].tolist()  # reach p's MLPs
    sets = [[]] + [[Edit(*(int(v) for v in g.features[i]), "zero")] for i in early]
    diff = _diff_dir(m, AC["answer"], AC["contrast"])
    ld = _logit_diffs(_run_many(m, list(g.tokens), d, sets, hold=HOLDS, frozen=[0, p]), diff)
    got, want = ld[1:] - ld[0], -eff[early]
    assert float((got - want).abs().max()) <= 1e-9 * float(eff.abs().max()), (kind, got, want)
    if not m.spec.parallel:  # (in 3 parallel blocks no layer-0 edit reaches a later MLP that the end still reads)
        live = _logit_diffs(_run_many(m, list(g.tokens), d, sets, hold=HOLDS), diff)  # p's MLPs respond
        assert float(((live[1:] - live[0]) - want).abs().max()) > 1e-6, kind
    c = check_top_features(m, PROMPT, d, g, 5, **AC)
    assert c.actual_all_held == pytest.approx(c.predicted, abs=1e-9 * float(eff.abs().max()))
    f = faithfulness_curve(m, PROMPT, d, g, **AC, sizes=[g.n_features], n_random=0)
    assert f.recovered[-1] == pytest.approx(1.0, abs=1e-9)
