"""The Gradio app: standard vs Mixture of Inputs, side by side. Layout in `build_demo` (with `side_by_side`
and `evaluate_tab`), callbacks in `Callbacks`; no math here (mixing.py) and no figure code (plots.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from moi_demo.app import plots
from moi_demo.app.explorer import DEFAULT_SWEEP, MAX_SWEEP_LANES, Lanes, SweepInputError, parse_betas, standard_key
from moi_demo.core.mixing import MoIConfig, MoIConfigError
from moi_demo.core.trace import SamplingSettings, Trace, first_divergence
from moi_demo.serving.engine import MAX_TOP_K, EngineUnavailableError, MoIEngine, MoIInputError, RunStopped

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
MODES = {"MoI": "moi", "Direct mixture": "direct"}
EVAL_TASKS = ["arithmetic-1", "arithmetic-2", "arithmetic-3", "arithmetic-4", "countdown-3", "countdown-4"]
# Streamed texts reach the page at most this often: every update costs the page a layout and a frame (measured in
# `moi-demo bench --page`), and ten a second reads as live.
UPDATE_INTERVAL_S = 0.1
FIGURE_GAP_S = 0.05  # between the four figures after a run: each arrives, and is drawn, on its own
MAX_TICKETS = 10_000  # (session, kind) entries kept to tell a run whether a newer one superseded it
MAX_PROMPT_CHARS = 20_000  # refused before tokenization (the context limit in tokens is checked after)

INTRO = """
# Mixture of Inputs, side by side
A standard LLM samples a token and feeds back only its embedding. **Mixture of Inputs** ([arXiv
2505.14827](https://arxiv.org/abs/2505.14827)) feeds back a mix of the top-k candidates' embeddings,
`w = (H·p + (β + 1 − H)·onehot(y)) / (β + 1)`: the less certain the model (high entropy H) and the lower β,
the more of the distribution it keeps. Same model, prompt, chat template and seed in both columns.
"""


class _NamedErrors:
    """Gradio checks slider ranges and radio choices before a callback runs (also for API calls); these
    subclasses make those errors name the field and what it allows."""

    field: str | None = None  # set by `named`; Gradio also re-creates components from updates: then the label

    def _gradio_class(self) -> type:
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio.components."))

    def get_block_name(self) -> str:  # the frontend renders the Gradio component this one extends
        return self._gradio_class().__name__.lower()

    def get_block_class(self) -> str:
        return self._gradio_class().__name__

    def allowed(self) -> str:
        raise NotImplementedError

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except (gr.Error, TypeError, ValueError):
            raise _field_error(self.field or str(self.label), f"must be {self.allowed()}; got {payload!r}") from None


def named(component: Any, field: str) -> Any:
    component.field = field
    return component


class FieldSlider(_NamedErrors, gr.Slider):
    def allowed(self) -> str:
        return f"from {self.minimum:g} to {self.maximum:g}"


class FieldRadio(_NamedErrors, gr.Radio):
    def allowed(self) -> str:
        return "one of " + ", ".join(str(c[1]) for c in self.choices)


class FieldNumber(_NamedErrors, gr.Number):
    def allowed(self) -> str:
        kind = "an integer" if self.precision == 0 else "a number"
        return kind + (f" from {self.minimum:g}" if self.minimum is not None else "") + (
            f" to {self.maximum:g}" if self.maximum is not None else "")

    def preprocess(self, payload: Any) -> Any:
        if self.precision == 0 and isinstance(payload, float) and not payload.is_integer():  # no silent rounding
            raise _field_error(self.field or str(self.label), f"must be {self.allowed()}; got {payload!r}")
        return super().preprocess(payload)


def check_prompt(value: Any) -> str:
    """The prompt as the engine may take it, or an error naming the field: text, not empty, valid Unicode
    (no unpaired surrogate: it cannot be encoded), at most MAX_PROMPT_CHARS characters."""
    if not isinstance(value, str):
        raise _field_error("prompt", f"must be text; got {type(value).__name__}")
    if not value.strip():
        raise _field_error("prompt", "must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise _field_error("prompt", f"must be at most {MAX_PROMPT_CHARS} characters; got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _field_error("prompt", f"must be valid Unicode text; character {e.start} is an unpaired "
                                     f"surrogate ({value[e.start]!a})") from None
    return value


def _field_error(field: str, message: str) -> gr.Error:
    return gr.Error(f"{field}: {message}", title="Invalid input")


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _field_error(field, f"must be an integer from {lo} to {hi}; got {value!r}") from None
    if not number.is_integer() or not lo <= number <= hi:
        raise _field_error(field, f"must be an integer from {lo} to {hi}; got {value!r}")
    return int(number)


def _float(value: Any, field: str, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _field_error(field, f"must be a number from {lo:g} to {hi:g}; got {value!r}") from None
    if not lo <= number <= hi:  # also rejects NaN
        raise _field_error(field, f"must be a number from {lo:g} to {hi:g}; got {value!r}")
    return number


def _moi_label(cfg: MoIConfig) -> str:
    return "Direct mixture (w = p)" if cfg.mode == "direct" else f"Mixture of Inputs (beta = {cfg.beta:g})"


def _standard_label(reused: Trace | None) -> str:
    return "Standard (reused: same inputs)" if reused is not None else "Standard"


class Callbacks:
    """Everything the page can ask for; each is also an API endpoint (see build_demo's api_name)."""

    def __init__(self, engine: MoIEngine, max_new_tokens: int = 512):
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.demo: gr.Blocks | None = None  # set by build_demo: the queue's length for health()
        self._tickets: dict[tuple[str, str], int] = {}  # (session, "run" | "sweep") -> its newest run

    def health(self) -> dict[str, Any]:
        """/health: engine state (starting, ready, stopped), runs queued and in flight, model, uptime, restarts."""
        queue = getattr(self.demo, "_queue", None)
        return {**self.engine.health(), "runs_queued": len(queue) if queue is not None else 0}

    def health_line(self) -> str:
        h = self.health()
        return (f"Engine **{h['engine']}** · {h['runs_in_flight']} run(s) in flight, {h['runs_queued']} queued "
                f"(at most {h['max_concurrent_runs']} at once) · model `{Path(h['model']).name}` · up "
                f"{h['uptime_s'] / 60:.0f} min · restarts: {h['restarts']}")

    def parse(self, mode: str, beta: Any, top_k: Any, temperature: Any, top_p: Any, max_tokens: Any,
              seed: Any) -> tuple[MoIConfig, SamplingSettings]:
        if mode not in MODES:
            raise _field_error("mode", f"must be one of {', '.join(MODES)}; got {mode!r}")
        settings = SamplingSettings(
            temperature=_float(temperature, "temperature", 0.0, 2.0),
            top_p=_float(top_p, "top_p", 0.01, 1.0),
            max_tokens=_int(max_tokens, "max_new_tokens", 1, self.max_new_tokens),
            seed=_int(seed, "seed", 0, 2**31 - 1),
        )
        try:
            moi = MoIConfig(MODES[mode], _float(beta, "beta", 0.0, 4.0), _int(top_k, "top_k", 1, MAX_TOP_K))
        except MoIConfigError as e:
            raise _field_error(e.field, e.reason) from None
        return moi, settings

    def generate(self, prompt: str, mode: str, beta: Any, top_k: Any, temperature: Any, top_p: Any, max_tokens: Any,
                 seed: Any, color_by: str, lanes: Lanes | None, request: gr.Request) -> Iterator[tuple]:
        """Generate: stream the MoI lane (and the standard lane, unless it is reused: same model, prompt, sampling
        settings, seed and max tokens as the last finished one) every token, then the state and status. Figures are
        not built here: the page draws them after the run (`figures`, chained), so API clients never pay for plots
        they do not want. The run is keyed by the session: Stop (page or API) stops it, a newer run supersedes it."""
        yield from self._run(prompt, mode, beta, top_k, temperature, top_p, max_tokens, seed, lanes, request,
                             live=False)

    def live(self, prompt: str, mode: str, beta: Any, top_k: Any, temperature: Any, top_p: Any, max_tokens: Any,
             seed: Any, color_by: str, lanes: Lanes | None, request: gr.Request) -> Iterator[tuple]:
        """A beta, mode or top-k change after a run (the live slider): the MoI lane again, shown at once with no
        engine call when this session already ran that setting (a sweep's lanes too), the standard lane reused.
        A newer change supersedes (and aborts) an older one. Nothing happens before the session's first run."""
        if lanes is None or lanes.shown is None:
            yield (gr.skip(),) * 9
            return
        yield from self._run(prompt, mode, beta, top_k, temperature, top_p, max_tokens, seed, lanes, request,
                             live=True)

    def _supersede(self, session: str, kind: str) -> str:
        """A new run of this kind for the session: older ones are aborted, and stop updating the page."""
        ticket = self._tickets.pop((session, kind), 0) + 1
        self._tickets[(session, kind)] = ticket  # newest last: the oldest sessions' entries go first
        while len(self._tickets) > MAX_TICKETS:
            self._tickets.pop(next(iter(self._tickets)))
        self.engine.cancel(f"{session}/{kind}")
        return f"{session}/{kind}/{ticket}"

    def _current(self, run_id: str) -> bool:
        session, kind, ticket = run_id.rsplit("/", 2)
        return self._tickets.get((session, kind)) == int(ticket)

    def _stream(self, prompt: str, configs: list[MoIConfig], settings: SamplingSettings,
                run_id: str) -> Iterator[tuple[Trace, ...]]:
        """The engine's lanes paced for the page, ending quietly once a newer run of the session supersedes this
        one (the newer run owns the page; this one was aborted); input and engine errors shown by name."""
        try:
            interval = UPDATE_INTERVAL_S * max(1.0, len(configs) / 2)  # a sweep's 8 boxes: every 0.4 s
            for traces in _paced(self.engine.stream_lanes(prompt, configs, settings, run_id=run_id), interval):
                if not self._current(run_id):
                    return
                yield traces
        except MoIInputError as e:
            raise _field_error(e.field, e.reason) from None
        except EngineUnavailableError as e:
            raise gr.Error(str(e), title="Engine unavailable") from None

    def _run(self, prompt: str, mode: str, beta: Any, top_k: Any, temperature: Any, top_p: Any, max_tokens: Any,
             seed: Any, lanes: Lanes | None, request: gr.Request, live: bool) -> Iterator[tuple]:
        prompt = check_prompt(prompt)
        moi_cfg, settings = self.parse(mode, beta, top_k, temperature, top_p, max_tokens, seed)
        lanes = lanes if lanes is not None else Lanes()
        key = standard_key(self.engine.model, prompt, settings)
        run_id = self._supersede(_session(request), "run")
        label = _moi_label(moi_cfg)
        standard = lanes.reusable_standard(key, moi_cfg.top_k)
        cached = lanes.cached(key, moi_cfg) if live else None
        if standard is not None and cached is not None:
            yield self._final_outputs(lanes, standard, cached, label, reused=True, elapsed=None)
            return
        configs = [moi_cfg] if standard is not None else [MoIConfig("standard", moi_cfg.beta, moi_cfg.top_k), moi_cfg]
        standard_update = gr.update(value=standard.text if standard else "", label=_standard_label(standard))
        start = time.perf_counter()
        traces: tuple[Trace, ...] = ()
        for traces in self._stream(prompt, configs, settings, run_id):
            if standard is None:
                standard_update = gr.update(value=traces[0].text, label=_standard_label(None))
            yield (standard_update, gr.update(value=traces[-1].text, label=label), *[gr.skip()] * 7)
            standard_update = gr.skip()
        if not traces or not self._current(run_id):
            return
        lanes.keep(key, traces[0] if standard is None else None, [traces[-1]])
        yield self._final_outputs(lanes, standard or traces[0], traces[-1], label, reused=standard is not None,
                                  elapsed=time.perf_counter() - start)

    def _final_outputs(self, lanes: Lanes, standard: Trace, moi: Trace, label: str, reused: bool,
                       elapsed: float | None) -> tuple:
        lanes.show(standard, moi)
        diverge = first_divergence(standard, moi)
        last = max(len(standard.steps), len(moi.steps)) - 1
        selected = diverge if diverge is not None else 0
        if elapsed is None:
            done = f"Shown from this session's lanes (no engine call): {len(moi.steps)} MoI tokens"
        elif reused:
            done = (f"Done: {len(moi.steps)} MoI tokens in {elapsed:.1f} s "
                    f"({len(moi.steps) / max(elapsed, 1e-6):.1f} tokens/s)")
        else:
            tokens = len(standard.steps) + len(moi.steps)
            done = (f"Done: {len(standard.steps)} + {len(moi.steps)} tokens in {elapsed:.1f} s "
                    f"({tokens / max(elapsed, 1e-6):.1f} tokens/s for both lanes)")
        status = (done + (" · standard lane reused (same prompt, sampling settings and seed)" if reused else "")
                  + ". " + (f"The lanes diverge at step **{diverge}**." if diverge is not None else
                            "The lanes have not diverged."))
        return (
            gr.update(value=standard.text, label=_standard_label(standard if reused else None)),
            gr.update(value=moi.text, label=label),
            *[gr.skip()] * 4,  # figures: drawn for the page by `figures` after the run
            lanes,
            gr.update(maximum=max(last, 1), value=selected),
            status,
        )

    def figures(self, lanes: Lanes | None, color_by: str) -> Iterator[tuple[Any, Any, Any, Any]]:
        """The four views of the pair on display (the page chains this after a run), sent one at a time: the page
        draws each in its own task (all four in one update was one long task of the page's main thread, measured
        in `moi-demo bench --page`). Nothing is sent when the page already shows them."""
        if lanes is None or lanes.shown is None or lanes.drawn == (lanes.version, color_by):
            yield (gr.skip(),) * 4
            return
        lanes.drawn = (lanes.version, color_by)
        yield from _one_per_update(plots.pair_views(*lanes.shown, color_by))

    def sweep(self, prompt: str, betas: Any, top_k: Any, temperature: Any, top_p: Any, max_tokens: Any, seed: Any,
              lanes: Lanes | None, request: gr.Request) -> Iterator[tuple]:
        """The beta sweep: the standard lane (reused when its inputs are unchanged) and a MoI lane per entry of
        `betas` (e.g. "0, 0.5, 1, direct"), in one engine batch, streamed. Every lane is kept: the slider then
        shows a swept beta at once, and Export writes them all."""
        prompt = check_prompt(prompt)
        moi_cfg, settings = self.parse("MoI", 1.0, top_k, temperature, top_p, max_tokens, seed)
        try:
            configs = parse_betas(betas, moi_cfg.top_k)
        except SweepInputError as e:
            raise _field_error(e.field, e.reason) from None
        lanes = lanes if lanes is not None else Lanes()
        key = standard_key(self.engine.model, prompt, settings)
        run_id = self._supersede(_session(request), "sweep")
        standard = lanes.reusable_standard(key, moi_cfg.top_k)
        runs = configs if standard is not None else [MoIConfig("standard", 1.0, moi_cfg.top_k), *configs]
        first = len(runs) - len(configs)  # index of the first MoI lane in the engine's traces
        hidden = MAX_SWEEP_LANES - len(configs)
        standard_update = gr.update(value=standard.text if standard else "", label=_standard_label(standard))
        start = time.perf_counter()
        traces: tuple[Trace, ...] = ()
        for i, traces in enumerate(self._stream(prompt, runs, settings, run_id)):
            if standard is None:
                standard_update = gr.update(value=traces[0].text, label=_standard_label(None))
            if i == 0:  # the first update names and shows the lanes; later ones only extend their texts
                boxes = [gr.update(visible=True, value=t.text, label=_moi_label(t.config))
                         for t in traces[first:]] + [gr.update(visible=False, value="")] * hidden
            else:
                boxes = [gr.update(value=t.text) for t in traces[first:]] + [gr.skip()] * hidden
            tokens = sum(len(t.steps) for t in traces)
            yield (standard_update, *boxes, gr.skip(), f"Sweeping {len(configs)} lanes: {tokens} tokens so far")
            standard_update = gr.skip()
        if not traces or not self._current(run_id):
            return
        std, mixed = standard or traces[0], list(traces[first:])
        lanes.keep(key, traces[0] if standard is None else None, mixed)
        lanes.sweep = mixed
        elapsed = time.perf_counter() - start
        tokens = sum(len(t.steps) for t in traces)
        same = [_moi_label(t.config) for t in mixed if first_divergence(std, t) is None]
        status = (f"Swept {len(mixed)} lanes: {tokens} tokens in {elapsed:.1f} s ({tokens / max(elapsed, 1e-6):.1f} "
                  f"tokens/s)" + (", standard lane reused" if standard is not None else "") + ". "
                  + (f"Same tokens as standard: {', '.join(same)}. " if same else "")
                  + "Move the beta slider (or the mode) to a swept setting to inspect its lane.")
        yield (gr.update(value=std.text), *[gr.update(value=t.text) for t in mixed], *[gr.skip()] * hidden,
               lanes, status)

    def sweep_figures(self, lanes: Lanes | None) -> Iterator[tuple[Any, Any]]:
        """The sweep's two figures, one update each, as `figures` sends the pair's four."""
        if lanes is None or lanes.standard is None or not lanes.sweep:
            yield gr.skip(), gr.skip()
            return
        yield from _one_per_update([lambda: plots.sweep_summary(lanes.standard, lanes.sweep),
                                    lambda: plots.sweep_curves(lanes.sweep)])

    async def stop(self, request: gr.Request) -> str:
        """Stop this session's runs wherever they are: still waiting in the queue (dropped: they never start),
        or on the engine (aborted). For the page and for API clients alike (keyed by the session)."""
        session = _session(request)
        dropped = await _drop_queued_runs(self.demo, session)
        aborted = await asyncio.to_thread(self.engine.cancel, session)
        text = f"Stopped ({aborted} request{'s' if aborted != 1 else ''} aborted"
        return text + (f", {dropped} queued run{'s' if dropped != 1 else ''} dropped)." if dropped else ").")

    def select_step(self, lanes: Lanes | None, index: Any, color_by: str) -> tuple[Any, Any]:
        traces = lanes.shown if lanes is not None else None
        if traces is None:
            raise gr.Error("Generate first: there is no step to inspect yet.")
        last = max(len(traces[0].steps), len(traces[1].steps)) - 1
        i = _int(index, "step", 0, max(last, 0))
        if lanes is not None:
            lanes.drawn = None  # the page's figures no longer show the run's first view
        return plots.step_distribution(*traces, i), plots.token_map(*traces, color_by, i)

    def evaluate(self, task: str, n: Any, modes: list[str], beta: Any, temperature: Any, top_p: Any,
                 max_tokens: Any, seed: Any, request: gr.Request,
                 progress: gr.Progress = gr.Progress()) -> tuple[Any, str, str]:
        """A small eval (n <= 50) of the chosen modes with a progress bar: accuracy bars, 95% intervals."""
        from moi_demo.evaluation import evaluate as ev
        from moi_demo.evaluation.tasks import get_task

        if task not in EVAL_TASKS:
            raise _field_error("task", f"must be one of {', '.join(EVAL_TASKS)}; got {task!r}")
        if not modes or any(m not in ("standard", "direct", "moi") for m in modes):
            raise _field_error("modes", f"choose one or more of standard, direct, moi; got {modes!r}")
        n = _int(n, "n", 1, 50)
        moi_cfg, settings = self.parse("MoI", beta, 20, temperature, top_p, max_tokens, seed)
        examples, checker = get_task(task, n, settings.seed or 0)
        configs = ev.mode_configs(modes, [moi_cfg.beta], moi_cfg.top_k)
        total = len(examples) * len(configs)
        progress(0, desc="generating")
        try:
            results, samples = ev.evaluate(self.engine, examples, checker, configs, settings,
                                           progress=lambda done: progress(done / total, desc="generating"),
                                           run_id=_session(request))
        except MoIInputError as e:
            raise _field_error(e.field, e.reason) from None
        except RunStopped as e:
            raise gr.Error(f"Evaluation stopped ({e}).", title="Stopped") from None
        except EngineUnavailableError as e:
            raise gr.Error(str(e), title="Engine unavailable") from None
        title = f"{task}, n = {n}, T = {settings.temperature:g}, top-p = {settings.top_p:g}"
        path = Path(tempfile.mkdtemp(prefix="moi-eval-"))
        chart = ev.accuracy_chart(results, title)
        files = ev.write_outputs(path, "eval", samples, chart)
        return chart, ev.table(results), str(files[0])

    def export(self, lanes: Lanes | None) -> str:
        """The pair on display ("traces": standard, MoI) and every lane of this prompt and settings ("lanes":
        the standard lane, then each MoI lane kept, a sweep's included)."""
        if lanes is None or lanes.shown is None and not lanes.mixed:
            raise gr.Error("Generate first: there are no traces to export.")
        path = Path(tempfile.mkdtemp(prefix="moi-traces-")) / "moi_traces.json"
        path.write_text(json.dumps(lanes.export()))  # compact: a sweep's lanes with indentation were 3 MB
        return str(path)


def _one_per_update(views: list[Callable[[], Any]]) -> Iterator[tuple[Any, ...]]:
    """Each view built and sent in an update of its own (the others skipped), FIGURE_GAP_S apart: the page draws
    each in a task of its own."""
    for i, view in enumerate(views):
        if i:
            time.sleep(FIGURE_GAP_S)
        yield tuple(view() if j == i else gr.skip() for j in range(len(views)))


def _paced(stream: Iterator[tuple[Trace, ...]], interval: float = UPDATE_INTERVAL_S) -> Iterator[tuple[Trace, ...]]:
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


RUN_APIS = {"generate", "live", "sweep", "evaluate"}  # the events Stop drops from the queue (export etc. are cheap)


async def _drop_queued_runs(demo: gr.Blocks | None, session: str) -> int:
    """Remove this session's runs that still wait in Gradio's queue, telling each waiting client its job ended
    (what Gradio's own /cancel route does for one event). Returns how many."""
    from gradio.server_messages import ProcessCompletedMessage

    queue = getattr(demo, "_queue", None)
    if queue is None:
        return 0
    waiting = [event for event_queue in list(queue.event_queue_per_concurrency_id.values())
               for event in list(event_queue.queue)
               if event.session_hash == session and getattr(event.fn, "api_name", None) in RUN_APIS]
    for event in waiting:
        await queue.remove_from_queue(event._id)
        messages = queue.pending_messages_per_session.get(session)
        if messages is not None:
            messages.put_nowait(ProcessCompletedMessage(output={}, success=True, event_id=event._id))
    return len(waiting)


def load_examples() -> list[str]:
    return json.loads((ASSETS / "examples.json").read_text())


def build_demo(engine: MoIEngine, max_new_tokens: int = 512, title: str = "Mixture of Inputs demo") -> gr.Blocks:
    cb = Callbacks(engine, max_new_tokens)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"Model: `{Path(engine.model).name}`", elem_id="model-name")
        health_line = gr.Markdown(cb.health_line(), elem_id="health")
        gr.Timer(5.0).tick(cb.health_line, None, health_line, api_name=False, queue=False)
        gr.api(cb.health, api_name="health", queue=False)  # API only: engine state, queue, uptime, restarts
        with gr.Tab("Side by side"):
            side_by_side(cb, max_new_tokens)
        with gr.Tab("Evaluate"):
            evaluate_tab(cb)
    cb.demo = demo
    return demo


def side_by_side(cb: Callbacks, max_new_tokens: int) -> None:
    # This session's lanes (per session, server side): the standard lane, the MoI lanes run for it, the pair shown.
    lanes = gr.State(None, time_to_live=3600)  # a Lanes after the first run
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask the model something...",
                                elem_id="prompt")
            gr.Examples(load_examples(), inputs=prompt, label="Examples")
            with gr.Row():
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        with gr.Column(scale=2):
            beta = named(FieldSlider(0.0, 4.0, value=1.0, step=0.05, elem_id="beta",
                                     label="beta (higher keeps more of the sample) · live after a run"), "beta")
            mode = named(FieldRadio(list(MODES), value="MoI", label="Mode", elem_id="mode"), "mode")
            top_k = named(FieldSlider(1, MAX_TOP_K, value=20, step=1, label="top-k candidates mixed",
                                      elem_id="top-k"), "top_k")
            with gr.Accordion("Sampling", open=False):
                temperature = named(FieldSlider(0.0, 2.0, value=0.0, step=0.05,
                                                label="temperature (0 = greedy)"), "temperature")
                top_p = named(FieldSlider(0.01, 1.0, value=1.0, step=0.01, label="top-p"), "top_p")
                max_tokens = named(FieldSlider(1, max_new_tokens, value=min(128, max_new_tokens), step=1,
                                               label="max new tokens", elem_id="max-tokens"), "max_new_tokens")
                seed = named(FieldNumber(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="seed"), "seed")
    status = gr.Markdown("", elem_id="status")
    with gr.Row(equal_height=True):
        standard_text = gr.Textbox(label="Standard", lines=12, max_lines=12, interactive=False,
                                   elem_id="standard-text", autoscroll=False)
        moi_text = gr.Textbox(label="Mixture of Inputs (beta = 1)", lines=12, max_lines=12, interactive=False,
                              elem_id="moi-text", autoscroll=False)
    color_by = named(FieldRadio([("p(sampled)", "p"), ("entropy H", "entropy")], value="p",
                                label="Colour tokens by"), "color_by")
    token_plot = gr.HTML(plots.token_map(*plots.NO_TRACES), label="Tokens", elem_id="token-plot",
                         css_template=plots.TOKEN_MAP_CSS, js_on_load=None, max_height=420)
    step = named(FieldSlider(0, max(max_new_tokens - 1, 1), value=0, step=1, label="Step to inspect",
                             elem_id="step"), "step")
    step_plot = gr.Plot(label="Inside a step", elem_id="step-plot")
    with gr.Row():
        heatmap_plot = gr.Plot(label="Mix weights", elem_id="heatmap-plot")
        entropy_plot = gr.Plot(label="Entropy", elem_id="entropy-plot")
    with gr.Accordion("Beta sweep: every beta at once, one batch", open=True):
        with gr.Row():
            betas = gr.Textbox(DEFAULT_SWEEP, label=f"betas (each 0 to 4, or direct; at most {MAX_SWEEP_LANES})",
                               elem_id="betas", scale=4)
            sweep_btn = gr.Button("Sweep beta", elem_id="sweep", scale=1)
        sweep_status = gr.Markdown("", elem_id="sweep-status")
        sweep_boxes = []
        for row in range(2):
            with gr.Row(equal_height=True):
                for i in range(row * 4, row * 4 + 4):
                    sweep_boxes.append(gr.Textbox(label=f"lane {i + 1}", lines=8, max_lines=8, interactive=False,
                                                  visible=False, elem_id=f"sweep-lane-{i}", autoscroll=False))
        with gr.Row():
            sweep_summary = gr.Plot(label="Divergence, kept weight and H per beta", elem_id="sweep-summary-plot")
            sweep_curves = gr.Plot(label="Weight on the sampled token per step", elem_id="sweep-curves-plot")
    download = gr.File(label="Every lane (JSON)", elem_id="download")

    outputs = [standard_text, moi_text, token_plot, step_plot, heatmap_plot, entropy_plot, lanes, step, status]
    inputs = [prompt, mode, beta, top_k, temperature, top_p, max_tokens, seed, color_by, lanes]
    figures = [token_plot, step_plot, heatmap_plot, entropy_plot]
    # Runs share the engine's sequence budget: at most max_concurrent_runs at once, the rest wait in the queue.
    # Progress shows on the status line only: a loading overlay and timer on every output (four plots among them)
    # re-rendered at every streamed token is what kept the page's main thread busy.
    limit = dict(concurrency_id="engine-runs", concurrency_limit=cb.engine.max_concurrent_runs,
                 show_progress="minimal", show_progress_on=[status])
    quiet = dict(api_name=False, show_progress="hidden")
    run = generate_btn.click(cb.generate, inputs, outputs, api_name="generate", **limit)
    run.then(cb.figures, [lanes, color_by], figures, **quiet).then(cb.export, lanes, download, api_name="export",
                                                                    show_progress="hidden")
    prompt.submit(cb.generate, inputs, outputs, api_name=False, **limit).then(
        cb.figures, [lanes, color_by], figures, **quiet).then(cb.export, lanes, download, **quiet)
    # The live controls: every change runs (a newer one supersedes the older server side, so "multiple").
    live_events = []
    for trigger, api in ((beta.release, "live"), (mode.input, False), (top_k.release, False)):
        event = trigger(cb.live, inputs, outputs, api_name=api, trigger_mode="multiple", **limit)
        event.then(cb.figures, [lanes, color_by], figures, **quiet).then(cb.export, lanes, download, **quiet)
        live_events.append(event)
    # A sweep holds up to MAX_SWEEP_LANES + 1 sequences: fewer sweeps than pair runs at once.
    sweep_limit = max(1, cb.engine.options.max_num_seqs // (2 * (MAX_SWEEP_LANES + 1)))
    sweep = sweep_btn.click(cb.sweep, [prompt, betas, top_k, temperature, top_p, max_tokens, seed, lanes],
                            [standard_text, *sweep_boxes, lanes, sweep_status], api_name="sweep",
                            concurrency_id="engine-sweeps", concurrency_limit=sweep_limit, show_progress="minimal",
                            show_progress_on=[sweep_status])
    sweep.then(cb.sweep_figures, lanes, [sweep_summary, sweep_curves], **quiet).then(cb.export, lanes, download,
                                                                                     **quiet)
    # The page also cancels its own pending events (Gradio's `cancels`); cb.stop covers API clients, the queue
    # and the engine.
    stop_btn.click(cb.stop, None, status, api_name="stop", queue=False)
    stop_btn.click(None, None, None, cancels=[run, sweep, *live_events], api_name=False)
    step.release(cb.select_step, [lanes, step, color_by], [step_plot, token_plot], api_name="select_step",
                 show_progress="hidden")
    color_by.change(cb.select_step, [lanes, step, color_by], [step_plot, token_plot], **quiet)


def evaluate_tab(cb: Callbacks) -> None:
    gr.Markdown("Accuracy of standard decoding, direct mixture and MoI on generated tasks with exact checkers "
                "(never `eval()` of model text), same seeds in every mode. For the paper's protocol on a GPU with "
                "your data: `moi-demo eval --task your.jsonl`.")
    with gr.Row():
        task = named(FieldRadio(EVAL_TASKS, value="arithmetic-1", label="Task"), "task")
        modes = gr.CheckboxGroup(["standard", "direct", "moi"], value=["standard", "direct", "moi"], label="Modes")
    with gr.Row():
        n = named(FieldSlider(1, 50, value=20, step=1, label="examples (n)"), "n")
        beta = named(FieldSlider(0.0, 4.0, value=1.0, step=0.05, label="beta"), "beta")
        temperature = named(FieldSlider(0.0, 2.0, value=0.6, step=0.05, label="temperature"), "temperature")
        top_p = named(FieldSlider(0.01, 1.0, value=0.8, step=0.01, label="top-p"), "top_p")
        max_tokens = named(FieldSlider(8, 256, value=64, step=1, label="max new tokens"), "max_new_tokens")
        seed = named(FieldNumber(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="seed"), "seed")
    with gr.Row():
        run = gr.Button("Run evaluation", variant="primary", elem_id="run-eval")
        stop = gr.Button("Stop", variant="stop", elem_id="stop-eval")
    chart = gr.Plot(label="Accuracy", elem_id="eval-plot")
    summary = gr.Markdown(elem_id="eval-table")
    samples = gr.File(label="Every sample (JSONL)")
    run.click(cb.evaluate, [task, n, modes, beta, temperature, top_p, max_tokens, seed],
                           [chart, summary, samples], api_name="evaluate")
    # The same Stop as the side-by-side tab: drops a queued evaluation, aborts a running one (its requests).
    stop.click(cb.stop, None, summary, api_name=False, queue=False)
