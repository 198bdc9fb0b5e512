"""How the page's runs stream: one run of a kind per session (a newer one supersedes the older), the engine's lanes
paced for the page, and views sent one per update. No Gradio layout here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from moi_demo.app.fields import page_error
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import SamplingSettings, Trace
from moi_demo.serving.engine import MoIEngine
from moi_demo.serving.supervisor import EngineUnavailableError

# Streamed texts reach the page at most this often: every update costs the page a layout and a frame (measured in
# `moi-demo bench --page`), and ten a second reads as live.
UPDATE_INTERVAL_S = 0.1
FIGURE_GAP_S = 0.05  # between the four figures after a run: each arrives, and is drawn, on its own
MAX_TICKETS = 10_000  # (session, kind) entries kept to tell a run whether a newer one superseded it
COST_INTERVAL_S = 0.5  # the live step cost is read at most this often (a worker RPC, served between engine steps)
Updates = dict[Any, Any]


class Runs:
    """The engine's runs of each session, by kind ("run", "sweep"): `start` supersedes the older run of its kind (the
    engine aborts it, and it stops updating the page), `current` tells a run whether it still owns the page."""

    def __init__(self, engine: MoIEngine):
        self.engine = engine
        # (session, kind) -> (its newest run's ticket, the newest page event number seen)
        self._tickets: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()  # runs start on worker threads

    def start(self, session: str, kind: str, event: Any = 0) -> str | None:
        """A new run of this kind for the session: its run id. None when the page numbered this event (`event` > 0)
        before one of the session's runs already started: the page's events reach the server in order, but their
        runs start on worker threads in any order (a drag's last two values can swap), and the older value must not
        supersede the newer one the page shows."""
        event = float(event or 0)
        with self._lock:
            ticket, newest = self._tickets.pop((session, kind), (0, 0.0))
            if event and event <= newest:
                self._tickets[(session, kind)] = (ticket, newest)
                return None
            self._tickets[(session, kind)] = (ticket + 1, max(event, newest))  # newest last: oldest pruned first
            while len(self._tickets) > MAX_TICKETS:
                self._tickets.pop(next(iter(self._tickets)))
        self.engine.cancel(f"{session}/{kind}")
        return f"{session}/{kind}/{ticket + 1}"

    def current(self, run_id: str) -> bool:
        session, kind, ticket = run_id.rsplit("/", 2)
        return self._tickets.get((session, kind), (0, 0.0))[0] == int(ticket)

    def stream(
        self, prompt: str, configs: list[MoIConfig], settings: SamplingSettings, run_id: str
    ) -> Iterator[tuple[Trace, ...]]:
        """The engine's lanes paced for the page, ending quietly once a newer run of the session supersedes this
        one (the newer run owns the page; this one was aborted); input and engine errors shown by name."""
        try:
            interval = UPDATE_INTERVAL_S * max(1.0, len(configs) / 2)  # a sweep's 8 boxes: every 0.4 s
            for traces in paced(self.engine.stream_lanes(prompt, configs, settings, run_id=run_id), interval):
                if not self.current(run_id):
                    return
                yield traces
        except InputError as e:
            raise page_error(e) from None
        except EngineUnavailableError as e:
            raise gr.Error(str(e), title="Engine unavailable") from None


class CostMeter:
    """What a step costs while a run streams: the engine's time per step and the plugin's share of it, from the
    worker's counters (moi_stats: step_seconds, timed_steps, hook_seconds) since the run started, read at most every
    `interval` seconds. Shared engines: the time is the engine's, whatever else it batches with this run."""

    def __init__(self, engine: MoIEngine, interval: float = COST_INTERVAL_S):
        self.engine, self.interval = engine, interval
        self.start, self.at, self.text = self._read(), time.perf_counter(), ""

    def _read(self) -> tuple[float, int, float] | None:
        try:
            s = self.engine.stats()
        except Exception:  # noqa: BLE001 - a meter must never fail a run (an engine restarting, a stub)
            return None
        return float(s.get("step_seconds", 0.0)), int(s.get("timed_steps", 0)), float(s.get("hook_seconds", 0.0))

    def poll(self, force: bool = False) -> str:
        """ "engine step 21.3 ms · plugin 0.41 ms (1.9%)" over the run so far ("" before a step is timed)."""
        now = time.perf_counter()
        if self.start is None or (now - self.at < self.interval and not force):
            return self.text
        self.at, now_read = now, self._read()
        if now_read is None or now_read[1] <= self.start[1]:
            return self.text
        seconds, steps, hooks = (a - b for a, b in zip(now_read, self.start, strict=True))
        step_ms, plugin_ms = 1e3 * seconds / steps, 1e3 * hooks / steps
        self.text = f"engine step {step_ms:.1f} ms · plugin {plugin_ms:.2f} ms ({plugin_ms / max(step_ms, 1e-9):.1%})"
        return self.text


def paced(stream: Iterator[tuple[Trace, ...]], interval: float = UPDATE_INTERVAL_S) -> Iterator[tuple[Trace, ...]]:
    """Each lane's first token at once, then at most one update per `interval` (tokens that arrive between are
    coalesced: the traces are cumulative). The stream's end shows in its final update, which the callers send
    after the loop."""
    last, started = 0.0, 0
    for traces in stream:
        now = time.perf_counter()
        lanes_started = sum(1 for t in traces if t.steps)
        if now - last >= interval or lanes_started > started:
            last, started = now, lanes_started
            yield traces


def one_per_update(components: list[Any], views: list[Callable[[], Any]]) -> Iterator[Updates]:
    """Each view built and sent in an update of its own, FIGURE_GAP_S apart: the page draws each in a task of its
    own."""
    for i, (component, view) in enumerate(zip(components, views, strict=True)):
        if i:
            time.sleep(FIGURE_GAP_S)
        yield {component: view()}


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "no-session"
