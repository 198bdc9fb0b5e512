"""The real page in headless Chromium (Debian's chromium, driven by Playwright): type a prompt, click
Generate, wait for both columns and the plots, save a screenshot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.browser]
SHOTS = Path(os.environ.get("MOI_DEMO_SCREENSHOTS", Path(__file__).resolve().parents[1] / "out"))


@pytest.fixture(scope="module")
def page():
    from moi_demo.tools.pagebench import browser_page, chromium_path

    if chromium_path() is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --dev installs it)")
    with browser_page() as page:
        yield page


def test_generate_in_the_browser(page, app):
    url, engine = app
    page.goto(url, wait_until="load")
    page.locator("#prompt textarea").wait_for(timeout=60_000)
    page.locator("#prompt textarea").fill("Write a haiku about autumn leaves.")
    page.locator("#generate").click()
    standard = page.locator("#standard-text textarea")
    moi = page.locator("#moi-text textarea")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#standard-text textarea, #moi-text textarea')]"
        ".every(t => t.value.length > 10)",
        timeout=60_000,
    )
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot').length >= 3 && "
        "document.querySelectorAll('#token-plot .moi-tokens .t').length > 20",
        timeout=60_000,
    )
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Done')", timeout=60_000)
    assert standard.input_value() and moi.input_value()
    assert "Mixture of Inputs (beta = 1)" in page.locator("#moi-text").inner_text()
    assert page.locator("#heatmap-plot .js-plotly-plot").count() == 1
    # What the model reads at the inspected step: both lanes' cosine and 5 nearest tokens; the MoI lane's cosine
    # per step in the Entropy view.
    page.wait_for_function("() => document.querySelectorAll('#reads .near').length === 10", timeout=60_000)
    rows = page.locator("#reads tr.lane-standard td.cos, #reads tr.lane-moi td.cos").all_inner_texts()
    assert rows[0] == "1.0000" and 0 < float(rows[1]) <= 1.0001
    assert page.locator("#entropy-plot .legendtext").filter(has_text="cos(fed, E[sampled])").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#reads").scroll_into_view_if_needed()
    page.locator("#step-plot").screenshot(path=str(SHOTS / "inside_a_step.png"))
    page.locator("#reads").screenshot(path=str(SHOTS / "inspector.png"))
    page.screenshot(path=str(SHOTS / "app.png"), full_page=True)
    assert (SHOTS / "app.png").stat().st_size > 50_000
    assert engine.num_unfinished_requests() == 0


def _set_number(page, elem_id: str, value: str) -> None:
    """Type in a slider's number box and leave it: the slider's release event, as a user's edit fires it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.blur()


def _status_changes(page, selector: str, word: str):
    """A waiter for the element's text to change (from now) to one containing `word`."""
    before = page.locator(selector).inner_text()
    return lambda: page.wait_for_function(
        "([s, before, word]) => { const t = document.querySelector(s).innerText; "
        "return t !== before && t.includes(word); }",
        arg=[selector, before, word],
        timeout=120_000,
    )


def test_beta_change_reruns_the_moi_lane_alone(page, app):
    engine = app[1]
    standard_before = page.locator("#standard-text textarea").input_value()
    moi_before = page.locator("#moi-text textarea").input_value()
    applied = engine.stats()["applied_steps"]
    done = _status_changes(page, "#status", "standard lane reused")
    _set_number(page, "beta", "0")  # no click on Generate
    done()
    assert "Mixture of Inputs (beta = 0)" in page.locator("#moi-text").inner_text()
    assert "Standard (reused: same inputs)" in page.locator("#standard-text").inner_text()
    assert page.locator("#standard-text textarea").input_value() == standard_before
    assert page.locator("#moi-text textarea").input_value() != moi_before  # beta 0 keeps the least of the sample
    assert engine.stats()["applied_steps"] > applied and engine.num_unfinished_requests() == 0


def test_sweep_renders_every_lane_and_its_charts_then_the_slider_shows_a_swept_lane(page, app):
    engine = app[1]
    page.locator("#betas textarea").fill("0.5, 2, direct")
    done = _status_changes(page, "#sweep-status", "Swept 3 lanes")
    page.locator("#sweep").click()
    done()
    page.wait_for_function(
        "() => document.querySelectorAll('#sweep-summary-plot .js-plotly-plot, "
        "#sweep-curves-plot .js-plotly-plot').length === 2",
        timeout=60_000,
    )
    texts = [page.locator(f"#sweep-lane-{i} textarea").input_value() for i in range(3)]
    assert all(texts), texts  # every swept lane shows its text
    assert page.locator("#sweep-lane-3").count() == 0 or not page.locator("#sweep-lane-3").is_visible()
    assert "Direct mixture (w = p)" in page.locator("#sweep-lane-2").inner_text()
    assert page.locator("#sweep-summary-plot .bars .point").count() == 3  # a divergence bar per lane
    assert page.locator("#sweep-curves-plot .legendtext").count() == 3
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#sweep-summary-plot").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "sweep.png"), full_page=True)
    # The slider to a swept beta: that lane at once, from the session's lanes.
    applied = engine.stats()["applied_steps"]
    done = _status_changes(page, "#status", "no engine call")
    _set_number(page, "beta", "2")
    done()
    assert page.locator("#moi-text textarea").input_value() == texts[1]
    assert engine.stats()["applied_steps"] == applied


def test_page_bench_smoke(page, app):
    """`moi-demo bench --page` at smoke size against the shared app: every action is timed from the user's own
    click or input event (the bench raises when the page saw none) to a first token, and the table prints."""
    from moi_demo.tools.pagebench import PageSettings, measure_page, page_table

    s = PageSettings(runs=1, tokens=8, betas=(0.5,), sweep="0, direct")
    results = measure_page(page, app[0], s)
    assert [len(w) for w in results.values()] == [1, 1, 1]
    for windows in results.values():
        assert all(0 < w.first_token_s < 60 and w.bytes_received > 0 for w in windows)
    table = page_table(results, s)
    assert "| Generate (8 + 8 tokens) | 1 |" in table and "| beta sweep (standard + 2 lanes) | 1 |" in table
    assert app[1].num_unfinished_requests() == 0
