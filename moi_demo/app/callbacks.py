"""The side-by-side tab's answers, each also an API endpoint (layout.py names them): runs (Generate, live), their
figures, Stop, the step inspector, Export. Every callback returns its updates keyed by component (`Page`): what it
does not name stays as it is. No math here (core/) and no figure code (plots.py); a run's inputs arrive by name
(requests.py), and an `InputError` reaches the page as "field: reason"."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from moi_demo.app import gradio_shim, plots
from moi_demo.app.compare_view import comparison_chart, comparison_panel
from moi_demo.app.explorer import Lanes, standard_key
from moi_demo.app.fields import page_error
from moi_demo.app.requests import RunRequest, endpoint
from moi_demo.app.runs import CostMeter, Runs, Updates, one_per_update, session_of
from moi_demo.core import inputs
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import STANDARD_LABEL, Trace, first_divergence, lane_label
from moi_demo.serving.compare import compare
from moi_demo.serving.engine import MoIEngine
from moi_demo.serving.run_card import run_card
from moi_demo.serving.supervisor import EngineUnavailableError

logger = logging.getLogger(__name__)

RUN_APIS = {
    "generate",
    "live",
    "sweep",
    "evaluate",
    "compare",
}  # the events Stop drops from the queue (export etc. are cheap)
RUN_STATE = (("lanes", None), ("event", 0))  # a run's inputs after its RunRequest: the session's lanes, the page's
# event number (layout.NEXT_EVENT; 0 from API clients)


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
    cost: Any = None  # what a step costs, live while the lanes stream
    sweep_boxes: list[Any] = field(default_factory=list)
    sweep_status: Any = None
    sweep_summary: Any = None
    sweep_curves: Any = None
    reads: Any = None  # what the model reads back at the inspected step (HTML)
    inspection: Any = None  # the same, as JSON (and the MoI lane's cos per step)
    compare_plot: Any = None  # same tokens: KL per step
    compare_panel: Any = None  # ... the inspected step's two top-k (HTML)
    compare_json: Any = None

    @property
    def figures(self) -> list[Any]:
        """The views drawn after a run, in the order plots.pair_views builds them, then the inspection's JSON."""
        return [self.token_plot, self.step_plot, self.heatmap_plot, self.entropy_plot, self.reads, self.inspection]


def standard_label(reused: Trace | None) -> str:
    return f"{STANDARD_LABEL} (reused: same inputs)" if reused is not None else STANDARD_LABEL


class Callbacks:
    """The side-by-side tab: runs (generate, live), their figures, Stop, the step inspector, Export."""

    def __init__(self, engine: MoIEngine, max_new_tokens: int = 512):
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.runs = Runs(engine)
        self.page = Page()  # filled by layout.py
        self.demo: gr.Blocks | None = None  # set by build_demo: its queue

    @endpoint(RunRequest, RUN_STATE)
    def generate(
        self, req: RunRequest, lanes: Lanes | None, event: Any = 0, request: gr.Request = None
    ) -> Iterator[Updates]:
        """Generate: stream the MoI lane (and the standard lane, unless it is reused: same model, prompt, sampling
        settings, seed and max tokens as the last finished one) every token, then the state and status. Figures are
        not built here: the page draws them after the run (`figures`, chained), so API clients never pay for plots
        they do not want. The run is keyed by the session: Stop (page or API) stops it, a newer run supersedes it;
        `event` orders the page's own events (Runs.start)."""
        yield from self._run(req, lanes, event, request, live=False)

    @endpoint(RunRequest, RUN_STATE)
    def live(
        self, req: RunRequest, lanes: Lanes | None, event: Any = 0, request: gr.Request = None
    ) -> Iterator[Updates]:
        """A beta, mode or top-k change after a run (the live controls): the MoI lane again, shown at once with no
        engine call when this session already ran that setting (a sweep's lanes too), the standard lane reused.
        A newer change supersedes (and aborts) an older one. Nothing happens before the session's first run."""
        if lanes is None or lanes.shown is None:
            yield {self.page.status: gr.skip()}  # every output as it was (an empty dict reads as one value)
            return
        yield from self._run(req, lanes, event, request, live=True)

    def _run(
        self, req: RunRequest, lanes: Lanes | None, event: Any, request: gr.Request, live: bool
    ) -> Iterator[Updates]:
        p = self.page
        try:
            prompt, moi_cfg, settings = req.parse(self.max_new_tokens)
        except InputError as e:
            raise page_error(e) from None
        lanes = lanes if lanes is not None else Lanes()
        key = standard_key(self.engine.model, prompt, settings)
        run_id = self.runs.start(session_of(request), "run", event)
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
            p.standard_text: gr.update(value=standard.text if standard else "", label=standard_label(standard))
        }
        start = time.perf_counter()
        meter = CostMeter(self.engine)
        traces: tuple[Trace, ...] = ()
        for traces in self.runs.stream(prompt, configs, settings, run_id):
            update = dict(first)
            if standard is None:
                update[p.standard_text] = gr.update(value=traces[0].text, label=standard_label(None))
            update[p.moi_text] = gr.update(value=traces[-1].text, label=label)
            if cost := meter.poll():
                update[p.cost] = f"Per step, live: {cost}"
            yield update
            first = {}
        if not traces or not self.runs.current(run_id):
            return
        lanes.keep(key, traces[0] if standard is None else None, [traces[-1]])
        elapsed = time.perf_counter() - start
        final = self._final(
            lanes, standard or traces[0], traces[-1], label, reused=standard is not None, elapsed=elapsed
        )
        if cost := meter.poll(force=True):
            final[p.cost] = f"Per step over the run: {cost}"
        yield final

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
            p.standard_text: gr.update(value=standard.text, label=standard_label(standard if reused else None)),
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

    async def stop(self, request: gr.Request) -> str:
        """Stop this session's runs wherever they are: still waiting in the queue (dropped: they never start),
        or on the engine (aborted). For the page and for API clients alike (keyed by the session)."""
        session = session_of(request)
        dropped = await gradio_shim.drop_waiting(self.demo, session, RUN_APIS)
        aborted = await asyncio.to_thread(self.engine.cancel, session)
        text = f"Stopped ({aborted} request{'s' if aborted != 1 else ''} aborted"
        return text + (f", {dropped} queued run{'s' if dropped != 1 else ''} dropped)." if dropped else ").")

    @endpoint(RunRequest, (("lanes", None), ("step", 0)))
    def compare(self, req: RunRequest, lanes: Lanes | None, step: Any = 0, request: gr.Request = None) -> Updates:
        """Same tokens, two inputs (serving/compare.py): the standard lane, then this MoI lane forced to its tokens;
        per step KL(standard || MoI) over the union of the top-k and the top-k overlap (the chart, and as JSON),
        and step `step`'s two top-k side by side. Keyed by the session like a run: Stop stops it."""
        try:
            prompt, moi_cfg, settings = req.parse(self.max_new_tokens)
        except InputError as e:
            raise page_error(e) from None
        run_id = self.runs.start(session_of(request), "compare")
        try:
            comp = compare(self.engine, prompt, moi_cfg, settings, run_id=run_id)
        except InputError as e:
            raise page_error(e) from None
        except EngineUnavailableError as e:
            raise gr.Error(str(e), title="Engine unavailable") from None
        lanes = lanes if lanes is not None else Lanes()
        lanes.comparison = comp
        summary = {
            "label": lane_label(moi_cfg, full=True),
            "tokens": [s.token for s in comp.standard.steps],
            **{k: v for k, v in comp.to_dict().items() if k not in ("standard", "moi")},
        }
        p = self.page
        return {
            p.lanes: lanes,
            p.compare_plot: comparison_chart(comp),
            p.compare_panel: comparison_panel(comp, int(step or 0)),
            p.compare_json: summary,
        }

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
            self.page.compare_panel: comparison_panel(lanes.comparison, i) if lanes.comparison else gr.skip(),
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
