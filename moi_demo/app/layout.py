"""The Gradio page: standard vs Mixture of Inputs, side by side, and the Evaluate tab. Layout and event wiring
only: callbacks.py answers the events, fields.py builds the inputs (from the bounds of `core.inputs`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from moi_demo.app import plots
from moi_demo.app.callbacks import Callbacks
from moi_demo.app.compare_view import COMPARE_CSS, comparison_panel
from moi_demo.app.diversity import SEEDS, Diversity, answers_chart, paths_tree
from moi_demo.app.explorer import DEFAULT_SWEEP, MAX_SWEEP_LANES
from moi_demo.app.fields import FieldRadio, named, number, slider
from moi_demo.app.requests import EvalRequest, RunRequest, SweepRequest, color_by_moved, named_inputs
from moi_demo.app.service import DRAWS, EVAL_MODES, EVAL_TASKS, ServiceCallbacks
from moi_demo.app.sweep import Sweeps
from moi_demo.core import inputs
from moi_demo.core.config import DEFAULT_BETA, DEFAULT_GATE_H, DEFAULT_SAMPLES, DEFAULT_TAU, DEFAULT_TOP_K, MoIConfig
from moi_demo.core.trace import MODE_CHOICES, STANDARD_LABEL, lane_label
from moi_demo.serving.engine import MoIEngine

ASSETS = Path(__file__).resolve().parents[2] / "assets"

INTRO = """
# Mixture of Inputs, side by side
A standard LLM samples a token and feeds back only its embedding. **Mixture of Inputs** ([arXiv
2505.14827](https://arxiv.org/abs/2505.14827)) feeds back a mix of the top-k candidates' embeddings,
`w = (H·p + (β + 1 − H)·onehot(y)) / (β + 1)`: the less certain the model (high entropy H) and the lower β,
the more of the distribution it keeps. Same model, prompt, chat template and seed in both columns.
"""


# The page numbers its own run events (Generate, Enter in the prompt, each live change) before sending them, in the
# order they happened: their runs start on worker threads in any order, and runs.Runs.start drops a run the page
# made before one already started. The last input is that number; the rest pass through.
NEXT_EVENT = """(...values) => {
    window.moiRunEvents = (window.moiRunEvents || 0) + 1;
    return [...values.slice(0, -1), window.moiRunEvents];
}"""


def switch_controls(prefix: str = "") -> dict[str, Any]:
    """MoI's design choices (core/mixing.py) as controls, the paper's by default: entropy, prior, noise; the gate;
    the rival modes' tau (gumbel) and samples (multiplex). Keyed by their RunRequest field."""
    entropy = named(
        FieldRadio(
            [("top-k: of p, over log k (paper)", "top_k"), ("full: of the whole distribution, over log |V|", "full")],
            value="top_k",
            label="Entropy H",
            elem_id=f"{prefix}entropy",
        ),
        "entropy",
        moved=color_by_moved,
    )
    prior = named(
        FieldRadio(
            [("raw: temperature-1 top-k (paper)", "raw"), ("processed: after the temperature and top-p", "processed")],
            value="raw",
            label="Prior p",
            elem_id=f"{prefix}prior",
        ),
        "prior",
    )
    noise = slider(
        inputs.APP_NOISE, 0.0, "Gumbel noise on the prior's logits (from the seed)", 0.05, elem_id=f"{prefix}noise"
    )
    gate = named(
        FieldRadio(
            [("none: mix at every step (paper)", "none"), ("high: only where H >= gate_h (SeLaR)", "high"),
             ("low: only where H <= gate_h (ThinkRouter)", "low")],
            value="none",
            label="Entropy gate",
            elem_id=f"{prefix}gate",
        ),
        "gate",
    )  # fmt: skip
    gate_h = slider(inputs.GATE_H, DEFAULT_GATE_H, "gate_h: the gate's threshold on H", 0.05, elem_id=f"{prefix}gate-h")
    tau = slider(inputs.APP_TAU, DEFAULT_TAU, "tau (Gumbel soft thinking)", 0.05, elem_id=f"{prefix}tau", lo=0.05)
    samples = slider(inputs.APP_SAMPLES, DEFAULT_SAMPLES, "samples (Multiplex)", 1, elem_id=f"{prefix}samples")
    return dict(entropy=entropy, prior=prior, noise=noise, gate=gate, gate_h=gate_h, tau=tau, samples=samples)


def load_examples() -> list[str]:
    return json.loads((ASSETS / "examples.json").read_text())


@dataclass
class Handlers:
    """What answers the page's events: the side-by-side tab's runs, the sweep, the service (health, Evaluate)."""

    runs: Callbacks
    sweeps: Sweeps
    diversity: Diversity
    service: ServiceCallbacks


def build_demo(engine: MoIEngine, max_new_tokens: int = 512, title: str = "Mixture of Inputs demo") -> gr.Blocks:
    return build_page(engine, max_new_tokens, title)[0]


def build_page(
    engine: MoIEngine, max_new_tokens: int = 512, title: str = "Mixture of Inputs demo"
) -> tuple[gr.Blocks, Handlers]:
    """The page and the handlers wired to its events (tests call the handlers directly)."""
    cb = Callbacks(engine, max_new_tokens)
    handlers = Handlers(cb, Sweeps(cb), Diversity(cb), ServiceCallbacks(engine, cb))
    service = handlers.service
    with gr.Blocks(title=title) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"Model: `{Path(engine.model).name}`", elem_id="model-name")
        health_line = gr.Markdown(service.health_line(), elem_id="health")
        gr.Timer(5.0).tick(service.health_line, None, health_line, api_name=False, queue=False)
        gr.api(service.health, api_name="health", queue=False)  # API only: engine state, queue, uptime, restarts
        with gr.Tab("Side by side"):
            side_by_side(handlers, max_new_tokens)
        with gr.Tab("Evaluate"):
            evaluate_tab(cb, service)
    cb.demo = demo
    return demo, handlers


def side_by_side(handlers: Handlers, max_new_tokens: int) -> None:
    cb, sweeps = handlers.runs, handlers.sweeps
    p = cb.page
    # This session's lanes (per session, server side): the standard lane, the MoI lanes run for it, the pair shown.
    p.lanes = gr.State(None, time_to_live=3600)  # a Lanes after the first run
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask the model something...", elem_id="prompt")
            gr.Examples(load_examples(), inputs=prompt, label="Examples")
            with gr.Row():
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        with gr.Column(scale=2):
            beta = slider(
                inputs.APP_BETA,
                DEFAULT_BETA,
                "beta (higher keeps more of the sample) · live after a run",
                0.05,
                elem_id="beta",
            )
            mode = named(FieldRadio(list(MODE_CHOICES), value="MoI", label="Mode", elem_id="mode"), "mode")
            top_k = slider(inputs.APP_TOP_K, DEFAULT_TOP_K, "top-k candidates mixed", 1, elem_id="top-k")
            with gr.Accordion("Sampling", open=False):
                temperature = slider(inputs.TEMPERATURE, 0.0, "temperature (0 = greedy)", 0.05, elem_id="temperature")
                top_p = slider(inputs.TOP_P, 1.0, "top-p", 0.01, lo=inputs.TOP_P_SLIDER_MIN)
                max_tokens = slider(
                    inputs.MAX_TOKENS.with_hi(max_new_tokens),
                    min(128, max_new_tokens),
                    "max new tokens",
                    1,
                    field="max_new_tokens",
                    elem_id="max-tokens",
                )
                seed = number(inputs.SEED, 0, "seed")
            with gr.Accordion("Advanced: MoI's design choices · live after a run", open=False, elem_id="advanced"):
                switches = switch_controls()
    p.status = gr.Markdown("", elem_id="status")
    p.cost = gr.Markdown("", elem_id="step-cost")  # the engine's time per step and the plugin's share, live
    with gr.Row(equal_height=True):
        p.standard_text = gr.Textbox(
            label=STANDARD_LABEL, lines=12, max_lines=12, interactive=False, elem_id="standard-text", autoscroll=False
        )
        p.moi_text = gr.Textbox(
            label=lane_label(MoIConfig(), full=True),
            lines=12,
            max_lines=12,
            interactive=False,
            elem_id="moi-text",
            autoscroll=False,
        )
    color_by = named(
        FieldRadio([("p(sampled)", "p"), ("entropy H", "entropy")], value="p", label="Colour tokens by"), "color_by"
    )
    p.token_plot = gr.HTML(
        plots.token_map(*plots.NO_TRACES),
        label="Tokens",
        elem_id="token-plot",
        css_template=plots.TOKEN_MAP_CSS,
        js_on_load=None,
        max_height=420,
    )
    p.step = slider(
        inputs.Bound("step", 0, max(max_new_tokens - 1, 1), integer=True), 0, "Step to inspect", 1, elem_id="step"
    )
    p.step_plot = gr.Plot(label="Inside a step", elem_id="step-plot")
    p.reads = gr.HTML(
        plots.reads_panel(None), label="What the model reads", elem_id="reads", css_template=plots.READS_CSS
    )
    with gr.Accordion("What the model reads, as JSON (every step's cosine; the API's /select_step)", open=False):
        p.inspection = gr.JSON(elem_id="inspection")
    with gr.Row():
        p.heatmap_plot = gr.Plot(label="Mix weights", elem_id="heatmap-plot")
        p.entropy_plot = gr.Plot(label="Entropy", elem_id="entropy-plot")
    with gr.Accordion("Same tokens, two inputs: the MoI lane fed the standard lane's tokens", open=False):
        gr.Markdown(
            "After the first divergence the two lanes compare different histories. Here the MoI lane of these "
            "settings decodes the standard lane's own tokens (teacher forcing) and feeds its own mixture: per step, "
            "KL(standard || MoI) over the union of their top-k, and the two top-k at the inspected step."
        )
        compare_btn = gr.Button("Compare on the same tokens", elem_id="compare")
        p.compare_plot = gr.Plot(label="Same tokens", elem_id="compare-plot")
        p.compare_panel = gr.HTML(comparison_panel(None, 0), elem_id="compare-panel", css_template=COMPARE_CSS)
        p.compare_json = gr.JSON(visible=False)
    with gr.Accordion("Diversity: N seeds per mode, one batch", open=False):
        gr.Markdown(
            "The standard lane and this MoI lane, each under N seeds (the seed, the seed + 1, ...) at these sampling "
            "settings: MoI samples a real token at every step, so it keeps the sampler's diversity."
        )
        with gr.Row():
            seeds = slider(SEEDS, 8, "N seeds per mode", 1, elem_id="seeds", scale=3)
            diversity_btn = gr.Button("Run the seeds", elem_id="diversity", scale=1)
        with gr.Row():
            answers_plot = gr.Plot(answers_chart(None), label="Final answers", elem_id="answers-plot")
            tree_plot = gr.Plot(paths_tree(None), label="Token paths", elem_id="paths-plot")
        spread_json = gr.JSON(label="Distinct answers and paths per mode", elem_id="spread")
    handlers.diversity.outputs = [answers_plot, tree_plot, spread_json]
    with gr.Accordion("Beta sweep: every beta at once, one batch", open=True):
        with gr.Row():
            betas = gr.Textbox(
                DEFAULT_SWEEP,
                label=f"betas (each 0 to 4, or direct; at most {MAX_SWEEP_LANES})",
                elem_id="betas",
                scale=4,
            )
            sweep_btn = gr.Button("Sweep beta", elem_id="sweep", scale=1)
        p.sweep_status = gr.Markdown("", elem_id="sweep-status")
        for row in range(2):
            with gr.Row(equal_height=True):
                for i in range(row * 4, row * 4 + 4):
                    p.sweep_boxes.append(
                        gr.Textbox(
                            label=f"lane {i + 1}",
                            lines=8,
                            max_lines=8,
                            interactive=False,
                            visible=False,
                            elem_id=f"sweep-lane-{i}",
                            autoscroll=False,
                        )
                    )
        with gr.Row():
            p.sweep_summary = gr.Plot(label="Divergence, kept weight and H per beta", elem_id="sweep-summary-plot")
            p.sweep_curves = gr.Plot(label="Weight on the sampled token per step", elem_id="sweep-curves-plot")
    download = gr.File(label="Every lane (JSON)", elem_id="download")

    run_outputs = [p.standard_text, p.moi_text, p.lanes, p.step, p.cost, p.status]
    event_number = gr.Number(0, visible=False)  # set by NEXT_EVENT on the page; API clients leave it 0
    controls = dict(
        prompt=prompt,
        mode=mode,
        beta=beta,
        top_k=top_k,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        betas=betas,
        **switches,
    )
    run_inputs = [*named_inputs(RunRequest, controls), p.lanes, event_number]  # as Callbacks.generate takes them
    # The engine's two queues, each event on one naming its limit: runs (a pair of lanes, a compare) share the
    # engine's sequence budget, at most max_concurrent_runs at once; a sweep holds up to MAX_SWEEP_LANES + 1
    # sequences, so fewer sweeps (and diversity batches) than runs. Gradio lowers a shared queue's limit to the lowest
    # any of its events declares (one that names none declares 1) when that event first runs: one event without the
    # limit and, after its first use, the page serves one run at a time.
    runs_queue = dict(concurrency_id="engine-runs", concurrency_limit=cb.engine.max_concurrent_runs)
    sweep_limit = max(1, cb.engine.options.max_num_seqs // (2 * (MAX_SWEEP_LANES + 1)))
    sweeps_queue = dict(concurrency_id="engine-sweeps", concurrency_limit=sweep_limit)
    # Progress shows on the status line only: a loading overlay and timer on every output (four plots among them)
    # re-rendered at every streamed token is what kept the page's main thread busy.
    run_opts = dict(
        **runs_queue,
        show_progress="minimal",
        show_progress_on=[p.status],
        js=NEXT_EVENT,
    )
    quiet = dict(api_name=False, show_progress="hidden")

    def after_run(event: gr.events.Dependency, export_api: str | bool = False) -> None:
        event.then(cb.figures, [p.lanes, color_by], p.figures, **quiet).then(
            cb.export, p.lanes, download, api_name=export_api, show_progress="hidden"
        )

    run = generate_btn.click(cb.generate, run_inputs, run_outputs, api_name="generate", **run_opts)
    after_run(run, export_api="export")
    after_run(prompt.submit(cb.generate, run_inputs, run_outputs, api_name=False, **run_opts))
    # The live controls re-run the MoI lane on `change`: what every way of setting a value fires (a drag, a click
    # on the track, typing in the number box, Enter, Tab, the arrow keys), with the value the page shows. `release`
    # fires for a drag and a blur only, and a blur's with the value before the browser's own step (the arrow keys).
    # Every change runs: a newer one supersedes (and aborts) the older server side, so "multiple".
    live_events = []
    for control, api in ((beta, "live"), (mode, False), (top_k, False), *((c, False) for c in switches.values())):
        event = control.change(cb.live, run_inputs, run_outputs, api_name=api, trigger_mode="multiple", **run_opts)
        after_run(event)
        live_events.append(event)
    sweep = sweep_btn.click(
        sweeps.sweep,
        [*named_inputs(SweepRequest, controls), p.lanes],
        [p.standard_text, *p.sweep_boxes, p.lanes, p.sweep_status],
        api_name="sweep",
        **sweeps_queue,
        show_progress="minimal",
        show_progress_on=[p.sweep_status],
    )
    sweep.then(sweeps.sweep_figures, p.lanes, [p.sweep_summary, p.sweep_curves], **quiet).then(
        cb.export, p.lanes, download, **quiet
    )
    # The page also cancels its own pending events (Gradio's `cancels`); cb.stop covers API clients, the queue
    # and the engine.
    stop_btn.click(cb.stop, None, p.status, api_name="stop", queue=False)
    stop_btn.click(None, None, None, cancels=[run, sweep, *live_events], api_name=False)
    diversity_btn.click(
        handlers.diversity.diversity,
        [*named_inputs(RunRequest, controls), seeds],
        handlers.diversity.outputs,
        api_name="diversity",
        **sweeps_queue,
        show_progress="minimal",
        show_progress_on=[spread_json],
    )
    compare_btn.click(
        cb.compare,
        [*named_inputs(RunRequest, controls), p.lanes, p.step],
        [p.lanes, p.compare_plot, p.compare_panel, p.compare_json],
        api_name="compare",
        **runs_queue,
        show_progress="minimal",
        show_progress_on=[p.compare_plot],
    )
    inspector = [p.step_plot, p.token_plot, p.reads, p.inspection, p.compare_panel]
    p.step.release(
        cb.select_step, [p.lanes, p.step, color_by], inspector, api_name="select_step", show_progress="hidden"
    )
    color_by.change(cb.select_step, [p.lanes, p.step, color_by], inspector, **quiet)


def evaluate_tab(cb: Callbacks, service: ServiceCallbacks) -> None:
    gr.Markdown(
        "Accuracy of standard decoding, direct mixture and MoI on generated tasks with exact checkers "
        "(never `eval()` of model text), same seeds in every mode. For the paper's protocol on a GPU with "
        "your data: `moi-demo eval --task your.jsonl`."
    )
    with gr.Row():
        task = named(FieldRadio(EVAL_TASKS, value="arithmetic-1", label="Task"), "task")
        modes = gr.CheckboxGroup(list(EVAL_MODES), value=list(EVAL_MODES), label="Modes")
    with gr.Row():
        n = slider(inputs.EVAL_N, 20, "examples (n)", 1)
        beta = slider(inputs.APP_BETA, DEFAULT_BETA, "beta", 0.05)
        temperature = slider(inputs.TEMPERATURE, 0.6, "temperature", 0.05)
        top_p = slider(inputs.TOP_P, 0.8, "top-p", 0.01, lo=inputs.TOP_P_SLIDER_MIN)
        max_tokens = slider(inputs.MAX_TOKENS.with_hi(256), 64, "max new tokens", 1, field="max_new_tokens", lo=8)
        seed = number(inputs.SEED, 0, "seed")
        draws = slider(DRAWS, 1, "samples per example (pass@k)", 1, elem_id="draws")
    with gr.Accordion("Advanced: MoI's design choices", open=False):
        switches = switch_controls("eval-")
    with gr.Row():
        run = gr.Button("Run evaluation", variant="primary", elem_id="run-eval")
        stop = gr.Button("Stop", variant="stop", elem_id="stop-eval")
    chart = gr.Plot(label="Accuracy", elem_id="eval-plot")
    summary = gr.Markdown(elem_id="eval-table")
    samples = gr.File(label="Every sample (JSONL)")
    controls = dict(
        task=task,
        n=n,
        modes=modes,
        beta=beta,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        **switches,
        draws=draws,
    )
    run.click(
        service.evaluate,
        named_inputs(EvalRequest, controls),
        [chart, summary, samples],
        api_name="evaluate",
    )
    # The same Stop as the side-by-side tab: drops a queued evaluation, aborts a running one (its requests).
    stop.click(cb.stop, None, summary, api_name=False, queue=False)
