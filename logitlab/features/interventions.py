"""Feature interventions in the real forward pass: the attribution graph checked against the model.

:func:`intervene` runs the real model (logitlab's staged runner: real attention, real norms, nothing frozen) with
every layer's MLP output replaced by its transcoder's output plus that layer's error term held at its clean value
(error = real MLP output − transcoder output on the clean run, per position). With no edits this is the real
model. Edits set feature activations at (layer, position, feature): ``zero``, ``scale`` by a factor, or ``steer``
(add a value). Every other feature is recomputed from its (possibly changed) input, so features downstream of an
edit respond as in the model (as circuit-tracer's ``feature_intervention`` with errors held). ``hold`` keeps
features' on/off states, attention patterns or norm scales at the clean run's (the pass itself:
:mod:`logitlab.features.held`).

:func:`check_top_features` compares, for the graph's top-k features by influence on the logit-difference target,
the graph's prediction of the change of the logit difference when a feature is zeroed with the actual change.
The prediction is the first-order effect in the graph's frozen linear model, direct and indirect:
``−a_s · dΔ/da_s``, where ``dΔ/da_s = Σ_paths`` of products of edge derivatives ``A[t, s] / a_s`` (A the signed
adjacency: a feature edge is its activation times a derivative), i.e. ``−(v A)[s]`` with
``v = w (I + C + C² + …)``, ``C = A · diag(1/a)`` on feature columns and ``w`` one on the logit-difference target.
It is exact for the frozen model as long as no other feature crosses its threshold; the real model also moves
attention patterns and norm scales, so agreement is approximate (Spearman rank correlation and sign agreement
are reported). The first-order derivative is also measured directly: the actual change for scaling a feature by
``1 + step`` divided by ``step`` against ``a_s · dΔ/da_s``, with every feature's on/off state held at the clean
run's (``hold_gates``: JumpReLU and TopK features jump on and off, so the free model's finite differences are
dominated by features crossing their thresholds), and so is the zeroing with gates held. Last, the zeroing with
attention patterns, norm scales and gates all held (the graph's own linear model run by the model's code: equal to
the prediction up to rounding) and with each of the three released alone says which part of the model the
linearisation misses. ``model`` repeats the zeroing and the derivative in the real model itself (its own MLPs
downstream instead of transcoders and held errors, ``mlps="model"``), also with attention patterns held.

Graphs with a row budget (``max_feature_nodes``: only the most influential features have rows) are checked too:
the same ``v`` is the gradient of Δ in the frozen model with every active feature linear (slope 1), so
:func:`effects_by_backward` computes it by one backward pass that reads no adjacency row — exact whichever
features were attributed (summing paths over the attributed rows only would miss every path through the
others). The top-k are then the attributed features by influence (the features the budget chose).

:func:`faithfulness_curve` keeps only the top-n features by influence (every other feature zeroed at every
position but the frozen ones, errors held; kept features recomputed from their inputs) and reports the fraction
of the logit difference recovered, ``(m − m_0) / (m_clean − m_0)``, ``m_0`` with every feature zeroed, against
random sets of n of the graph's features (seeded), as the circuit analysis does for edges. With a row budget the
order is the attributed features by influence, then the others by the influence reaching them through the
attributed rows (:func:`top_features`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from logitlab.errors import LogitlabError
from logitlab.features.dictionary import DictionarySet
from logitlab.features.graph import AttributionGraph
from logitlab.features.held import HOLDS, clean_state, held_forward
from logitlab.features.influence import top_features
from logitlab.features.quality import staged
from logitlab.task import encode_prompt, single_token_id

__all__ = ["Edit", "Intervention", "intervene", "predicted_effects", "effects_by_backward", "top_features",
           "check_top_features", "TopFeatureCheck", "faithfulness_curve", "Faithfulness", "spearman"]

MODES = ("zero", "scale", "steer")


@dataclass(frozen=True)
class Edit:
    """Set one feature's activation: ``zero``; ``scale`` (times ``value``); ``steer`` (plus ``value``)."""

    layer: int
    pos: int
    feature: int
    mode: str = "zero"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LogitlabError(f"unknown edit {self.mode!r}", f"one of: {', '.join(MODES)}")


@dataclass(frozen=True)
class Intervention:
    """Result of one intervened forward pass, at the last position (logits before any final soft-cap)."""

    logit_diff: float  # answer − mean(contrasts); nan without answer and contrast
    logits: Tensor  # (vocab,)


def _ids(model: Any, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        tok = model.tokenizer
        return encode_prompt(tok, prompt, prepend_bos=tok.bos_token_id is not None)
    return [int(i) for i in prompt]


def _token(model: Any, t: str | int) -> int:
    return t if isinstance(t, int) else single_token_id(model.tokenizer, t)


def _diff_dir(model: Any, answer: Any, contrast: Any) -> tuple[int, list[int]] | None:
    if answer is None and contrast is None:
        return None
    if (answer is None) != (contrast is None):
        raise LogitlabError("give both answer and contrast, or neither")
    cs = contrast if isinstance(contrast, (list, tuple)) else [contrast]
    return _token(model, answer), [_token(model, c) for c in cs]


def _edit_tensors(edit_sets: list[list[Edit]], L: int, T: int, F: int, dev: Any) -> tuple[Tensor, Tensor]:
    mul = torch.ones(len(edit_sets), L, T, F, device=dev)
    add = torch.zeros(len(edit_sets), L, T, F, device=dev)
    for b, edits in enumerate(edit_sets):
        for e in edits:
            if e.mode == "zero":
                mul[b, e.layer, e.pos, e.feature] = 0.0
                add[b, e.layer, e.pos, e.feature] = 0.0
            elif e.mode == "scale":
                mul[b, e.layer, e.pos, e.feature] *= e.value
                add[b, e.layer, e.pos, e.feature] *= e.value
            else:
                add[b, e.layer, e.pos, e.feature] += e.value
    return mul, add


def _logit_diffs(logits: Tensor, diff: tuple[int, list[int]] | None) -> Tensor:
    if diff is None:
        return torch.full(logits.shape[:1], float("nan"), dtype=torch.float64)
    a, cs = diff
    return (logits[:, a].double() - logits[:, cs].double().mean(-1)).cpu()


def _holds(hold: Any, hold_gates: bool) -> frozenset[str]:
    return frozenset((hold,) if isinstance(hold, str) else hold) | ({"gates"} if hold_gates else set())


@dataclass(frozen=True)
class _Prepared:
    """One prompt's intervened passes: the runner, the dictionaries in its dtype and device, the tokens (1, T), and
    the clean run's state (:func:`~logitlab.features.held.clean_state`), computed once for every pass."""

    r: Any
    ds: DictionarySet
    tokens: Tensor
    st: Any


def _prepare(model: Any, ids: list[int], dicts: DictionarySet, patterns: bool = False, frozen: Any = ()) -> _Prepared:
    r = staged(model)
    ds = dicts.to(r.device, torch.float64 if r.w.W_U.dtype == torch.float64 else torch.float32)
    tokens = torch.tensor([ids], device=r.device)
    with torch.no_grad():
        return _Prepared(r, ds, tokens, clean_state(r, tokens, ds, patterns=patterns, frozen=frozen))


def _run_many(model: Any, ids: list[int], dicts: DictionarySet, edit_sets: list[list[Edit]],
              chunk: int = 16, hold_gates: bool = False, hold: Any = (), prep: _Prepared | None = None,
              mlps: str = "transcoders", frozen: list[int] | tuple[int, ...] = ()) -> Tensor:
    """Pre-cap last-position logits (n, vocab) for each set of edits (one batch row per set), with what
    ``hold`` (and ``hold_gates``) names held at the clean run's values and ``mlps`` in place of the MLPs
    (:mod:`logitlab.features.held`). ``prep``: the prompt's prepared state (with clean patterns if attention is
    held)."""
    holds = _holds(hold, hold_gates)
    p = prep or _prepare(model, ids, dicts, patterns="attention" in holds, frozen=frozen)
    L, T, F = p.r.spec.n_layers, len(ids), dicts.n_features
    outs = []
    with torch.no_grad():
        for c0 in range(0, len(edit_sets), chunk):
            part = edit_sets[c0:c0 + chunk]
            mul, add = _edit_tensors(part, L, T, F, p.r.device)
            mul, add = mul.to(p.ds.layers[0].W_enc.dtype), add.to(p.ds.layers[0].W_enc.dtype)
            outs.append(held_forward(p.r, p.tokens, p.ds, p.st, mul, add, len(part), holds, mlps).double().cpu())
    return torch.cat(outs)


def intervene(model: Any, prompt: str | list[int], dictionaries: DictionarySet, edits: list[Edit] | tuple = (),
              answer: str | int | None = None, contrast: Any = None, hold_gates: bool = False,
              hold: Any = (), mlps: str = "transcoders", frozen: list[int] | tuple[int, ...] = ()) -> Intervention:
    """The real forward pass with transcoders and clean errors in place of the MLPs and ``edits`` applied.

    Edits are :class:`Edit` or tuples ``(layer, pos, feature[, mode[, value]])``. Returns the logit difference
    (answer − mean of the contrasts) and the logits (before any final soft-cap) at the last position.
    ``hold``: any of ``"gates"``, ``"attention"``, ``"norms"`` held at the clean run's values (features' on/off
    states, attention patterns, norm scales: :mod:`logitlab.features.held`); ``hold_gates=True`` is
    ``"gates"``. ``mlps="model"``: the model's own MLPs, each edit changing its layer's MLP output by what it
    changes in the transcoder's output (the real model, no replacement downstream). ``frozen``: positions whose
    replacement MLP outputs stay at the clean run's (a graph's ``frozen_positions``; not with ``mlps="model"``)."""
    dictionaries.check(model, check_name=False)
    ids = _ids(model, prompt)
    es = [e if isinstance(e, Edit) else Edit(*e) for e in edits]
    for e in es:
        if not (0 <= e.layer < len(dictionaries) and 0 <= e.pos < len(ids) and 0 <= e.feature < dictionaries.n_features):
            raise LogitlabError(f"edit {e} out of range ({len(dictionaries)} layers, {len(ids)} positions, "
                                f"{dictionaries.n_features} features)")
    logits = _run_many(model, ids, dictionaries, [es], hold_gates=hold_gates, hold=hold, mlps=mlps, frozen=frozen)
    return Intervention(float(_logit_diffs(logits, _diff_dir(model, answer, contrast))[0]), logits[0])


# ---- the graph's predictions -----------------------------------------------------------------------------------
def predicted_effects(graph: AttributionGraph) -> Tensor:
    """Per feature node, ``a_s · dΔ/da_s`` in the graph's frozen linear model (direct + indirect), Δ the
    logit-difference target (module docstring). Zeroing feature s changes Δ by about minus this.

    Reads the square adjacency (every feature's row); a row-budgeted graph: :func:`effects_by_backward`."""
    if not graph.has_logit_diff:
        raise LogitlabError("this graph has no logit-difference target (give an answer and a contrast)")
    if graph.rows is not None:
        raise LogitlabError("predicted_effects needs every feature's row; this graph has a row budget "
                            "(max_feature_nodes)", "use effects_by_backward(model, dictionaries, graph, …)")
    A = graph.adjacency.double()
    n_f = graph.n_features
    act = graph.activations.double()
    C = torch.zeros_like(A)
    C[:, :n_f] = A[:, :n_f] / act.where(act != 0, torch.ones_like(act))
    w = graph.logit_weights("logit_diff").double()
    v, cur = w.clone(), w.clone()
    for _ in range(graph.n_layers + 2):
        cur = cur @ C
        if not bool(cur.any()):
            break
        v += cur
    else:
        if bool(cur.any()):
            raise LogitlabError("the graph's feature adjacency is not acyclic")
    return (v @ A)[:n_f]


def effects_by_backward(model: Any, dictionaries: DictionarySet, graph: AttributionGraph, *, answer: str | int,
                        contrast: Any, dtype: torch.dtype = torch.float64) -> Tensor:
    """Per feature node, ``a_s · dΔ/da_s`` in the graph's frozen linear model: :func:`predicted_effects`'s numbers
    by one backward pass, so for row-budgeted graphs too.

    ``v = w (I + C + C² + …)`` is the gradient of Δ in the frozen replacement model (attention patterns and norm
    scales frozen as in :func:`~logitlab.features.graph.attribute`, errors constant) in which every active feature
    is linear in its pre-activation with slope 1 — which is what ``C = A·diag(1/a)`` encodes: a feature edge
    divided by its source's activation is the derivative of the target's pre-activation by the source's
    activation, and the series chains them through every active feature. The same gradient is one
    vector–Jacobian product: walk Δ's cotangent down the layers (:meth:`Replacement.backward`); at layer l the
    cotangent at resid_post gives every feature of l its ``dΔ/da_s = g[pos] · W_dec[f]`` (direct and through
    every feature above), and each then passes ``dΔ/da_s · W_enc[:, f]`` into its layer's MLP input at its
    position (slope 1) before the walk goes below l. It reads no adjacency row, so it does not depend on which
    features a row budget attributed; summing paths over the attributed rows only would miss every path through
    an unattributed feature (its incoming edges are not computed), which is not zero in general. It needs the
    model and the graph's dictionaries (the same ones: the frozen model is rebuilt from the real run) and the
    graph's answer and contrast (checked against its target's label). ``dtype``: the replacement model's (float64
    by default; the active features and their activations are the graph's)."""
    from logitlab.features.replacement import build_replacement
    if not graph.has_logit_diff:
        raise LogitlabError("this graph has no logit-difference target (give an answer and a contrast)")
    diff = _diff_dir(model, answer, contrast)
    if diff is None:
        raise LogitlabError("effects_by_backward needs the answer and contrast of the graph's logit difference")
    a_id, c_ids = diff
    tok = model.tokenizer
    label = f"{tok.decode([a_id])} − {' / '.join(tok.decode([c]) for c in c_ids)}"
    if label != graph.logit_labels[-1]:
        raise LogitlabError(f"the graph's logit difference is {graph.logit_labels[-1]!r}, not {label!r}",
                            "give the answer and contrast the graph was made with")
    r = staged(model)
    L = r.spec.n_layers
    if len(dictionaries) != L or graph.n_layers != L:
        raise LogitlabError(f"the graph has {graph.n_layers} layers, the dictionaries {len(dictionaries)}, the model "
                            f"{L}")
    dev = r.device
    tokens = torch.tensor([list(graph.tokens)], device=dev)
    with torch.no_grad():
        rep = build_replacement(r, tokens, dictionaries, r.run_with_cache(tokens), dtype,
                                bool(graph.meta.get("zero_first", True)), graph.frozen_positions)
        feats = graph.features.to(dev)
        out = torch.zeros(graph.n_features, dtype=dtype, device=dev)
        W_U = r.w.W_U
        u = W_U[:, a_id].to(dtype) - W_U[:, c_ids].to(dtype).mean(1)  # (D,) Δ's direction, as the graph's target
        G = torch.zeros(1, graph.n_pos, r.spec.d_model, dtype=dtype, device=dev)
        G[0, -1] = rep._norm_T(u[None, None], rep.final[-1:], rep.w["lnf_w"])[0, 0]  # through the frozen final norm
        inject = _InjectFromRead()

        def read(layer: int, g: Tensor) -> None:  # g (1, T, D): the cotangent at resid_post of `layer`
            inject.done.add(layer)
            idx = (feats[:, 0] == layer).nonzero(as_tuple=True)[0]
            if not len(idx):
                return
            tc = dictionaries.layers[layer]
            pos, f = feats[idx, 1], feats[idx, 2]
            # one (T, F) product per layer rather than gathering (n, D) decoder and encoder rows (n ≈ T × features
            # active per token)
            d = (g[0] @ tc.W_dec.to(dev, dtype).T)[pos, f]  # (n,) dΔ/da_s
            out[idx] = d
            M = torch.zeros(graph.n_pos, tc.n_features, dtype=dtype, device=dev)
            M[pos, f] = d  # slope 1: each active feature passes dΔ/da_s to its pre-activation
            inject[layer] = (M @ tc.W_enc.to(dev, dtype).T)[None]  # (1, T, D) at the layer's MLP input

        rep.backward(G, inject, L - 1, read)
    return (out.cpu().double() * graph.activations.double())


class _InjectFromRead(dict):
    """``Replacement.backward``'s ``inject`` filled by its ``read`` callback: a layer's features inject their
    gradient at the layer's MLP input after their own derivatives are read at its output. Refuses a lookup before
    the layer was read (the walk's order is what makes this exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.done: set[int] = set()

    def get(self, layer: int, default: Any = None) -> Any:  # type: ignore[override]
        if layer not in self.done:
            raise LogitlabError(f"internal: layer {layer}'s injection was asked for before the layer was read")
        return super().get(layer, default)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x: Tensor) -> Tensor:
        x = x.double()
        r = torch.empty_like(x)
        order = x.argsort()
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # average ranks over ties
            m = x == v
            if int(m.sum()) > 1:
                r[m] = r[m].mean()
        return r
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float((ra.norm() * rb.norm()))
    return float((ra @ rb) / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class TopFeatureCheck:
    """The graph's predicted changes of the logit difference against interventions in the real model."""

    features: list[tuple[int, int, int]]  # (layer, position, feature) of the top-k, by influence
    activations: list[float]
    predicted: list[float]  # graph: change of Δ when the feature is zeroed, first order = −a·dΔ/da
    actual: list[float]  # real model: change of Δ when the feature is zeroed
    derivative_predicted: list[float]  # graph: a·dΔ/da
    derivative_actual: list[float]  # real model, gates held: (Δ(a·(1+step)) − Δ) / step
    actual_gates_held: list[float]  # real model with every feature's on/off state held: change when zeroed
    step: float
    logit_diff: float  # the clean logit difference
    spearman: float  # rank correlation of predicted and actual (zeroing)
    sign_agreement: float  # fraction of the top-k whose predicted and actual changes agree in sign
    spearman_derivative: float
    sign_agreement_derivative: float
    spearman_gates_held: float
    sign_agreement_gates_held: float
    # Where the linearisation fails (logitlab.features.held): zeroing with attention patterns, norm scales and
    # gates all held at the clean run's (the graph's own linear model, run by the real model's code: equals
    # ``predicted`` up to rounding), and with each of the three released alone (the other two held).
    actual_all_held: list[float] = field(default_factory=list)
    actual_released: dict[str, list[float]] = field(default_factory=dict)
    spearman_released: dict[str, float] = field(default_factory=dict)
    sign_agreement_released: dict[str, float] = field(default_factory=dict)
    # The real model itself (its own MLPs, no replacement: ``mlps="model"``): "zeroed" (change of Δ) and
    # "derivative" (a·dΔ/da by the step) with nothing held, "derivative_attention_held" with attention patterns
    # held and "derivative_attention_norms_held" with norm scales held too (then only the MLPs' Jacobian differs
    # from the graph's linear model), each with its Spearman and sign agreement against the graph ("spearman" /
    # "sign_agreement" keyed by the same names); "own_first_order": both between the model's own −a·dΔ/da and its
    # "zeroed" (no graph: how far any exact first-order attribution could agree with zeroing).
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _graph_ids(model: Any, prompt: str | list[int] | None, graph: AttributionGraph) -> list[int]:
    ids = list(graph.tokens) if prompt is None else _ids(model, prompt)
    if ids != list(graph.tokens):
        raise LogitlabError("the prompt's tokens differ from the graph's", "give the prompt the graph was made of")
    return ids


def check_top_features(model: Any, prompt: str | list[int] | None, dictionaries: DictionarySet,
                       graph: AttributionGraph, k: int = 10, *, answer: str | int, contrast: Any,
                       step: float = 1e-3) -> TopFeatureCheck:
    """Zero each of the graph's top-k features (by influence on the logit difference) in the real model and
    compare the change of the logit difference with the graph's prediction (module docstring)."""
    ids = _graph_ids(model, prompt, graph)
    diff = _diff_dir(model, answer, contrast)
    if diff is None:
        raise LogitlabError("check_top_features needs the answer and contrast of the graph's logit difference")
    top = top_features(graph, k)
    if graph.rows is None:
        deriv = predicted_effects(graph)[top]
    else:
        deriv = effects_by_backward(model, dictionaries, graph, answer=answer, contrast=contrast)[top]
    feats = [tuple(int(v) for v in graph.features[i]) for i in top.tolist()]
    sets = [[]] + [[Edit(*f, "zero")] for f in feats] + [[Edit(*f, "scale", 1 + step)] for f in feats]
    prep = _prepare(model, ids, dictionaries, patterns=True, frozen=graph.frozen_positions)  # one clean run for all
    ld = _logit_diffs(_run_many(model, ids, dictionaries, sets[:1 + len(feats)], prep=prep), diff)
    held = _logit_diffs(_run_many(model, ids, dictionaries, sets, hold_gates=True, prep=prep), diff)
    clean, n = float(ld[0]), len(feats)
    actual = ld[1:1 + n] - clean
    actual_held = held[1:1 + n] - float(held[0])
    d_actual = (held[1 + n:] - float(held[0])) / step
    pred = -deriv
    agree = lambda a, b: float((torch.sign(a) == torch.sign(b)).double().mean()) if len(a) else float("nan")  # noqa: E731

    def zeroed(hold: frozenset[str]) -> Tensor:
        v = _logit_diffs(_run_many(model, ids, dictionaries, sets[:1 + n], hold=hold, prep=prep), diff)
        return v[1:] - float(v[0])
    released = {h: zeroed(frozenset(HOLDS) - {h}) for h in HOLDS}
    free = _logit_diffs(_run_many(model, ids, dictionaries, sets, prep=prep, mlps="model"), diff)  # one clean row
    held_derivs = {}
    for name, hold in (("derivative_attention_held", ("attention",)),
                       ("derivative_attention_norms_held", ("attention", "norms"))):
        v = _logit_diffs(_run_many(model, ids, dictionaries, [[]] + sets[1 + n:], hold=hold, prep=prep,
                                   mlps="model"), diff)
        held_derivs[name] = (v[1:] - float(v[0])) / step
    own = {"zeroed": free[1:1 + n] - float(free[0]), "derivative": (free[1 + n:] - float(free[0])) / step,
           **held_derivs}
    ref = {"zeroed": pred, **{k: deriv for k in own if k != "zeroed"}}
    model_part = {**{k: v.tolist() for k, v in own.items()},
                  "spearman": {k: spearman(ref[k], v) for k, v in own.items()},
                  "sign_agreement": {k: agree(ref[k], v) for k, v in own.items()},
                  "own_first_order": {"spearman": spearman(-own["derivative"], own["zeroed"]),
                                      "sign_agreement": agree(-own["derivative"], own["zeroed"])}}
    return TopFeatureCheck(
        features=[list(f) for f in feats], activations=graph.activations[top].double().tolist(),
        predicted=pred.tolist(), actual=actual.tolist(), derivative_predicted=deriv.tolist(),
        derivative_actual=d_actual.tolist(), actual_gates_held=actual_held.tolist(), step=step, logit_diff=clean,
        spearman=spearman(pred, actual), sign_agreement=agree(pred, actual),
        spearman_derivative=spearman(deriv, d_actual), sign_agreement_derivative=agree(deriv, d_actual),
        spearman_gates_held=spearman(pred, actual_held), sign_agreement_gates_held=agree(pred, actual_held),
        actual_all_held=zeroed(frozenset(HOLDS)).tolist(),
        actual_released={h: v.tolist() for h, v in released.items()},
        spearman_released={h: spearman(pred, v) for h, v in released.items()},
        sign_agreement_released={h: agree(pred, v) for h, v in released.items()}, model=model_part)


# ---- faithfulness ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faithfulness:
    """Fraction of the logit difference recovered when only n features are kept (others zeroed, errors held)."""

    sizes: list[int]
    logit_diff: list[float]  # Δ with the top-n kept
    recovered: list[float]  # (Δ_n − Δ_0) / (Δ_clean − Δ_0)
    random_recovered: list[list[float]]  # per size, one value per random set
    random_mean: list[float]
    logit_diff_clean: float
    logit_diff_none: float  # every feature zeroed (errors held)
    n_random: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _keep_sets(graph: AttributionGraph, kept: list[Tensor], L: int, F: int) -> list[Tensor]:
    """Per kept set, the multiplier (L, T, F): 1 for the kept feature nodes, else 0 (the frozen positions' MLP
    outputs are held by the pass itself: :func:`~logitlab.features.held.clean_state`'s ``frozen``)."""
    T = graph.n_pos
    out = []
    for idx in kept:
        m = torch.zeros(L, T, F)
        f = graph.features[idx]
        m[f[:, 0], f[:, 1], f[:, 2]] = 1.0
        out.append(m)
    return out


def faithfulness_curve(model: Any, prompt: str | list[int] | None, dictionaries: DictionarySet,
                       graph: AttributionGraph, *, answer: str | int, contrast: Any, sizes: list[int] | None = None,
                       n_random: int = 5, seed: int = 0) -> Faithfulness:
    """Recovery of the logit difference keeping the top-n features by influence, against random n-feature sets."""
    ids = _graph_ids(model, prompt, graph)
    diff = _diff_dir(model, answer, contrast)
    if diff is None:
        raise LogitlabError("faithfulness_curve needs the answer and contrast of the graph's logit difference")
    n_f = graph.n_features
    if sizes is None:
        sizes = sorted({min(n_f, v) for v in [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]} | {n_f})
    sizes = [int(s) for s in sizes if 0 <= s <= n_f]
    order = top_features(graph)
    gen = torch.Generator().manual_seed(seed)
    rand = [[torch.randperm(n_f, generator=gen)[:s] for _ in range(n_random)] for s in sizes]
    kept = [order[:0], order] + [order[:s] for s in sizes] + [r for rs in rand for r in rs]
    p = _prepare(model, ids, dictionaries, frozen=graph.frozen_positions)
    L, F = p.r.spec.n_layers, dictionaries.n_features
    lds = []
    with torch.no_grad():
        for c0 in range(0, len(kept), 8):
            muls = torch.stack(_keep_sets(graph, kept[c0:c0 + 8], L, F)).to(p.r.device, p.ds.layers[0].W_enc.dtype)
            lds.append(_logit_diffs(held_forward(p.r, p.tokens, p.ds, p.st, muls, None, len(muls)).double().cpu(),
                                    diff))
    ld = torch.cat(lds)
    none, clean = float(ld[0]), float(ld[1])
    span = clean - none
    rec = lambda v: float((v - none) / span) if span != 0 else float("nan")  # noqa: E731
    top_ld = ld[2:2 + len(sizes)]
    rnd = ld[2 + len(sizes):].view(len(sizes), n_random) if n_random else torch.zeros(len(sizes), 0)
    rnd_rec = [[rec(v) for v in row.tolist()] for row in rnd]
    return Faithfulness(
        sizes=sizes, logit_diff=top_ld.tolist(), recovered=[rec(v) for v in top_ld.tolist()],
        random_recovered=rnd_rec, random_mean=[sum(r) / len(r) if r else math.nan for r in rnd_rec],
        logit_diff_clean=clean, logit_diff_none=none, n_random=n_random, seed=seed)
