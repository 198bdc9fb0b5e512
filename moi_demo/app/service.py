"""The page's service callbacks: health (the API's /health and the page's status line) and the Evaluate tab."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr

from moi_demo.app import gradio_shim
from moi_demo.app.callbacks import Callbacks
from moi_demo.app.fields import page_error
from moi_demo.app.requests import EvalRequest, endpoint, run_settings, switch_settings
from moi_demo.app.runs import session_of
from moi_demo.core import inputs
from moi_demo.core.inputs import InputError
from moi_demo.serving.engine import MoIEngine
from moi_demo.serving.run_card import run_card
from moi_demo.serving.supervisor import EngineUnavailableError, RunStopped

EVAL_TASKS = ["arithmetic-1", "arithmetic-2", "arithmetic-3", "arithmetic-4", "countdown-3", "countdown-4"]
EVAL_MODES = ("standard", "direct", "moi", "gumbel", "multiplex")
DRAWS = inputs.Bound("draws", 1, 8, integer=True)  # samples per example on the page (pass@k up to pass@8)


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

    @endpoint(EvalRequest, progress=True)
    def evaluate(
        self, req: EvalRequest, request: gr.Request = None, progress: gr.Progress = None
    ) -> tuple[Any, str, str]:
        """A small eval (n <= 50) of the chosen modes with a progress bar: accuracy bars, 95% intervals."""
        from moi_demo.evaluation import evaluate as ev
        from moi_demo.evaluation.tasks import get_task

        task, modes = req.task, req.modes
        try:
            inputs.check_choice(task, "task", EVAL_TASKS)
            if not modes or any(m not in EVAL_MODES for m in modes):
                raise InputError("modes", f"choose one or more of {', '.join(EVAL_MODES)}; got {modes!r}")
            n = inputs.EVAL_N.check(req.n)
            draws = DRAWS.check(req.draws)
            moi_cfg, settings = run_settings(req, "MoI", req.beta, 20, self.runs.max_new_tokens)
        except InputError as e:
            raise page_error(e) from None
        examples, checker = get_task(task, n, settings.seed or 0)
        switches = switch_settings(req)
        configs = ev.with_switches(ev.mode_configs(modes, [moi_cfg.beta], moi_cfg.top_k), **switches)
        total = len(examples) * len(configs) * draws
        progress(0, desc="generating")
        try:
            results, samples = ev.evaluate(
                self.engine,
                examples,
                checker,
                configs,
                settings,
                progress=lambda done: progress(done / total, desc="generating"),
                run_id=session_of(request),
                samples=draws,
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
                "draws": draws,
                "modes": modes,
                "beta": moi_cfg.beta,
                "top_k": moi_cfg.top_k,
                **switches,
                **asdict(settings),
            },
        }
        files = ev.write_outputs(path, "eval", samples, chart, card)
        return chart, ev.table(results), str(files[0])
