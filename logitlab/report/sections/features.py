"""Transcoder features: the run report's ``features`` section (the features that matter for the logit difference
across prompts, with CIs; it holds no single graph). The offline view of one attribution graph (``logitlab
graph``'s graph.html, with its feature cards) is :mod:`._graph_view`, re-exported here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import plotly.graph_objects as go

from logitlab.results import Results

from .._numbers import pct_ci
from ..layout import BLUE, error_bars, plot_layout
from ..markup import Figures, esc, figure_html, note, table
from ..registry import FigureSpec, Finding, Rule, Section, register
from ._graph_view import graph_figure, graph_page

__all__ = ["graph_figure", "graph_page", "features_figure", "check_finding"]

#: The check's measures as the report names them (logitlab.features.analysis.CHECK_MEASURES).
_MEASURES = {"zeroing": "zeroing (replacement downstream)", "model_zeroing": "zeroing in the real model",
             "model_derivative": "first-order effect in the real model",
             "model_derivative_attention_held": "first-order effect, attention patterns held",
             "model_derivative_attention_norms_held": "first-order effect, attention patterns and norm scales held",
             "model_zeroing_by_model_derivative": "not the graph: the real model's own first-order effect against "
                                                  "its zeroing (the most an exact linear attribution can agree)"}


# ---- the run report's section -----------------------------------------------------------------------------
def features_figure(results: Results) -> go.Figure:
    """The top features' mean influence on the logit difference with 95% CIs over prompts."""
    top = results["features"]["top"]  # type: ignore[typeddict-item]
    labels = [f"L{r['layer']}/{r['feature']}" for r in top]
    means = [float(r["mean"]) for r in top]
    fig = go.Figure(go.Bar(x=labels, y=means, marker_color=BLUE, error_y=error_bars(means, [r["ci"] for r in top]),
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    plot_layout(fig, "Features' influence on the logit difference (mean over prompts, 95% CI)", 360,
                showlegend=False)
    fig.update_xaxes(type="category", title_text="layer/feature")
    fig.update_yaxes(title_text="influence")
    return fig


def section_features(results: Results, figures: Figures, findings: Sequence[Finding]) -> str:
    f = results["features"]  # type: ignore[typeddict-item]
    rep, comp = f["replacement"], f["completeness"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    rows = [[esc(r["layer"]), esc(r["feature"]), esc(f"{r['mean']:.4f}"),
             esc(f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]"), esc(f"{r['direct']:+.4f}"), esc(r["n_active"])]
            for r in f["top"]]
    return (f"<p>Attribution graphs of {esc(f['n_prompts'])} prompts over the transcoders {esc(f['transcoders'])}: "
            f"mean replacement score {mean(rep):.3f}, completeness {mean(comp):.3f}; exactness residual at most "
            f"{f['max_check']:.1e}.</p>" + figure_html(figures, "features")
            + table(["layer", "feature", "mean influence", "95% CI", "direct effect", "prompts active"], rows, "kv")
            + note("Influence: circuit-tracer's normalised influence on the logit-difference target, direct and "
                   "through other nodes, summed over the positions where the feature is active (0 where inactive).")
            + _frozen_html(f.get("frozen_positions"), f["n_prompts"])
            + _check_html(f.get("check")))


def _mean_ci(m: dict | None, signed: bool = True) -> str:
    """``+0.12 [−0.05, +0.30]`` (two decimals: these are correlations and fractions), or — when undefined on every
    prompt."""
    if not isinstance(m, dict) or m.get("mean") is None:
        return "—"
    two = lambda v: (f"{round(v, 2) + 0.0:+.2f}" if signed else f"{round(v, 2) + 0.0:.2f}").replace("-", "−")  # noqa: E731
    return f"{two(m['mean'])} [{two(m['ci'][0])}, {two(m['ci'][1])}]"


def _check_html(c: dict | None) -> str:
    """The graphs' predictions against the real model, per measure, over prompts."""
    if not isinstance(c, dict):
        return ""
    ms = c.get("measures") or {}
    rows = [[esc(_MEASURES.get(k, k)), esc(_mean_ci(m.get("spearman"))),
             esc(_mean_ci(m.get("sign_agreement"), signed=False)), esc((m.get("spearman") or {}).get("n"))]
            for k, m in ms.items()]
    return (f"<p>The graphs against the real model: on every prompt the top {esc(c['k'])} features by influence "
            "are zeroed (or scaled by 1 + 10⁻³ for the first-order effect), and the change of the logit difference is "
            "compared with the graph's prediction.</p>"
            + table(["compared with", "Spearman, mean [95% CI]", "sign agreement, mean [95% CI]", "prompts"], rows,
                    "kv")
            + note("The graph is exact for the model with attention patterns, norm scales and features' on/off states "
                   "frozen at the prompt's values; run with all three held, zeroing gives the prediction within "
                   f"{c['linear_model_error']:.1e}. The real model moves all three. With attention patterns and "
                   "norm scales held, the real model differs from the graph's linear model only in its MLPs (their "
                   "own response instead of the transcoders'). The last row compares no graph: where the real "
                   "model's own a·dΔ/da does not predict its zeroing, no exact first-order attribution can.")
            + _where_html(c.get("features")))


def _frozen_html(frozen: list | None, n: int) -> str:
    """Which positions after BOS the graphs freeze (massive activations), in how many prompts."""
    after = [p for per in frozen or [] for p in per if p > 0]
    if not frozen:
        return ""
    if not after:
        return note("No position after BOS holds a massive activation: only BOS is frozen.")
    counts = ", ".join(f"position {p} in {after.count(p)} of {n} prompts" for p in sorted(set(after)))
    return note(f"Frozen like BOS (a massive activation: no nodes there, the MLP outputs held at their real values): "
                f"{counts}.")


def _where_html(features: list | None) -> str:
    """Where the checked features sit: how many in each layer and at each position."""
    flat = [f for per in features or [] for f in per]
    if not flat:
        return ""
    count = lambda i: sorted(Counter(f[i] for f in flat).items())  # noqa: E731
    layers = ", ".join(f"layer {k}: {n}" for k, n in count(0))
    positions = ", ".join(f"position {k}: {n}" for k, n in count(1))
    return note(f"The {len(flat)} checked features by layer ({layers}) and by position ({positions}).")


def check_finding(results: Results) -> Finding | None:
    """How well the graphs' top features' predicted effects agree with zeroing them in the real model."""
    c = (results.get("features") or {}).get("check")  # type: ignore[union-attr]
    if not isinstance(c, dict):
        return None
    m = (c.get("measures") or {}).get("model_zeroing") or {}
    rho, sign = m.get("spearman") or {}, m.get("sign_agreement") or {}
    if rho.get("mean") is None or sign.get("mean") is None:
        return None
    lo, hi = rho["ci"]
    verdict = ("agree in rank" if lo > 0 else "do not agree in rank beyond chance" if lo <= 0 <= hi
               else "disagree in rank")
    text = (f"Feature graphs: zeroing each prompt's top {c['k']} features in the real model, the graphs' "
            f"predicted changes of the logit difference {verdict} (Spearman {_mean_ci(rho)} over {rho['n']} "
            f"prompts; signs agree for {pct_ci(sign['mean'], tuple(sign['ci']))})")
    first = (c.get("measures") or {}).get("model_derivative") or {}
    frho, fsign = first.get("spearman") or {}, first.get("sign_agreement") or {}
    if frho.get("mean") is not None and fsign.get("mean") is not None:
        fv = ("agree in rank" if frho["ci"][0] > 0 else "do not agree in rank beyond chance"
              if frho["ci"][0] <= 0 <= frho["ci"][1] else "disagree in rank")
        text += (f"; to first order (each feature scaled by 1 + 10⁻³) they {fv} with the real model (Spearman "
                 f"{_mean_ci(frho)}; signs agree for {pct_ci(fsign['mean'], tuple(fsign['ci']))})")
    own = (c.get("measures") or {}).get("model_zeroing_by_model_derivative") or {}
    orho, osign = own.get("spearman") or {}, own.get("sign_agreement") or {}
    if orho.get("mean") is not None and osign.get("mean") is not None and orho["ci"][1] < 0.5:
        text += (f". The real model's own first-order effect −a·dΔ/da, which involves no graph, agrees with its "
                 f"zeroing only at Spearman {_mean_ci(orho)} (signs agree for "
                 f"{pct_ci(osign['mean'], tuple(osign['ci']))}): zeroing these features is largely beyond first "
                 f"order, which bounds what any exact linear attribution can agree with")
    return Finding(text, "features")


SECTION = register(Section(
    name="features", title="Transcoder features", order=990, render=section_features, analysis="features",
    keys=("features",), figures=(FigureSpec("features", "features", features_figure),), omit_when_not_run=True,
    rules=(Rule(71, check_finding),),
))
