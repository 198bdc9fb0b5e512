"""`moi-demo bench --page`: the page as a user feels it, in headless Chromium (Debian's, driven by Playwright).

Against the real app (engine + Gradio server started here, ended with its processes), in one tab, driven from a
process of its own (Playwright and the browser: with `--page-cores own`, on a core the server does not use). Every
first token is timed from the time stamp of the user's own event (the click; the number box's input):
- Generate, repeated with a fresh prompt each time (both lanes run): click to the first token visible in the MoI
  box, and the page's main-thread long tasks (PerformanceObserver `longtask`) from the click until the figures
  are drawn and the page is quiet again;
- the live slider: a new beta typed in its number box, to the first new MoI token on the page;
- a beta sweep (standard + 7 MoI lanes): its long tasks;
- the bytes the page receives per run (Chrome's network events) and the size of the four figures' JSON.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("moi_demo.bench")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Write a long story about a robot who wants to paint.",
    "Write a long story about two friends crossing a desert.",
    "Write a long story about a city under the sea.",
    "Write a long story about a clockmaker's apprentice.",
]
# Recorded in the page from its first script: long tasks, and when the MoI box first shows new text after the
# user's action.
INIT_SCRIPT = """
window.__long = [];
new PerformanceObserver(list => { for (const e of list.getEntries()) window.__long.push([e.startTime, e.duration]); })
  .observe({type: 'longtask', buffered: true});
window.__changed = (selector, word) => {  // the element's text changed since __watch and now contains word
  const el = document.querySelector(selector);
  return !!el && el.innerText !== window.__before[selector] && el.innerText.includes(word);
};
// From the user's action: the time stamp of the next `trigger` event (a click, or the number box's input, which
// fires the slider's change), not of Playwright's call, which first waits for the element to be actionable.
window.__watch = (selector, statuses, trigger) => {
  window.__before = {};
  for (const s of statuses) { const el = document.querySelector(s); window.__before[s] = el ? el.innerText : ''; }
  const value = () => { const box = document.querySelector(selector); return box ? box.value : ''; };
  const before = value();
  window.__mark = null; window.__first = null;
  if (window.__onTrigger) window.removeEventListener(window.__triggerType, window.__onTrigger, {capture: true});
  window.__triggerType = trigger;
  window.__onTrigger = e => { window.__mark = e.timeStamp; };
  window.addEventListener(trigger, window.__onTrigger, {capture: true, once: true});
  const tick = () => {
    const now = value();
    if (now !== before && now.length > 0) { window.__first = performance.now(); return; }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
};
"""


def chromium_path() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A page in headless Debian Chromium with the long-task recorder installed; the browser ends with the block."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("Debian's chromium is not installed (scripts/setup.sh --dev installs it)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.add_init_script(INIT_SCRIPT)
            yield page
        finally:
            browser.close()


@dataclass
class Window:
    """What happened on the page between a user action and quiet."""

    first_token_s: float | None
    long_tasks: list[float] = field(default_factory=list)  # durations, ms
    bytes_received: int = 0
    after_ms: float = 0.0  # long tasks that started after the run's final status (drawing the figures)

    @property
    def long_total_ms(self) -> float:
        return sum(self.long_tasks)

    @property
    def long_max_ms(self) -> float:
        return max(self.long_tasks, default=0.0)


class PageProbe:
    """Drives the side-by-side page and measures each action."""

    def __init__(self, page: Any, url: str):
        self.page = page
        self.bytes = 0
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.on("Network.dataReceived", self._on_data)
        page.goto(url, wait_until="load")
        page.locator("#prompt textarea").wait_for(timeout=60_000)
        self.page.wait_for_timeout(500)

    def _on_data(self, event: dict) -> None:
        self.bytes += int(event.get("encodedDataLength") or event.get("dataLength") or 0)

    def _window(
        self, action: Any, trigger: str, watch: str, status: str, word: str, timeout_ms: int = 300_000
    ) -> Window:
        """Do `action` (which fires a `trigger` event: the user's action); wait for the first new text in `watch`,
        for `status` to change to a text with `word`, and for the page to be quiet (no bytes received for a second,
        then settled): the window's measures."""
        page = self.page
        start_bytes = self.bytes
        t0 = page.evaluate("() => performance.now()")
        page.evaluate("([s, statuses, trigger]) => window.__watch(s, statuses, trigger)", [watch, [status], trigger])
        action()
        page.wait_for_function("([s, w]) => window.__changed(s, w)", arg=[status, word], timeout=timeout_ms)
        done = page.evaluate("() => performance.now()")
        page.wait_for_function("() => window.__first !== null", timeout=timeout_ms)
        self.quiet()
        first, mark = page.evaluate("() => [window.__first - window.__mark, window.__mark]")
        if mark is None:
            raise RuntimeError(f"the page saw no {trigger!r} event: nothing to time the first token from")
        tasks = page.evaluate("t0 => window.__long.filter(e => e[0] + e[1] >= t0)", t0)
        window = Window(
            first / 1000,
            [d for _, d in tasks],
            self.bytes - start_bytes,
            after_ms=sum(d for start, d in tasks if start >= done),
        )
        logger.info(
            "page: first token %.0f ms, long tasks %s ms (%.0f ms after the run), %d bytes",
            window.first_token_s * 1000,
            [round(d) for d in window.long_tasks],
            window.after_ms,
            window.bytes_received,
        )
        return window

    def quiet(self, idle_s: float = 1.0, settle_ms: int = 500) -> None:
        """Wait until the page has received nothing for `idle_s` (the chained figure events included), then
        let it settle (render what it received)."""
        last, since = self.bytes, time.monotonic()
        while time.monotonic() - since < idle_s:
            self.page.wait_for_timeout(100)
            if self.bytes != last:
                last, since = self.bytes, time.monotonic()
        self.page.wait_for_timeout(settle_ms)

    def set_max_tokens(self, tokens: int) -> None:
        """In the closed "Sampling" accordion: opened, set, closed again."""
        box = self.page.locator("#max-tokens input[type=number]")
        accordion = self.page.get_by_text("Sampling", exact=True)
        accordion.click()
        box.fill(str(tokens))
        box.blur()
        accordion.click()

    def generate(self, prompt: str) -> Window:
        self.page.locator("#prompt textarea").fill(prompt)
        return self._window(
            lambda: self.page.locator("#generate").click(), "click", "#moi-text textarea", "#status", "Done"
        )

    def set_beta(self, beta: float) -> Window:
        """Type a beta in the slider's number box and leave it: the box's input event runs the live re-run (the
        slider's change), and the clock starts at it."""
        box = self.page.locator("#beta input[type=number]")

        def act() -> None:
            box.fill(f"{beta:g}")
            box.blur()

        return self._window(act, "input", "#moi-text textarea", "#status", "Done")

    def sweep(self, betas: str) -> Window:
        self.page.locator("#betas textarea").fill(betas)
        return self._window(
            lambda: self.page.locator("#sweep").click(), "click", "#sweep-lane-0 textarea", "#sweep-status", "Swept"
        )


@dataclass
class PageSettings:
    runs: int = 5
    tokens: int = 128  # max new tokens per lane, set on the page (its default is 128)
    betas: tuple[float, ...] = (0.5, 2.0, 0.25, 3.0, 1.5)
    sweep: str = "0, 0.25, 0.5, 1, 2, 4, direct"
    screenshot: str | None = None
    # "own": the browser on a core of its own, the engine and server on the others (a user's browser is not on the
    # server); "shared": everything on every core (what a 2-core machine running both does).
    cores: str = "own"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def measure_page(page: Any, url: str, s: PageSettings) -> dict[str, list[Window]]:
    """Each action's windows, in one tab (a `browser_page`): Generate (the first run warms up and is left out), beta
    changes, a sweep."""
    probe = PageProbe(page, url)
    probe.set_max_tokens(s.tokens)
    runs = [probe.generate(PROMPTS[i % len(PROMPTS)]) for i in range(s.runs + 1)][1:]
    live = [probe.set_beta(b) for b in s.betas]
    sweep = probe.sweep(s.sweep)
    if s.screenshot:
        page.locator("#sweep-summary-plot").scroll_into_view_if_needed()
        page.mouse.move(0, 0)  # no hover label or mode bar in the picture
        page.wait_for_timeout(300)
        page.screenshot(path=s.screenshot, full_page=True)
    return {
        f"Generate ({s.tokens} + {s.tokens} tokens)": runs,
        "beta change (number box)": live,
        f"beta sweep (standard + {len(s.sweep.split(','))} lanes)": [sweep],
    }


def page_table(results: dict[str, list[Window]], s: PageSettings) -> str:
    where = (
        "the browser on a core of its own, engine and server on the others"
        if s.cores == "own"
        else "browser, engine and server sharing every core"
    )
    lines = [
        f"### The page in Chromium ({where}; one tab, repeated runs; long tasks = main-thread tasks > 50 ms)",
        "| action | n | click or input to first token p50 / p95 | long tasks: total per action p50 (max) "
        "| after the run p50 | longest task | bytes received per action p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, windows in results.items():
        first = [w.first_token_s for w in windows if w.first_token_s is not None]
        lines.append(
            f"| {name} | {len(windows)} | {_pct(first, 0.5) * 1000:.0f} / {_pct(first, 0.95) * 1000:.0f} ms | "
            f"{statistics.median(w.long_total_ms for w in windows):.0f} ms "
            f"({max(w.long_total_ms for w in windows):.0f} ms) | "
            f"{statistics.median(w.after_ms for w in windows):.0f} ms | "
            f"{max(w.long_max_ms for w in windows):.0f} ms | "
            f"{statistics.median(w.bytes_received for w in windows) / 1024:.0f} KiB |"
        )
    lines.append("targets: longest task <= 200 ms, total <= 500 ms per action; first token p50 <= 300 ms, p95 <= 1 s")
    return "\n".join(lines)


def figure_bytes(engine: Any, tokens: int) -> str:
    """What the page receives for the four views of one run, each: the plotly JSON a Plot sends, the token
    map's HTML."""
    from moi_demo.app import plots
    from moi_demo.core.config import MoIConfig
    from moi_demo.core.trace import SamplingSettings

    standard, moi = engine.generate_pair_sync(
        PROMPTS[0], MoIConfig("moi", 1.0, 20), SamplingSettings(max_tokens=tokens)
    )
    names = ["token map", "inside a step", "mix weights", "entropy", "what the model reads"]
    figs = {name: view() for name, view in zip(names, plots.pair_views(standard, moi), strict=True)}
    sizes = {name: len(fig if isinstance(fig, str) else fig.to_json()) for name, fig in figs.items()}
    return (
        f"figure JSON per run ({len(standard.steps)} + {len(moi.steps)} tokens): "
        + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in sizes.items())
        + f"; total {sum(sizes.values()) / 1024:.1f} KiB"
    )


def _measure_apart(url: str, s: PageSettings, cpus: list[int] | None) -> dict[str, list[Window]]:
    """`measure_page` in a process of its own, on `cpus` (the browser and Playwright's driver inherit them)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    with browser_page() as page:
        return measure_page(page, url, s)


def main(model: str | None, s: PageSettings) -> str:
    from moi_demo.app.layout import build_demo
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.models import resolve_model
    from moi_demo.serving.settings import EngineOptions

    options = EngineOptions(max_model_len=2048, kv_cache_memory_bytes=1 << 30)
    cpus = sorted(os.sched_getaffinity(0))
    browser_cpus = None
    if s.cores == "own" and len(cpus) > 1:
        # Chosen before this process leaves the browser's core (after, its affinity no longer lists it).
        server, browser_cpus = cpus[:-1], cpus[-1:]
        options.cpu_threads_bind = ",".join(map(str, server))  # the engine's threads off the browser's core
        os.sched_setaffinity(0, server)  # the Gradio server too
    engine = MoIEngine(resolve_model(model), options).start()
    demo = build_demo(engine, max_new_tokens=max(512, s.tokens))
    try:
        demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
        start = time.perf_counter()
        # The harness (Playwright's client and its driver) runs apart from the server, with the browser: a user's
        # browser is not in the server's process. In this process it took the server's GIL and core for every
        # CDP message it handled.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as harness:
            results = harness.submit(_measure_apart, demo.local_url, s, browser_cpus).result()
        table = page_table(results, s)
        logger.info("page bench took %.0f s", time.perf_counter() - start)
        return table + "\n\n" + figure_bytes(engine, s.tokens)
    finally:
        demo.close()
        engine.shutdown()
        os.sched_setaffinity(0, cpus)
