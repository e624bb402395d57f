"""The rendered HTML: self-contained, escaped, complete and in order."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plotly.offline import get_plotlyjs

from logitlab.errors import LogitlabError
from logitlab.report import Report, build_figures, build_report, key_findings, render_report
from logitlab.report.attention import ATTENTION_JS, json_for_script
from synthetic import make_results

SECTIONS = [
    "Key findings", "Setup", "Predictions", "Logit difference", "DLA reconstruction check",
    "Logit lens", "Layer attribution", "Head attribution", "Attention patterns", "Head ablation",
    "Activation patching", "Unembedding bias", "Robustness across templates",
]  # the analysis registry's order (logitlab/analyses/registered.py), the report's own parts first
ALERT = "<script>alert(1)</script>"


class _Collector(HTMLParser):
    """Collects h2 texts, text outside scripts, script bodies and tag attributes."""

    def __init__(self) -> None:
        """Start with empty collections."""
        super().__init__(convert_charrefs=True)
        self.h2: list[str] = []
        self.text: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.attrs: list[tuple[str, dict[str, str | None]]] = []
        self._in: str | None = None
        self._script_attrs: dict[str, str | None] = {}
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record attributes; start buffering scripts and h2."""
        self.attrs.append((tag, dict(attrs)))
        if tag in ("script", "h2"):
            self._in, self._buf, self._script_attrs = tag, [], dict(attrs)

    def handle_endtag(self, tag: str) -> None:
        """Finish a buffered script or h2."""
        if tag == self._in == "script":
            self.scripts.append((self._script_attrs, "".join(self._buf)))
            self._in = None
        elif tag == self._in == "h2":
            self.h2.append("".join(self._buf))
            self._in = None

    def handle_data(self, data: str) -> None:
        """Buffer text; keep text outside scripts."""
        if self._in:
            self._buf.append(data)
        if self._in != "script":
            self.text.append(data)


@pytest.fixture(scope="module")
def rendered() -> tuple[dict[str, Any], str, _Collector]:
    """Results, their report HTML and its parse."""
    results = make_results()
    html = render_report(results, build_figures(results), key_findings(results))
    parser = _Collector()
    parser.feed(html)
    return results, html, parser


def _without_plotlyjs(html: str) -> str:
    """The HTML with the inlined plotly.js bundle cut out."""
    return html.replace(get_plotlyjs(), "")


def test_plotlyjs_and_viewer_inlined_once(rendered: tuple[dict[str, Any], str, _Collector]) -> None:
    """plotly.js and the attention viewer's script each appear exactly once."""
    _, html, parser = rendered
    assert html.count(get_plotlyjs()) == 1
    assert html.count(ATTENTION_JS) == 1
    assert html.count("plotly.js v") == get_plotlyjs().count("plotly.js v")
    assert all("src" not in attrs for attrs, _ in parser.scripts)


def test_no_external_resources(rendered: tuple[dict[str, Any], str, _Collector]) -> None:
    """No <link>, no src=/href= to the network; a CSP forbids network access."""
    _, html, parser = rendered
    rest = _without_plotlyjs(html)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", rest, re.I)
    assert "<link" not in rest.lower()
    for tag, attrs in parser.attrs:
        for key in ("src", "href"):
            val = attrs.get(key) or ""
            assert not re.match(r"\s*(https?:)?//", val, re.I), (tag, key, val)
        assert tag != "link"
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_hostile_strings_escaped(rendered: tuple[dict[str, Any], str, _Collector]) -> None:
    """A prompt containing <script>alert(1)</script> shows as text, never as markup."""
    results, html, parser = rendered
    assert ALERT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    text = "".join(parser.text)
    assert ALERT in text  # decoded by the parser: it is text content
    assert results["model"]["name"] in text  # "<b>tiny</b> & co" shown literally
    assert results["task"]["name"] in text
    assert "<b>tiny</b>" not in html and "<i>synthetic</i>" not in html
    # the only <script> elements are ours: plotly config, plotly.js, figures, viewer data,
    # viewer script, resize script
    kinds = [attrs.get("type") for attrs, _ in parser.scripts]
    assert kinds.count("application/json") == 1
    assert len(parser.scripts) == len(build_figures(results)) + 5


def test_sections_in_order(rendered: tuple[dict[str, Any], str, _Collector]) -> None:
    """All sections, in the specified order, each with its heading."""
    _, _, parser = rendered
    assert parser.h2 == SECTIONS


def test_figures_and_finding_links(rendered: tuple[dict[str, Any], str, _Collector]) -> None:
    """Every figure has an anchored div; every finding links to one."""
    results, html, _ = rendered
    for fid in build_figures(results):
        assert f'id="fig-{fid}"' in html and f'id="plot-{fid}"' in html
    findings = key_findings(results)
    assert findings
    for f in findings:
        assert f'href="#fig-{f.figure_id}"' in html


def test_attention_json_safe(rendered: tuple[dict[str, Any], str, _Collector]) -> None:
    """The viewer's data is escaped JSON that round-trips to the tokens."""
    results, html, parser = rendered
    body = next(b for attrs, b in parser.scripts if attrs.get("type") == "application/json")
    assert not set("<>&") & set(body)
    data = json.loads(body)
    assert data["tokens"] == results["attention"]["tokens"]
    assert [h["layer"] for h in data["heads"]] == [h["layer"] for h in results["attention"]["heads"]]
    assert "innerHTML" not in ATTENTION_JS and "textContent" in ATTENTION_JS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("<>&/'\"\u2028 sciptr!-")), max_size=12),
                max_size=6))
def test_json_for_script_any_tokens(tokens: list[str]) -> None:
    """For any tokens, the script JSON has no raw <, >, & and parses back unchanged."""
    out = json_for_script({"tokens": tokens, "x": [float("nan"), 1.5]})
    assert not set("<>&") & set(out)
    assert "</script" not in out.lower()
    assert json.loads(out) == {"tokens": tokens, "x": [None, 1.5]}


def test_dla_badge() -> None:
    """The DLA check shows PASS under 1e-4 and FAIL above."""
    r = make_results()
    html = render_report(r, {}, [])
    assert 'class="badge pass"' in html
    r["dla"]["relative_error"] = 2e-3
    html = render_report(r, {}, [])
    assert 'class="badge fail"' in html and "2.00e-03" in html


def test_naive_attribution_mentioned_only_when_present() -> None:
    """The post-norm correction is explained only when naive numbers exist."""
    r = make_results(post_norm=True)
    html = build_report(r).html
    assert "stack_head_results" in html and 'id="fig-head_attribution_naive"' in html
    r = make_results(post_norm=False)
    html = build_report(r).html
    assert "stack_head_results" not in html


def test_analyses_not_run_say_so() -> None:
    """Without the optional analyses every section heading stays; each of their sections says it was not run."""
    r = make_results()
    for key in ("attention", "head_ablation", "resid_patching", "attn_patching", "mlp_patching", "head_patching",
                "robustness"):
        del r[key]
    r["config"]["analyses"] = []
    report = build_report(r)
    parser = _Collector()
    parser.feed(report.html)
    assert parser.h2 == SECTIONS
    for name in ("attention", "ablation", "patching", "robustness"):
        assert f"Not run: the {name} analysis is not among this run" in report.html, name
    assert "fewer than two templates" not in report.html  # not a made-up reason
    assert not {"head_ablation_zero_logit_diff", "resid_patching", "robustness"} & set(report.figures)


def test_robustness_that_ran_gives_its_reason() -> None:
    """Robustness ran but found fewer than two templates: the section says so (not "not run")."""
    r = make_results()
    del r["robustness"]
    html = build_report(r).html
    assert "the task's prompts come from fewer than two templates" in html
    assert "Not run: the robustness analysis" not in html


def test_partial_results_are_refused_naming_the_key() -> None:
    """Results that do not match the schema are an error naming the first offending key, not a report with gaps."""
    r = make_results()
    partial = {k: r[k] for k in ("schema_version", "model", "task", "logit_diff")}
    with pytest.raises(LogitlabError, match="logitlab_version"):
        build_report(partial)
    r["logit_diff"]["per_prompt"] = "oops"
    with pytest.raises(LogitlabError, match=r"logit_diff\.per_prompt"):
        build_report(r)


def test_report_repr_html(results: dict[str, Any]) -> None:
    """The notebook view is an iframe whose srcdoc is fully escaped."""
    report = build_report(results)
    assert isinstance(report, Report)
    out = report._repr_html_()
    assert out.startswith("<iframe srcdoc=\"") and out.endswith("</iframe>")
    assert "<script" not in out and ALERT not in out
