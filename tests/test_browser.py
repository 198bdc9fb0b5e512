"""The real page in headless Chromium (Debian's chromium, driven by Playwright): type a prompt, click
Generate, wait for both columns and the plots, save a screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]
SHOTS = Path(os.environ.get("MOI_DEMO_SCREENSHOTS", Path(__file__).resolve().parents[1] / "out"))


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --dev installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


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
        ".every(t => t.value.length > 10)", timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Done')", timeout=60_000)
    assert standard.input_value() and moi.input_value()
    assert "Mixture of Inputs (beta = 1)" in page.locator("#moi-text").inner_text()
    assert page.locator("#heatmap-plot .js-plotly-plot").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "app.png"), full_page=True)
    assert (SHOTS / "app.png").stat().st_size > 50_000
    assert engine.num_unfinished_requests() == 0
