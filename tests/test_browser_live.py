"""The live controls in headless Chromium, every way a person sets a value: a drag, a click on the track, typing in
the number box then Enter, typing then Tab, the arrow keys; for beta and top-k, and each mode choice. After each,
the MoI lane re-runs (or is shown from the session's lanes) with the value the page shows: its heading, its text
and the exported trace all belong to that setting."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser_util import opened, type_in

pytestmark = [pytest.mark.engine, pytest.mark.browser]
TOKENS = "12"  # short lanes: each case is one engine run of the MoI lane


@pytest.fixture(scope="module")
def page(app):
    with opened(app[0], "Name three colours.", TOKENS) as page:
        page.locator("#generate").click()
        page.wait_for_function(
            "() => document.querySelector('#download a') !== null && "
            "document.querySelector('#status').innerText.includes('Done')",
            timeout=120_000,
        )
        _wait_idle(app[1])
        yield page


def _wait_idle(engine, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while engine.num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.2)


def _box(page, elem_id: str):
    return page.locator(f"#{elem_id} input[type=number]")


def _track_x(page, elem_id: str, fraction: float) -> tuple[float, float]:
    r = page.locator(f"#{elem_id} input[type=range]").bounding_box()
    return r["x"] + 8 + (r["width"] - 16) * fraction, r["y"] + r["height"] / 2


def _drag(page, elem_id: str, start: float, end: float) -> None:
    x0, y = _track_x(page, elem_id, start)
    x1, _ = _track_x(page, elem_id, end)
    page.mouse.move(x0, y)
    page.mouse.down()
    for i in range(1, 9):
        page.mouse.move(x0 + (x1 - x0) * i / 8, y)
    page.mouse.up()


def _click_track(page, elem_id: str, fraction: float) -> None:
    page.mouse.click(*_track_x(page, elem_id, fraction))


def _arrows(page, elem_id: str, key: str, times: int) -> None:
    box = _box(page, elem_id)
    box.focus()
    for _ in range(times):
        box.press(key)


def _export(page) -> dict:
    href = page.locator("#download a").get_attribute("href")
    return page.evaluate("async (u) => (await fetch(u)).json()", href)


def _shown(page) -> tuple[float, int, str]:
    """The setting the controls show: beta, top-k, mode."""
    beta, top_k = float(_box(page, "beta").input_value()), int(float(_box(page, "top-k").input_value()))
    mode = page.locator("#mode input:checked").get_attribute("value")
    return beta, top_k, {"MoI": "moi", "Direct mixture": "direct"}[mode]


def _after(page, engine, act) -> dict:
    """Act, then wait until the page settles: a new export (each is a new file), no request left on the engine, the
    status done, and the exported MoI lane run at the setting the controls show. Returns that export; fails when the
    page never settles on the setting it shows (a run with the previous value, or none)."""
    before = page.locator("#download a").get_attribute("href")
    act()
    deadline, last, seen = time.monotonic() + 120, None, {}
    while time.monotonic() < deadline:
        time.sleep(0.3)
        href = page.locator("#download a").get_attribute("href")
        status = page.locator("#status").inner_text()
        busy = engine.num_unfinished_requests()
        seen = {"new export": href != before, "engine requests": busy, "status": status[:160]}
        if href == before or busy or not re.search("Done|Shown", status):
            continue
        export = _export(page)
        beta, top_k, mode = _shown(page)
        moi = export["traces"][1]
        last = (moi["mode"], moi["beta"], moi["top_k"]), (mode, beta, top_k)
        if (moi["mode"], moi["top_k"]) == (mode, top_k) and (mode == "direct" or moi["beta"] == pytest.approx(beta)):
            return export
    raise AssertionError(
        f"the page never settled on the setting it shows: (exported, shown) = {last}; last seen: {seen}"
    )


def _check(page, export: dict) -> dict:
    """The MoI lane's heading and text are those of the exported MoI trace (which ran at the setting shown)."""
    moi = export["traces"][1]
    heading = page.locator("#moi-text").inner_text()
    expected = "Direct mixture (w = p)" if moi["mode"] == "direct" else f"Mixture of Inputs (beta = {moi['beta']:g})"
    assert expected in heading, heading
    assert page.locator("#moi-text textarea").input_value() == moi["text"]
    return moi


BETA_CASES = {
    "drag": lambda page: _drag(page, "beta", 0.25, 0.5),
    "click on the track": lambda page: _click_track(page, "beta", 0.75),
    "typing + Enter": lambda page: type_in(page, "beta", "0.35", "Enter"),
    "typing + Tab": lambda page: type_in(page, "beta", "0.45", "Tab"),
    "arrow keys": lambda page: _arrows(page, "beta", "ArrowUp", 2),
}
TOP_K_CASES = {
    "drag": lambda page: _drag(page, "top-k", 0.5, 0.8),
    "click on the track": lambda page: _click_track(page, "top-k", 0.2),
    "typing + Enter": lambda page: type_in(page, "top-k", "7", "Enter"),
    "typing + Tab": lambda page: type_in(page, "top-k", "9", "Tab"),
    "arrow keys": lambda page: _arrows(page, "top-k", "ArrowUp", 2),
}


@pytest.mark.parametrize("method", list(BETA_CASES))
def test_beta_reruns_the_moi_lane_with_the_value_shown(page, app, method):
    before = float(_box(page, "beta").input_value())
    moi = _check(page, _after(page, app[1], lambda: BETA_CASES[method](page)))
    assert moi["beta"] != pytest.approx(before)
    if method == "arrow keys":
        assert moi["beta"] == pytest.approx(before + 0.1)  # two steps of 0.05, not the value before them


@pytest.mark.parametrize("method", list(TOP_K_CASES))
def test_top_k_reruns_the_moi_lane_with_the_value_shown(page, app, method):
    before = int(float(_box(page, "top-k").input_value()))
    moi = _check(page, _after(page, app[1], lambda: TOP_K_CASES[method](page)))
    assert moi["top_k"] != before
    if method == "arrow keys":
        assert moi["top_k"] == before + 2


@pytest.mark.parametrize("choice", ["Direct mixture", "MoI"])
def test_each_mode_choice_reruns_the_moi_lane(page, app, choice):
    moi = _check(page, _after(page, app[1], lambda: page.locator("#mode").get_by_text(choice, exact=True).click()))
    assert moi["mode"] == {"MoI": "moi", "Direct mixture": "direct"}[choice]


def test_the_advanced_switches_rerun_the_moi_lane(page, app):
    """MoI's switches under Advanced are live controls too: a choice or a value re-runs the MoI lane with it (its
    heading names it); back to the paper's defaults, the heading is the plain one again."""
    page.get_by_text("Advanced: MoI's design choices").click()  # open the accordion
    full = _after(page, app[1], lambda: page.locator("#entropy").get_by_text("full: of the whole").click())
    assert full["traces"][1]["entropy"] == "full" and "H over V" in page.locator("#moi-text").inner_text()
    noised = _after(page, app[1], lambda: type_in(page, "noise", "0.5", "Enter"))
    assert (noised["traces"][1]["entropy"], noised["traces"][1]["noise"]) == ("full", 0.5)
    _check(page, noised)
    assert "H over V, noise 0.5" in page.locator("#moi-text").inner_text()
    _after(page, app[1], lambda: type_in(page, "noise", "0", "Enter"))
    paper = _after(page, app[1], lambda: page.locator("#entropy").get_by_text("top-k: of p").click())
    assert (paper["traces"][1]["entropy"], paper["traces"][1]["noise"]) == ("top_k", 0.0)
    assert "·" not in page.locator("#moi-text").inner_text()


def test_a_newer_value_cancels_the_older_run(page, app):
    """Two values in quick succession, the older's run still on the engine at the newer: the page settles on the
    newer; the older run was aborted, never kept. A prompt with a long answer (a short one can end at its EOS before
    the second value is typed: then keeping it is right), checked in flight before the second value."""
    page.locator("#prompt textarea").fill("Tell me a long story about a dragon who learns to bake bread.")
    type_in(page, "max-tokens", "200", "Tab")

    def two_values() -> None:
        type_in(page, "beta", "1.3", "Tab")
        deadline = time.monotonic() + 30
        while not app[1].num_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert app[1].num_unfinished_requests(), "the first value's run was not in flight: the test needs a longer one"
        type_in(page, "beta", "1.7", "Tab")

    export = _after(page, app[1], two_values)
    assert _check(page, export)["beta"] == pytest.approx(1.7)
    kept = [t for t in export["lanes"] if t["mode"] == "moi" and t["beta"] == pytest.approx(1.3)]
    assert not kept, [(len(t["steps"]), t.get("finish_reason"), t.get("prompt", "")[:40], t["text"][:80]) for t in kept]
