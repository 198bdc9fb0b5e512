"""The beta sweep (/sweep): the standard lane and a MoI lane per beta, in one engine batch, streamed into the side by
side tab's sweep boxes, then its two figures."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gradio as gr

from moi_demo.app import plots
from moi_demo.app.callbacks import Callbacks, standard_label
from moi_demo.app.explorer import Lanes, parse_betas, standard_key
from moi_demo.app.fields import page_error
from moi_demo.app.requests import SweepRequest, endpoint, run_settings, switch_settings
from moi_demo.app.runs import CostMeter, Updates, one_per_update, session_of
from moi_demo.core import inputs
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import Trace, first_divergence, lane_label


class Sweeps:
    """The sweep's callbacks, on the side-by-side tab's page, engine and runs (`Callbacks`)."""

    def __init__(self, tab: Callbacks):
        self.engine, self.page, self.runs, self.max_new_tokens = tab.engine, tab.page, tab.runs, tab.max_new_tokens

    @endpoint(SweepRequest, (("lanes", None),))
    def sweep(self, req: SweepRequest, lanes: Lanes | None, request: gr.Request = None) -> Iterator[Updates]:
        """The beta sweep: the standard lane (reused when its inputs are unchanged) and a MoI lane per entry of
        `betas` (e.g. "0, 0.5, 1, direct"), in one engine batch, streamed. Every lane is kept: the slider then
        shows a swept beta at once, and Export writes them all."""
        p = self.page
        try:
            prompt = inputs.check_prompt(req.prompt)
            moi_cfg, settings = run_settings(req, "MoI", 1.0, req.top_k, self.max_new_tokens)
            configs = [c.with_switches(**switch_settings(req)) for c in parse_betas(req.betas, moi_cfg.top_k)]
        except InputError as e:
            raise page_error(e) from None
        lanes = lanes if lanes is not None else Lanes()
        key = standard_key(self.engine.model, prompt, settings)
        run_id = self.runs.start(session_of(request), "sweep")
        standard = lanes.reusable_standard(key, moi_cfg.top_k)
        runs = configs if standard is not None else [MoIConfig("standard", 1.0, moi_cfg.top_k), *configs]
        first = len(runs) - len(configs)  # index of the first MoI lane in the engine's traces
        boxes, hidden = p.sweep_boxes[: len(configs)], p.sweep_boxes[len(configs) :]
        update: Updates = {
            p.standard_text: gr.update(value=standard.text if standard else "", label=standard_label(standard))
        }
        start = time.perf_counter()
        meter = CostMeter(self.engine)
        traces: tuple[Trace, ...] = ()
        for i, traces in enumerate(self.runs.stream(prompt, runs, settings, run_id)):
            if standard is None:
                update[p.standard_text] = gr.update(value=traces[0].text, label=standard_label(None))
            if i == 0:  # the first update names and shows the lanes; later ones only extend their texts
                update |= {
                    box: gr.update(visible=True, value=t.text, label=lane_label(t.config, full=True))
                    for box, t in zip(boxes, traces[first:], strict=True)
                }
                update |= {box: gr.update(visible=False, value="") for box in hidden}
            else:
                update |= {box: gr.update(value=t.text) for box, t in zip(boxes, traces[first:], strict=True)}
            tokens = sum(len(t.steps) for t in traces)
            cost = meter.poll()
            update[p.sweep_status] = f"Sweeping {len(configs)} lanes: {tokens} tokens so far" + (
                f" · {cost}" if cost else ""
            )
            yield update
            update = {}
        if not traces or not self.runs.current(run_id):
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
