"""plots.py: pure functions from traces to figures, checked on hand-built traces."""

from __future__ import annotations

import math
import re

import pytest

from moi_demo.app import plots
from moi_demo.core.config import MoIConfig
from moi_demo.core.plain import step_weights
from moi_demo.core.trace import Step, Trace, first_divergence, load_traces, save_traces


def make_trace(lane: str, tokens: list[int], cfg: MoIConfig) -> Trace:
    trace = Trace(lane=lane, mode=cfg.mode, beta=cfg.beta, top_k=cfg.top_k)
    for i, tok in enumerate(tokens):
        ids = [10, 11, 12]
        logprobs = [math.log(0.6), math.log(0.3), math.log(0.1)]
        step = Step(
            index=i,
            token_id=tok,
            token=f"t{tok}",
            logprob=math.log(0.6 if tok == 10 else 0.05),
            topk_ids=ids,
            topk_logprobs=logprobs,
            entropy=0.0,
            topk_tokens=["a", "b", "a"],
        )
        cands, w, h = step_weights(logprobs, ids, tok, cfg)
        step.entropy = h
        if cfg.mixes:
            step.candidate_ids, step.weights = cands, w
        trace.steps.append(step)
    return trace


@pytest.fixture
def pair():
    standard = make_trace("standard", [10, 10, 11, 10], MoIConfig("standard", 1.0, 3))
    moi = make_trace("moi", [10, 10, 13, 12, 10], MoIConfig("moi", 1.0, 3))  # 13: outside the top-3
    return standard, moi


def test_first_divergence(pair):
    assert first_divergence(*pair) == 2
    same = make_trace("moi", [10, 10, 11, 10], MoIConfig("moi", 1.0, 3))
    assert first_divergence(pair[0], same) is None


def _spans(page: str) -> list[tuple[str, str, str]]:
    """(classes, style, text) of every token span of a token map."""
    return re.findall(r'<span class="t([^"]*)" style="([^"]*)" title="[^"]*">([^<]*)</span>', page)


def test_token_map_colours_by_p_or_entropy(pair):
    page = plots.token_map(*pair, color_by="p", selected=1)
    spans = _spans(page)
    assert len(spans) == 4 + 5  # standard's tokens, then MoI's
    moi = spans[4:]
    assert f"background:{plots._VIRIDIS[60]}" in moi[0][1]  # p(sampled) = 0.6
    assert f"background:{plots._VIRIDIS[5]}" in moi[2][1]  # p = 0.05: a dark cell, white text
    assert "color:#fff" in moi[2][1] and "color:#111" in moi[0][1]
    assert "div" in moi[2][0] and "div" in spans[2][0]  # the first divergence (step 2) in both lanes
    assert "sel" in spans[1][0] and "sel" in moi[1][0] and page.count(" sel") == 2  # the inspected step
    assert [text for _, _, text in moi] == ["t10", "t10", "t13", "t12", "t10"]
    assert "lanes diverge at step 2" in page and "Coloured by p(sampled token)" in page
    h = pair[1].steps[0].entropy
    assert f"background:{plots._VIRIDIS[round(h * 100)]}" in _spans(plots.token_map(*pair, "entropy"))[4][1]


def test_token_map_escapes_token_text_and_template_syntax():
    trace = make_trace("moi", [10], MoIConfig("moi", 1.0, 3))
    trace.steps[0].token = "<b>${x}{{y}}"
    page = plots.token_map(trace, trace)
    assert "<b>" not in page and "${" not in page and "{{" not in page
    assert "&lt;b&gt;&#36;&#123;x&#125;" in page


def test_step_distribution_shows_prior_posterior_and_sampled(pair):
    fig = plots.step_distribution(*pair, 2)
    names = [d.name for d in fig.data]
    assert names == ["prior p (top-k)", "prior p (top-k)", "posterior w (fed back)"]
    moi_prior, moi_post = fig.data[1], fig.data[2]
    assert list(moi_prior.x) == ["a", "b", "a (2)", "t13"]  # the outside-top-k sample is shown too
    assert sum(moi_post.y) == pytest.approx(1.0)
    assert moi_post.y[3] == pytest.approx(pair[1].steps[2].sampled_weight)
    assert list(moi_prior.marker.line.width) == [0, 0, 0, 3]  # the sampled token is outlined


def test_weights_heatmap_rows_are_ranks(pair):
    fig = plots.weights_heatmap(pair[1])
    z = fig.data[0].z
    assert len(z) == 4 and len(z[0]) == 5  # 3 ranks + "outside", 5 steps
    assert [sum(col) for col in zip(*z, strict=True)] == pytest.approx([1.0] * 5, abs=5e-4)
    assert z[3][2] > 0 and z[3][0] == 0  # step 2's sampled token 13 was outside the top-k


def test_entropy_chart_marks_divergence(pair):
    fig = plots.entropy_chart(*pair)
    assert len(fig.data) == 3
    assert [s.x0 for s in fig.layout.shapes] == [2]
    assert list(fig.data[2].y) == pytest.approx([s.sampled_weight for s in pair[1].steps], abs=5e-5)


def test_empty_traces_give_placeholders():
    empty = Trace("standard", "standard", 1.0, 3), Trace("moi", "moi", 1.0, 3)
    for fig in (plots.step_distribution(*empty, 0), plots.weights_heatmap(empty[1]), plots.entropy_chart(*empty)):
        assert fig.layout.annotations[0].text.startswith("Generate")
    assert "Generate to see the tokens" in plots.token_map(*empty) and not _spans(plots.token_map(*empty))


def test_traces_json_round_trip(pair, tmp_path):
    save_traces(tmp_path / "t.json", list(pair))
    assert load_traces(tmp_path / "t.json") == list(pair)


def test_pair_views_are_the_views_at_the_first_divergence(pair):
    token, step, heat, entropy, reads = (view() for view in plots.pair_views(*pair, "entropy"))
    assert "step 2" in step.layout.annotations[0].text  # the lanes diverge at step 2
    assert "normalised entropy H" in token and heat.data[0].type == "heatmap"
    assert entropy.layout.shapes[0].x0 == 2 and len(entropy.data) == 3
    assert "Generate, then pick a step" in reads  # no inspection given


def test_what_the_model_reads_shows_the_inspection(pair):
    standard, moi = pair
    inspection = [
        {
            "lane": "standard",
            "label": "Standard",
            "step": 2,
            "cos_at_step": 1.0,
            "cos": [1.0] * len(standard.steps),
            "nearest": [{"token": " Paris", "id": 7, "cos": 1.0}, {"token": "<b>", "id": 8, "cos": 0.5}],
        },
        {
            "lane": "moi",
            "label": "Mixture of Inputs (beta = 1)",
            "step": 2,
            "cos_at_step": 0.8765,
            "cos": [0.9] * len(moi.steps),
            "nearest": [{"token": "Lyon", "id": 9, "cos": 0.8}],
        },
    ]
    html = plots.reads_panel(inspection)
    assert "after step 2" in html and "1.0000" in html and "0.8765" in html
    assert "·Paris" in html and "&lt;b&gt;" in html and "<b>" not in html  # tokens shown, escaped
    entropy = plots.pair_views(standard, moi, "p", inspection)[3]()
    assert [d.name for d in entropy.data][-1] == "cos(fed, E[sampled]), MoI (beta = 1)"
    assert list(entropy.data[-1].y) == [0.9] * len(moi.steps)


def test_figures_carry_a_lean_template():
    """Every figure's JSON goes to the page: plotly_white's look without its 3-D, polar, geo and colour-scale
    defaults (7 KB a figure)."""
    import json

    fig = plots.empty_figure("title")
    template = json.loads(fig.to_json())["layout"]["template"]
    assert template["layout"]["plot_bgcolor"] == "white" and template["layout"]["xaxis"]["gridcolor"] == "#EBF0F8"
    assert template["layout"]["xaxis"]["automargin"] is False  # fixed margins: plotly draws each figure once
    assert not {"scene", "polar", "geo", "ternary", "colorscale"} & set(template["layout"]) and "data" not in template
    assert len(fig.to_json()) < 1500
