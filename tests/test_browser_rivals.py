"""MoI's rivals on the real page in headless Chromium: the live step cost on the status line while the lanes
stream, the same-tokens comparison (its chart and the inspected step's two top-k) and the diversity view (N seeds per
mode: the answers' histogram and the token paths' tree). Screenshots for the README."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser_util import opened, type_in

pytestmark = [pytest.mark.engine, pytest.mark.browser]
SHOTS = Path(os.environ.get("MOI_DEMO_SCREENSHOTS", Path(__file__).resolve().parents[1] / "out"))


@pytest.fixture(scope="module")
def page(app):
    with opened(app[0], "Name three colours and say why you like them.", "64") as page:
        yield page


def test_the_step_cost_shows_while_the_lanes_stream(page, app):
    """While a 64 + 64-token run streams, the line beside the lanes reads "Per step, live: engine step ... ms · plugin
    ... ms (...%)"; once done it holds the run's figure."""
    page.locator("#generate").click()
    page.wait_for_function(
        "() => /^Per step, live: engine step [0-9.]+ ms · plugin [0-9.]+ ms \\([0-9.]+%\\)/"
        ".test(document.querySelector('#step-cost').innerText)",
        timeout=120_000,
    )
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Done')", timeout=120_000)
    assert page.locator("#step-cost").inner_text().startswith("Per step over the run: engine step")


def test_the_same_tokens_comparison_shows_its_chart_and_the_steps_two_top_k(page, app):
    page.get_by_text("Same tokens, two inputs").click()  # open the accordion
    page.locator("#compare").click()
    page.wait_for_function(
        "() => document.querySelector('#compare-panel .moi-compare') !== null && "
        "document.querySelectorAll('#compare-plot .js-plotly-plot .scatterlayer .trace').length === 2",
        timeout=120_000,
    )
    panel = page.locator("#compare-panel")
    assert panel.locator("caption").all_inner_texts() == ["Standard", "MoI, same tokens"]
    assert panel.locator("tr.taken").count() == 2  # both lanes took the standard token
    step = page.locator("#step input[type=number]")
    step.fill("5")
    step.blur()
    page.wait_for_function(
        "() => document.querySelector('#compare-panel .moi-compare')?.dataset.step === '5'", timeout=60_000
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#compare-plot").scroll_into_view_if_needed()
    page.locator("#compare-plot").screenshot(path=str(SHOTS / "compare.png"))
    page.locator("#compare-panel").screenshot(path=str(SHOTS / "compare_step.png"))


def test_the_diversity_view_counts_every_seed(page, app):
    type_in(page, "temperature", "1", "Tab")  # not a live control: no run
    page.get_by_text("Diversity: N seeds per mode").click()
    type_in(page, "seeds", "6", "Tab")
    page.locator("#diversity").click()
    page.wait_for_function(
        "() => document.querySelector('#spread')?.innerText.includes('distinct_paths') && "
        "document.querySelectorAll('#paths-plot .js-plotly-plot').length === 1",
        timeout=180_000,
    )
    text = page.locator("#spread").inner_text()
    assert text.count("distinct_paths") == 2 and text.count("distinct_answers") == 2  # both modes, summarised
    bars = page.locator("#answers-plot .js-plotly-plot .barlayer .trace")
    assert bars.count() == 2
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#answers-plot").scroll_into_view_if_needed()
    page.locator("#answers-plot").screenshot(path=str(SHOTS / "diversity_answers.png"))
    page.locator("#paths-plot").screenshot(path=str(SHOTS / "diversity_paths.png"))
