"""What the page asks for, each also an API endpoint (layout.py names them). Every callback returns its updates
keyed by component (`Page`): what it does not name stays as it is. No math here (core/) and no figure code
(plots.py); input is checked by `core.inputs`, and an `InputError` reaches the page as "field: reason"."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from moi_demo.app import gradio_shim, plots
from moi_demo.app.explorer import Lanes, parse_betas, standard_key
from moi_demo.app.fields import page_error
from moi_demo.core import inputs
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import MODE_CHOICES, STANDARD_LABEL, SamplingSettings, Trace, first_divergence, lane_label
from moi_demo.serving.engine import MoIEngine
from moi_demo.serving.run_card import run_card
from moi_demo.serving.supervisor import EngineUnavailableError, RunStopped

logger = logging.getLogger(__name__)

# Streamed texts reach the page at most this often: every update costs the page a layout and a frame (measured in
# `moi-demo bench --page`), and ten a second reads as live.
UPDATE_INTERVAL_S = 0.1
FIGURE_GAP_S = 0.05  # between the four figures after a run: each arrives, and is drawn, on its own
MAX_TICKETS = 10_000  # (session, kind) entries kept to tell a run whether a newer one superseded it
RUN_APIS = {"generate", "live", "sweep", "evaluate"}  # the events Stop drops from the queue (export etc. are cheap)
EVAL_TASKS = ["arithmetic-1", "arithmetic-2", "arithmetic-3", "arithmetic-4", "countdown-3", "countdown-4"]
EVAL_MODES = ("standard", "direct", "moi")
Updates = dict[Any, Any]


@dataclass
class Page:
    """The components callbacks update, by name (built in layout.py)."""

    standard_text: Any = None
    moi_text: Any = None
    token_plot: Any = None
    step_plot: Any = None
    heatmap_plot: Any = None
    entropy_plot: Any = None
    lanes: Any = None
    step: Any = None
    status: Any = None
    sweep_boxes: list[Any] = field(default_factory=list)
    sweep_status: Any = None
    sweep_summary: Any = None
    sweep_curves: Any = None
    reads: Any = None  # what the model reads back at the inspected step (HTML)
    inspection: Any = None  # the same, as JSON (and the MoI lane's cos per step)

    @property
    def figures(self) -> list[Any]:
        """The views drawn after a run, in the order plots.pair_views builds them, then the inspection's JSON."""
        return [self.token_plot, self.step_plot, self.heatmap_plot, self.entropy_plot, self.reads, self.inspection]


def _standard_label(reused: Trace | None) -> str:
    return f"{STANDARD_LABEL} (reused: same inputs)" if reused is not None else STANDARD_LABEL


def parse_run(
    mode: Any,
    beta: Any,
    top_k: Any,
    temperature: Any,
    top_p: Any,
    max_tokens: Any,
    seed: Any,
    max_new_tokens: int,
    entropy: Any = "top_k",
    prior: Any = "raw",
    noise: Any = 0.0,
) -> tuple[MoIConfig, SamplingSettings]:
    """The page's (and its API's) run settings, checked against the bounds of `core.inputs`; MoI's switches
    (`entropy`, `prior`, `noise`: core/mixing.py) default to the paper's."""
    mode = inputs.check_choice(mode, "mode", list(MODE_CHOICES))
    settings = SamplingSettings(
        temperature=inputs.TEMPERATURE.check(temperature),
        top_p=inputs.TOP_P.check(top_p),
        max_tokens=inputs.MAX_TOKENS.named("max_new_tokens").with_hi(max_new_tokens).check(max_tokens),
        seed=inputs.SEED.check(seed),
    )
    moi = MoIConfig(
        MODE_CHOICES[mode],
        inputs.APP_BETA.check(beta),
        inputs.APP_TOP_K.check(top_k),
        entropy=entropy,
        prior=prior,
        noise=inputs.APP_NOISE.check(noise),
    )  # MoIConfig checks the choices
    return moi, settings


class Callbacks:
    """The side-by-side tab: runs (generate, live, sweep), their figures, Stop, the step inspector, Export."""

    def __init__(self, engine: MoIEngine, max_new_tokens: int = 512):
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.page = Page()  # filled by layout.py
        self.demo: gr.Blocks | None = None  # set by build_demo: its queue
        # (session, "run" | "sweep") -> (its newest run's ticket, the newest page event number seen)
        self._tickets: dict[tuple[str, str], tuple[int, float]] = {}
        self._tickets_lock = threading.Lock()  # runs start on worker threads

    def parse(self, *args: Any, **switches: Any) -> tuple[MoIConfig, SamplingSettings]:
        return parse_run(*args, max_new_tokens=self.max_new_tokens, **switches)

    def generate(
        self,
        prompt: str,
        mode: str,
        beta: Any,
        top_k: Any,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        color_by: str,
        lanes: Lanes | None,
        entropy: Any = "top_k",
        prior: Any = "raw",
        noise: Any = 0.0,
        event: Any = 0,
        request: gr.Request = None,
    ) -> Iterator[Updates]:
        """Generate: stream the MoI lane (and the standard lane, unless it is reused: same model, prompt, sampling
        settings, seed and max tokens as the last finished one) every token, then the state and status. Figures are
        not built here: the page draws them after the run (`figures`, chained), so API clients never pay for plots
        they do not want. The run is keyed by the session: Stop (page or API) stops it, a newer run supersedes it.
        `event` is the page's count of its run events (`layout.NEXT_EVENT`; 0 from API clients): see `_supersede`."""
        switches = {"entropy": entropy, "prior": prior, "noise": noise}
        yield from self._run(
            prompt, mode, beta, top_k, temperature, top_p, max_tokens, seed, lanes, switches, event, request, live=False
        )

    def live(
        self,
        prompt: str,
        mode: str,
        beta: Any,
        top_k: Any,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        color_by: str,
        lanes: Lanes | None,
        entropy: Any = "top_k",
        prior: Any = "raw",
        noise: Any = 0.0,
        event: Any = 0,
        request: gr.Request = None,
    ) -> Iterator[Updates]:
        """A beta, mode or top-k change after a run (the live controls): the MoI lane again, shown at once with no
        engine call when this session already ran that setting (a sweep's lanes too), the standard lane reused.
        A newer change supersedes (and aborts) an older one. Nothing happens before the session's first run."""
        if lanes is None or lanes.shown is None:
            yield {self.page.status: gr.skip()}  # every output as it was (an empty dict reads as one value)
            return
        switches = {"entropy": entropy, "prior": prior, "noise": noise}
        yield from self._run(
            prompt, mode, beta, top_k, temperature, top_p, max_tokens, seed, lanes, switches, event, request, live=True
        )

    def _supersede(self, session: str, kind: str, event: Any = 0) -> str | None:
        """A new run of this kind for the session: older ones are aborted, and stop updating the page. None when the
        page numbered this event (`event` > 0) before one of the session's runs already started: the page's events
        reach the server in order, but their runs start on worker threads in any order (a drag's last two values
        can swap), and the older value must not supersede the newer one the page shows."""
        event = float(event or 0)
        with self._tickets_lock:
            ticket, newest = self._tickets.pop((session, kind), (0, 0.0))
            if event and event <= newest:
                self._tickets[(session, kind)] = (ticket, newest)
                return None
            self._tickets[(session, kind)] = (ticket + 1, max(event, newest))  # newest last: oldest pruned first
            while len(self._tickets) > MAX_TICKETS:
                self._tickets.pop(next(iter(self._tickets)))
        self.engine.cancel(f"{session}/{kind}")
        return f"{session}/{kind}/{ticket + 1}"

    def _current(self, run_id: str) -> bool:
        session, kind, ticket = run_id.rsplit("/", 2)
        return self._tickets.get((session, kind), (0, 0.0))[0] == int(ticket)

    def _stream(
        self, prompt: str, configs: list[MoIConfig], settings: SamplingSettings, run_id: str
    ) -> Iterator[tuple[Trace, ...]]:
        """The engine's lanes paced for the page, ending quietly once a newer run of the session supersedes this
        one (the newer run owns the page; this one was aborted); input and engine errors shown by name."""
        try:
            interval = UPDATE_INTERVAL_S * max(1.0, len(configs) / 2)  # a sweep's 8 boxes: every 0.4 s
            for traces in paced(self.engine.stream_lanes(prompt, configs, settings, run_id=run_id), interval):
                if not self._current(run_id):
                    return
                yield traces
        except InputError as e:
            raise page_error(e) from None
        except EngineUnavailableError as e:
            raise gr.Error(str(e), title="Engine unavailable") from None

    def _run(
        self,
        prompt: str,
        mode: str,
        beta: Any,
        top_k: Any,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        lanes: Lanes | None,
        switches: dict[str, Any],
        event: Any,
        request: gr.Request,
        live: bool,
    ) -> Iterator[Updates]:
        p = self.page
        try:
            prompt = inputs.check_prompt(prompt)
            moi_cfg, settings = self.parse(mode, beta, top_k, temperature, top_p, max_tokens, seed, **switches)
        except InputError as e:
            raise page_error(e) from None
        lanes = lanes if lanes is not None else Lanes()
        key = standard_key(self.engine.model, prompt, settings)
        run_id = self._supersede(_session(request), "run", event)
        if run_id is None:  # a newer event of the page already runs: it owns the page; nothing sent (as a run a
            return  # newer one superseded: a skip sent for the status left it blank once the newer run was done)
        label = lane_label(moi_cfg, full=True)
        standard = lanes.reusable_standard(key, moi_cfg.top_k)
        cached = lanes.cached(key, moi_cfg) if live else None
        if standard is not None and cached is not None:
            yield self._final(lanes, standard, cached, label, reused=True, elapsed=None)
            return
        configs = [moi_cfg] if standard is not None else [MoIConfig("standard", moi_cfg.beta, moi_cfg.top_k), moi_cfg]
        first: Updates = {
            p.standard_text: gr.update(value=standard.text if standard else "", label=_standard_label(standard))
        }
        start = time.perf_counter()
        traces: tuple[Trace, ...] = ()
        for traces in self._stream(prompt, configs, settings, run_id):
            update = dict(first)
            if standard is None:
                update[p.standard_text] = gr.update(value=traces[0].text, label=_standard_label(None))
            update[p.moi_text] = gr.update(value=traces[-1].text, label=label)
            yield update
            first = {}
        if not traces or not self._current(run_id):
            return
        lanes.keep(key, traces[0] if standard is None else None, [traces[-1]])
        yield self._final(
            lanes,
            standard or traces[0],
            traces[-1],
            label,
            reused=standard is not None,
            elapsed=time.perf_counter() - start,
        )

    def _final(
        self, lanes: Lanes, standard: Trace, moi: Trace, label: str, reused: bool, elapsed: float | None
    ) -> Updates:
        """The run's last update: both texts, the state, the step slider, the status (figures come after)."""
        lanes.show(standard, moi)
        diverge = first_divergence(standard, moi)
        last = max(len(standard.steps), len(moi.steps)) - 1
        if elapsed is None:
            done = f"Shown from this session's lanes (no engine call): {len(moi.steps)} MoI tokens"
        elif reused:
            done = (
                f"Done: {len(moi.steps)} MoI tokens in {elapsed:.1f} s "
                f"({len(moi.steps) / max(elapsed, 1e-6):.1f} tokens/s)"
            )
        else:
            tokens = len(standard.steps) + len(moi.steps)
            done = (
                f"Done: {len(standard.steps)} + {len(moi.steps)} tokens in {elapsed:.1f} s "
                f"({tokens / max(elapsed, 1e-6):.1f} tokens/s for both lanes)"
            )
        status = (
            done
            + (" · standard lane reused (same prompt, sampling settings and seed)" if reused else "")
            + ". "
            + (f"The lanes diverge at step **{diverge}**." if diverge is not None else "The lanes have not diverged.")
        )
        p = self.page
        return {
            p.standard_text: gr.update(value=standard.text, label=_standard_label(standard if reused else None)),
            p.moi_text: gr.update(value=moi.text, label=label),
            p.lanes: lanes,
            p.step: gr.update(maximum=max(last, 1), value=diverge if diverge is not None else 0),
            p.status: status,
        }

    def figures(self, lanes: Lanes | None, color_by: str) -> Iterator[Updates]:
        """The four views of the pair on display (the page chains this after a run), sent one at a time: the page
        draws each in its own task (all four in one update was one long task of the page's main thread, measured
        in `moi-demo bench --page`). Nothing is sent when the page already shows them."""
        if lanes is None or lanes.shown is None or lanes.drawn == (lanes.version, color_by):
            yield {figure: gr.skip() for figure in self.page.figures}
            return
        lanes.drawn = (lanes.version, color_by)
        diverge = first_divergence(*lanes.shown)
        inspection = self._inspect(lanes.shown, diverge if diverge is not None else 0)
        yield from one_per_update(
            self.page.figures, [*plots.pair_views(*lanes.shown, color_by, inspection), lambda: inspection]
        )

    def _inspect(self, traces: tuple[Trace, Trace], step: int) -> list[dict[str, Any]] | None:
        """engine.inspect, or None when the engine cannot answer now (the views show the rest)."""
        try:
            return self.engine.inspect(traces, step)
        except Exception as e:  # noqa: BLE001 - an inspector failing must not fail the run's views
            logger.warning("moi-demo: inspect failed: %r", e)
            return None

    def sweep(
        self,
        prompt: str,
        betas: Any,
        top_k: Any,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        lanes: Lanes | None,
        entropy: Any = "top_k",
        prior: Any = "raw",
        noise: Any = 0.0,
        request: gr.Request = None,
    ) -> Iterator[Updates]:
        """The beta sweep: the standard lane (reused when its inputs are unchanged) and a MoI lane per entry of
        `betas` (e.g. "0, 0.5, 1, direct"), in one engine batch, streamed. Every lane is kept: the slider then
        shows a swept beta at once, and Export writes them all."""
        p = self.page
        try:
            prompt = inputs.check_prompt(prompt)
            moi_cfg, settings = self.parse(
                "MoI", 1.0, top_k, temperature, top_p, max_tokens, seed, entropy=entropy, prior=prior, noise=noise
            )
            configs = [
                c.with_switches(moi_cfg.entropy, moi_cfg.prior, moi_cfg.noise)
                for c in parse_betas(betas, moi_cfg.top_k)
            ]
        except InputError as e:
            raise page_error(e) from None
        lanes = lanes if lanes is not None else Lanes()
        key = standard_key(self.engine.model, prompt, settings)
        run_id = self._supersede(_session(request), "sweep")
        standard = lanes.reusable_standard(key, moi_cfg.top_k)
        runs = configs if standard is not None else [MoIConfig("standard", 1.0, moi_cfg.top_k), *configs]
        first = len(runs) - len(configs)  # index of the first MoI lane in the engine's traces
        boxes, hidden = p.sweep_boxes[: len(configs)], p.sweep_boxes[len(configs) :]
        update: Updates = {
            p.standard_text: gr.update(value=standard.text if standard else "", label=_standard_label(standard))
        }
        start = time.perf_counter()
        traces: tuple[Trace, ...] = ()
        for i, traces in enumerate(self._stream(prompt, runs, settings, run_id)):
            if standard is None:
                update[p.standard_text] = gr.update(value=traces[0].text, label=_standard_label(None))
            if i == 0:  # the first update names and shows the lanes; later ones only extend their texts
                update |= {
                    box: gr.update(visible=True, value=t.text, label=lane_label(t.config, full=True))
                    for box, t in zip(boxes, traces[first:], strict=True)
                }
                update |= {box: gr.update(visible=False, value="") for box in hidden}
            else:
                update |= {box: gr.update(value=t.text) for box, t in zip(boxes, traces[first:], strict=True)}
            tokens = sum(len(t.steps) for t in traces)
            update[p.sweep_status] = f"Sweeping {len(configs)} lanes: {tokens} tokens so far"
            yield update
            update = {}
        if not traces or not self._current(run_id):
            return
        std, mixed = standard or traces[0], list(traces[first:])
        lanes.keep(key, traces[0] if standard is None else None, mixed)
        lanes.sweep = mixed
        elapsed = time.perf_counter() - start
        tokens = sum(len(t.steps) for t in traces)
        same = [lane_label(t.config, full=True) for t in mixed if first_divergence(std, t) is None]
        status = (
            f"Swept {len(mixed)} lanes: {tokens} tokens in {elapsed:.1f} s ({tokens / max(elapsed, 1e-6):.1f} "
            f"tokens/s)"
            + (", standard lane reused" if standard is not None else "")
            + ". "
            + (f"Same tokens as standard: {', '.join(same)}. " if same else "")
            + "Move the beta slider (or the mode) to a swept setting to inspect its lane."
        )
        yield {
            p.standard_text: gr.update(value=std.text),
            p.lanes: lanes,
            p.sweep_status: status,
            # the lanes shown again with their labels: the end state stands on its own, whatever earlier update the
            # page applied or missed
            **{
                box: gr.update(visible=True, value=t.text, label=lane_label(t.config, full=True))
                for box, t in zip(boxes, mixed, strict=True)
            },
            **{box: gr.update(visible=False, value="") for box in hidden},
        }

    def sweep_figures(self, lanes: Lanes | None) -> Iterator[Updates]:
        """The sweep's two figures, one update each, as `figures` sends the pair's four."""
        if lanes is None or lanes.standard is None or not lanes.sweep:
            yield {self.page.sweep_summary: gr.skip(), self.page.sweep_curves: gr.skip()}
            return
        yield from one_per_update(
            [self.page.sweep_summary, self.page.sweep_curves],
            [lambda: plots.sweep_summary(lanes.standard, lanes.sweep), lambda: plots.sweep_curves(lanes.sweep)],
        )

    async def stop(self, request: gr.Request) -> str:
        """Stop this session's runs wherever they are: still waiting in the queue (dropped: they never start),
        or on the engine (aborted). For the page and for API clients alike (keyed by the session)."""
        session = _session(request)
        dropped = await gradio_shim.drop_waiting(self.demo, session, RUN_APIS)
        aborted = await asyncio.to_thread(self.engine.cancel, session)
        text = f"Stopped ({aborted} request{'s' if aborted != 1 else ''} aborted"
        return text + (f", {dropped} queued run{'s' if dropped != 1 else ''} dropped)." if dropped else ").")

    def select_step(self, lanes: Lanes | None, index: Any, color_by: str) -> Updates:
        traces = lanes.shown if lanes is not None else None
        if traces is None:
            raise gr.Error("Generate first: there is no step to inspect yet.")
        last = max(len(traces[0].steps), len(traces[1].steps)) - 1
        try:
            i = inputs.Bound("step", 0, max(last, 0), integer=True).check(index)
        except InputError as e:
            raise page_error(e) from None
        lanes.drawn = None  # the page's figures no longer show the run's first view
        inspection = self._inspect(traces, i)
        return {
            self.page.step_plot: plots.step_distribution(*traces, i),
            self.page.token_plot: plots.token_map(*traces, color_by, i),
            self.page.reads: plots.reads_panel(inspection, "the engine could not inspect this step now"),
            self.page.inspection: inspection,
        }

    def export(self, lanes: Lanes | None) -> str:
        """The pair on display ("traces": standard, MoI) and every lane of this prompt and settings ("lanes":
        the standard lane, then each MoI lane kept, a sweep's included)."""
        if lanes is None or lanes.shown is None and not lanes.mixed:
            raise gr.Error("Generate first: there are no traces to export.")
        path = Path(tempfile.mkdtemp(prefix="moi-traces-")) / "moi_traces.json"
        data = {**lanes.export(), "run_card": run_card(self.engine)}  # what produced them: `moi-demo replay` checks
        path.write_text(json.dumps(data))  # compact: a sweep's lanes with indentation were 3 MB
        return str(path)


class ServiceCallbacks:
    """The rest of the page: health (and its status line) and the Evaluate tab."""

    def __init__(self, engine: MoIEngine, runs: Callbacks):
        self.engine, self.runs = engine, runs

    def health(self) -> dict[str, Any]:
        """/health: engine state (starting, ready, stopped), runs queued and in flight, model, uptime, restarts."""
        return {**self.engine.health(), "runs_queued": gradio_shim.queue_length(self.runs.demo)}

    def health_line(self) -> str:
        h = self.health()
        return (
            f"Engine **{h['engine']}** · {h['runs_in_flight']} run(s) in flight, {h['runs_queued']} queued "
            f"(at most {h['max_concurrent_runs']} at once) · model `{Path(h['model']).name}` · up "
            f"{h['uptime_s'] / 60:.0f} min · restarts: {h['restarts']}"
        )

    def evaluate(
        self,
        task: str,
        n: Any,
        modes: list[str],
        beta: Any,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        entropy: Any = "top_k",
        prior: Any = "raw",
        noise: Any = 0.0,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, str, str]:
        """A small eval (n <= 50) of the chosen modes with a progress bar: accuracy bars, 95% intervals."""
        from moi_demo.evaluation import evaluate as ev
        from moi_demo.evaluation.tasks import get_task

        try:
            inputs.check_choice(task, "task", EVAL_TASKS)
            if not modes or any(m not in EVAL_MODES for m in modes):
                raise InputError("modes", f"choose one or more of {', '.join(EVAL_MODES)}; got {modes!r}")
            n = inputs.EVAL_N.check(n)
            moi_cfg, settings = self.runs.parse(
                "MoI", beta, 20, temperature, top_p, max_tokens, seed, entropy=entropy, prior=prior, noise=noise
            )
        except InputError as e:
            raise page_error(e) from None
        examples, checker = get_task(task, n, settings.seed or 0)
        configs = ev.with_switches(
            ev.mode_configs(modes, [moi_cfg.beta], moi_cfg.top_k), moi_cfg.entropy, moi_cfg.prior, moi_cfg.noise
        )
        total = len(examples) * len(configs)
        progress(0, desc="generating")
        try:
            results, samples = ev.evaluate(
                self.engine,
                examples,
                checker,
                configs,
                settings,
                progress=lambda done: progress(done / total, desc="generating"),
                run_id=_session(request),
            )
        except InputError as e:
            raise page_error(e) from None
        except RunStopped as e:
            raise gr.Error(f"Evaluation stopped ({e}).", title="Stopped") from None
        except EngineUnavailableError as e:
            raise gr.Error(str(e), title="Engine unavailable") from None
        title = f"{task}, n = {n}, T = {settings.temperature:g}, top-p = {settings.top_p:g}"
        path = Path(tempfile.mkdtemp(prefix="moi-eval-"))
        chart = ev.accuracy_chart(results, title)
        card = {
            **run_card(self.engine),
            "eval": {
                "task": task,
                "n": n,
                "modes": modes,
                "beta": moi_cfg.beta,
                "top_k": moi_cfg.top_k,
                **moi_cfg.switches(),
                **asdict(settings),
            },
        }
        files = ev.write_outputs(path, "eval", samples, chart, card)
        return chart, ev.table(results), str(files[0])


def one_per_update(components: list[Any], views: list[Callable[[], Any]]) -> Iterator[Updates]:
    """Each view built and sent in an update of its own, FIGURE_GAP_S apart: the page draws each in a task of its
    own."""
    for i, (component, view) in enumerate(zip(components, views, strict=True)):
        if i:
            time.sleep(FIGURE_GAP_S)
        yield {component: view()}


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


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "no-session"
