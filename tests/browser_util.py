"""What the Chromium tests share: the page opened on the app with a prompt and max tokens set, and typing in a
slider's number box."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest


def type_in(page: Any, elem_id: str, text: str, key: str) -> None:
    """Type `text` in the number box of slider `elem_id` (its old value selected) and press `key`."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.click(click_count=3)
    box.press_sequentially(text)
    box.press(key)


@contextlib.contextmanager
def opened(url: str, prompt: str, max_tokens: str) -> Iterator[Any]:
    """The page at `url` in headless Chromium with `prompt` typed and max tokens set (the Sampling group open); skips
    where Debian's chromium is missing."""
    from moi_demo.tools.pagebench import browser_page, chromium_path

    if chromium_path() is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --dev installs it)")
    with browser_page() as page:
        page.goto(url, wait_until="load")
        page.locator("#prompt textarea").wait_for(timeout=60_000)
        page.locator("#prompt textarea").fill(prompt)
        page.get_by_text("Sampling").click()  # open the accordion
        type_in(page, "max-tokens", max_tokens, "Tab")  # not a live control: no run before Generate
        yield page
