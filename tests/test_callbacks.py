"""Every callback of the page (generate, live, sweep, stop, select step, figures, export, evaluate), called as Gradio
calls it, on a fake engine (tests/fake_engine.py): the fast tier's test of the app's logic. test_app.py runs the
same endpoints through the real server and engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from moi_demo.app.layout import build_page
from moi_demo.app.requests import RunRequest
from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import Trace
from moi_demo.evaluation.tasks import get_task
from tests.fake_engine import FakeEngine

PROMPT = "Where does the cat sit?"
RUN = dict(prompt=PROMPT, mode="MoI", beta=1.0, top_k=5, temperature=0.0, top_p=1.0, max_tokens=6, seed=0)


def session(name: str = "s1") -> SimpleNamespace:
    return SimpleNamespace(session_hash=name)  # what the callbacks read of Gradio's Request


@pytest.fixture
def page():
    engine = FakeEngine()
    demo, handlers = build_page(engine, max_new_tokens=64)
    return SimpleNamespace(
        engine=engine,
        demo=demo,
        cb=handlers.runs,
        sweeps=handlers.sweeps,
        service=handlers.service,
        diversity=handlers.diversity,
        handlers_diversity=handlers.diversity.diversity,
    )


def last(updates) -> dict:
    out = list(updates)
    assert out, "no update"
    return out[-1]


def generate(page, lanes=None, request=None, **over):
    updates = list(page.cb.generate(**{**RUN, **over}, lanes=lanes, request=request or session()))
    return updates, updates[-1].get(page.cb.page.lanes, lanes)


def test_generate_streams_both_lanes_then_the_final_state_and_reuses_the_standard_lane(page):
    p = page.cb.page
    updates, lanes = generate(page)
    assert len(updates) >= 2 and updates[0][p.moi_text]["value"] == " was"  # the first token at once, paced after
    final = updates[-1]
    standard, moi = lanes.shown
    assert page.engine.streamed[-1] == [MoIConfig("standard", 1.0, 5), MoIConfig("moi", 1.0, 5)]
    assert final[p.standard_text]["value"] == standard.text and final[p.moi_text]["value"] == moi.text
    assert final[p.moi_text]["label"] == "Mixture of Inputs (beta = 1)"
    assert final[p.status].startswith("Done: 6 + 6 tokens") and "diverge at step **2**" in final[p.status]
    assert final[p.step]["value"] == 2 and len(moi.steps) == 6 and moi.steps[0].weights is not None
    # the same prompt and settings again: the standard lane is reused, only the MoI lane runs
    updates, lanes = generate(page, lanes=lanes, beta=0.5)
    assert page.engine.streamed[-1] == [MoIConfig("moi", 0.5, 5)]
    assert updates[-1][p.standard_text]["label"] == "Standard (reused: same inputs)"
    assert "standard lane reused" in updates[-1][p.status]


def test_generate_positionally_as_the_page_sends_it_and_by_keyword_alike(page):
    switches = ("top_k", "raw", 0.0, "none", 0.5, 0.5, 3)  # entropy, prior, noise, gate, gate_h, tau, samples
    positional = list(page.cb.generate(*RUN.values(), *switches, None, 0, session()))
    by_name = list(page.cb.generate(**RUN, request=session("s2")))
    p = page.cb.page
    assert positional[-1][p.moi_text]["value"] == by_name[-1][p.moi_text]["value"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (dict(entropy="p"), "color_by: this endpoint no longer takes color_by"),  # a call with the old arity
        (dict(beta="abc"), "beta: must be"),
        (dict(max_tokens=65), "max_new_tokens: must be an integer from 1 to 64; got 65"),
        (dict(prompt=None), "prompt: must"),
        (dict(prior="tempered"), "prior: must be one of raw, processed; got 'tempered'"),
    ],
)
def test_bad_run_input_names_the_field_and_runs_nothing(page, over, message):
    with pytest.raises(gr.Error, match=message.replace("(", r"\(")):
        generate(page, **over)
    assert page.engine.streamed == []


def test_old_arity_call_is_told_what_changed(page):
    """A client of the old /generate sent color_by ("p" or "entropy") 9th: it lands in `entropy` and is named."""
    with pytest.raises(gr.Error) as e:
        list(page.cb.generate(*RUN.values(), "p", request=session()))
    assert "color_by" in str(e.value) and "prompt, mode, beta, top_k" in str(e.value)
    assert list(RunRequest.__dataclass_fields__)[8] == "entropy"  # where an old call's color_by lands
    # Through the server the page's entropy radio checks the value first: it names color_by too
    (radio,) = [b for b in page.demo.blocks.values() if getattr(b, "elem_id", None) == "entropy"]
    with pytest.raises(gr.Error, match="color_by: this endpoint no longer takes color_by"):
        radio.preprocess("p")
    assert radio.preprocess("full") == "full"


def test_the_rival_modes_and_the_gate_reach_the_engine_and_name_their_lanes(page):
    p = page.cb.page
    updates, lanes = generate(page, mode="Gumbel soft thinking", tau=0.3, gate="high", gate_h=0.4)
    assert page.engine.streamed[-1][-1] == MoIConfig("gumbel", 1.0, 5, tau=0.3, gate="high", gate_h=0.4)
    assert updates[-1][p.moi_text]["label"] == "Gumbel soft thinking (tau = 0.3) · mixes where H >= 0.4"
    updates, _ = generate(page, lanes=lanes, mode="Multiplex", samples=5, tau=0.9)
    assert page.engine.streamed[-1] == [MoIConfig("multiplex", 1.0, 5, samples=5)]  # tau: gumbel's alone
    assert updates[-1][p.moi_text]["label"] == "Multiplex (5 samples)"
    with pytest.raises(gr.Error, match="gate: must be one of none, high, low; got 'middle'"):
        generate(page, gate="middle")
    with pytest.raises(gr.Error, match="samples: must be an integer from 1 to 16; got 17"):
        generate(page, mode="Multiplex", samples=17)


def test_live_does_nothing_before_a_run_then_reruns_only_moi_and_shows_kept_lanes_at_once(page):
    p = page.cb.page
    assert list(page.cb.live(**RUN, lanes=None, request=session())) == [{p.status: gr.skip()}]
    _, lanes = generate(page)
    runs = len(page.engine.streamed)
    updates = list(page.cb.live(**{**RUN, "beta": 0.0}, lanes=lanes, request=session()))
    assert page.engine.streamed[-1] == [MoIConfig("moi", 0.0, 5)] and len(page.engine.streamed) == runs + 1
    assert updates[-1][p.moi_text]["label"] == "Mixture of Inputs (beta = 0)"
    back = list(page.cb.live(**RUN, lanes=lanes, request=session()))  # beta 1 again: kept, no engine call
    assert len(page.engine.streamed) == runs + 1 and len(back) == 1
    assert back[0][p.status].startswith("Shown from this session's lanes (no engine call): 6 MoI tokens")


def test_a_page_event_older_than_a_started_run_sends_nothing(page):
    _, lanes = generate(page)
    list(page.cb.live(**RUN, lanes=lanes, event=5, request=session()))
    assert list(page.cb.live(**{**RUN, "beta": 2.0}, lanes=lanes, event=4, request=session())) == []


def test_every_event_on_an_engine_queue_keeps_its_limit():
    """Each shared queue serves its limit after every event of the page has run once: Gradio lowers a shared
    concurrency id's limit to the lowest of its events (one naming none counts as 1) when that event first runs, so
    one event without the limit would leave the page serving one run at a time. Gradio's own rule, applied to every
    event, on a GPU-sized budget of 256 sequences."""
    from moi_demo.app.explorer import MAX_SWEEP_LANES
    from moi_demo.serving.settings import EngineOptions

    engine = FakeEngine()
    engine.options = EngineOptions(max_num_seqs=256)
    demo, _ = build_page(engine, max_new_tokens=64)
    demo.queue()
    for fn in demo.fns.values():
        demo._queue.create_event_queue_for_fn(fn)
    limits = {k: q.concurrency_limit for k, q in demo._queue.event_queue_per_concurrency_id.items()}
    assert (limits["engine-runs"], limits["engine-sweeps"]) == (128, 256 // (2 * (MAX_SWEEP_LANES + 1))) == (128, 14)
    by_queue = {fn.api_name: fn.concurrency_id for fn in demo.fns.values() if fn.api_name}
    assert {by_queue[a] for a in ("generate", "live", "compare")} == {"engine-runs"}
    assert {by_queue[a] for a in ("sweep", "diversity")} == {"engine-sweeps"}


def test_sweep_streams_a_lane_per_beta_then_keeps_them_for_the_slider(page):
    p = page.cb.page
    updates = list(page.sweeps.sweep(PROMPT, "0, 1, direct", 5, 0.0, 1.0, 4, 0, lanes=None, request=session()))
    final = updates[-1]
    lanes = final[p.lanes]
    assert [t.config for t in lanes.sweep] == [
        MoIConfig("moi", 0.0, 5),
        MoIConfig("moi", 1.0, 5),
        MoIConfig("direct", 0.0, 5),
    ]
    shown = [b for b in p.sweep_boxes if final[b]["visible"]]
    assert [final[b]["label"] for b in shown] == [
        "Mixture of Inputs (beta = 0)",
        "Mixture of Inputs (beta = 1)",
        "Direct mixture (w = p)",
    ]
    assert all(final[b]["value"] == t.text for b, t in zip(shown, lanes.sweep, strict=True))
    assert final[p.sweep_status].startswith("Swept 3 lanes: 16 tokens")
    figures = list(page.sweeps.sweep_figures(lanes))
    assert [list(u) for u in figures] == [[p.sweep_summary], [p.sweep_curves]]
    rivals = list(page.sweeps.sweep(PROMPT, "1, gumbel, multiplex", 5, 0.0, 1.0, 4, 0, tau=0.2, samples=4))
    assert [t.config for t in rivals[-1][p.lanes].sweep] == [
        MoIConfig("moi", 1.0, 5),
        MoIConfig("gumbel", 0.0, 5, tau=0.2),
        MoIConfig("multiplex", 0.0, 5, samples=4),
    ]
    with pytest.raises(gr.Error, match="betas: each beta must be from 0 to 4; got 5"):
        list(page.sweeps.sweep(PROMPT, "5", 5, 0.0, 1.0, 4, 0, lanes=None, request=session()))


def test_stop_aborts_the_sessions_running_lanes(page):
    page.engine.steps_delay = 0.05
    p = page.cb.page
    out: list = []
    runner = threading.Thread(
        target=lambda: out.extend(page.cb.generate(**{**RUN, "max_tokens": 60}, request=session()))
    )
    runner.start()
    while not page.engine.streamed:
        time.sleep(0.01)
    time.sleep(0.1)
    text = asyncio.run(page.cb.stop(session()))
    runner.join(timeout=10)
    assert text == "Stopped (2 requests aborted)." and not runner.is_alive()
    done = out[-1][p.status]  # the final update shows the lanes where they stood
    assert done.startswith("Done: ") and int(done.split()[1]) < 60 and "s1" in page.engine.cancelled


def test_figures_then_select_step_and_export(page, tmp_path):
    p = page.cb.page
    with pytest.raises(gr.Error, match="Generate first"):
        page.cb.select_step(None, 0, "p")
    _, lanes = generate(page)
    drawn = list(page.cb.figures(lanes, "p"))
    assert [list(u) for u in drawn] == [[f] for f in p.figures]
    assert page.engine.inspected == [2]  # the first divergence
    assert list(page.cb.figures(lanes, "p")) == [{f: gr.skip() for f in p.figures}]  # already shown
    step = page.cb.select_step(lanes, 4, "entropy")
    assert set(step) == {p.step_plot, p.token_plot, p.reads, p.inspection, p.compare_panel}
    assert step[p.inspection][1]["step"] == 4
    with pytest.raises(gr.Error, match="step: must be an integer from 0 to 5; got 9"):
        page.cb.select_step(lanes, 9, "p")
    data = json.loads(Path(page.cb.export(lanes)).read_text())
    standard, moi = (Trace.from_dict(t) for t in data["traces"])
    assert (standard, moi) == lanes.shown and data["run_card"]["model"] == "fake/toy-model"
    assert [t["lane"] for t in data["lanes"]] == ["standard", "moi"]
    with pytest.raises(gr.Error, match="Generate first"):
        page.cb.export(None)


def test_evaluate_counts_each_modes_hits_and_writes_its_samples(page):
    examples, _ = get_task("arithmetic-1", 4, 0)
    page.engine.answers = {ex.prompt: ex.answer for ex in examples}
    chart, table, samples = page.service.evaluate(
        "arithmetic-1", 4, ["standard", "moi"], 1.0, 0.6, 0.8, 16, 0, request=session(), progress=lambda *a, **k: None
    )
    rows = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    assert [(r["mode"], r["correct"]) for r in rows] == [
        ("standard", True), ("standard", False), ("standard", True), ("standard", False),
        ("moi (beta=1)", False), ("moi (beta=1)", True), ("moi (beta=1)", False), ("moi (beta=1)", True),
    ]  # fmt: skip
    assert "| standard | 50.0% | 15.0% - 85.0% | 2 / 4 | - |" in table and "(+2/-2, McNemar p = 1)" in table
    assert chart is not None
    with pytest.raises(gr.Error, match="modes: choose one or more of standard, direct, moi"):
        page.service.evaluate("arithmetic-1", 4, [], 1.0, 0.6, 0.8, 16, 0, request=session(), progress=None)
    with pytest.raises(gr.Error, match="n: must be an integer from 1 to 50; got 80"):
        page.service.evaluate("arithmetic-1", 80, ["moi"], 1.0, 0.6, 0.8, 16, 0, request=session(), progress=None)


def test_health_line_reads_the_engine(page):
    health = page.service.health()
    assert health["engine"] == "ready" and health["runs_queued"] == 0 and health["model"] == "fake/toy-model"
    assert page.service.health_line().startswith("Engine **ready** · 0 run(s) in flight, 0 queued")


def test_the_step_cost_shows_while_the_lanes_stream_and_in_the_final_status(page):
    """The engine's time per step and the plugin's share (the fake engine: 20 ms a step, 0.5 ms of it the plugin's),
    on its own line beside the lanes: read from the engine's counters at most every 0.5 s while they stream, and over
    the whole run at the end."""
    page.engine.steps_delay = 0.12
    p = page.cb.page
    updates, _ = generate(page, max_tokens=10)
    cost = "engine step 20.0 ms · plugin 0.50 ms (2.5%)"
    streaming = [u[p.cost] for u in updates[:-1] if p.cost in u]
    assert streaming and all(s == f"Per step, live: {cost}" for s in streaming)
    assert updates[-1][p.cost] == f"Per step over the run: {cost}" and updates[-1][p.status].startswith("Done")
    assert all(p.status not in u for u in updates[:-1])  # the status line changes once, at the end
    sweep = list(page.sweeps.sweep(PROMPT, "0, 1", 5, 0.0, 1.0, 10, 0))
    assert any(u[p.sweep_status].endswith(cost) for u in sweep[:-1] if p.sweep_status in u)


def test_compare_forces_the_moi_lane_to_the_standard_tokens_and_shows_the_step(page):
    p = page.cb.page
    out = page.cb.compare(**RUN, lanes=None, step=3, request=session())
    standard_cfg, forced = page.engine.streamed[-2][0], page.engine.streamed[-1][0]
    comp = out[p.lanes].comparison
    assert standard_cfg == MoIConfig("standard", 1.0, 5) and forced == MoIConfig("moi", 1.0, 5)
    assert forced.force == tuple(comp.standard.token_ids) and comp.moi.token_ids == comp.standard.token_ids
    summary = out[p.compare_json]
    assert len(summary["kl"]) == len(summary["overlap"]) == 6 and summary["tokens"] == [
        s.token for s in comp.standard.steps
    ]
    assert summary["kl"][:2] == [0.0, 0.0] and max(summary["kl"]) > 0  # the toy lanes share their first two steps
    assert "data-step='3'" in out[p.compare_panel] and "MoI, same tokens" in out[p.compare_panel]
    assert len(out[p.compare_plot].data) == 2
    shown = page.cb.select_step(generate(page)[1], 4, "p")
    assert shown[p.compare_panel] == gr.skip()  # this session's lanes hold no comparison


def test_diversity_runs_n_seeds_per_mode_in_one_batch_and_counts_answers_and_paths(page):
    """The standard lane and the MoI lane under N seeds each (the seed + j): one engine batch of 2N jobs; the
    answers' histogram and the paths' tree count each of the 2N runs once."""
    (out,) = list(page.handlers_diversity(**{**RUN, "temperature": 1.0, "seed": 3}, seeds=5, request=session()))
    chart, tree, summary = page.diversity.outputs
    assert summary in out and set(out[summary]) == {"Standard", "MoI (beta = 1)"}
    for lane in out[summary].values():
        assert lane["runs"] == 5 and sum(lane["answers"].values()) == 5 and 1 <= lane["distinct_paths"] <= 5
    bars = out[chart].data
    assert [b.name for b in bars] == ["Standard", "MoI (beta = 1)"] and all(sum(b.y) == 5 for b in bars)
    icicle = out[tree].data[0]
    roots = [v for v, parent in zip(icicle.values, icicle.parents, strict=True) if parent == ""]
    assert roots == [5, 5]
    greedy = list(page.handlers_diversity(**RUN, seeds=2, request=session()))[0][summary]
    assert greedy["greedy"] == "temperature 0: every seed decodes the same"
    with pytest.raises(gr.Error, match="seeds: must be an integer from 2 to 16; got 40"):
        list(page.handlers_diversity(**RUN, seeds=40, request=session()))


def test_the_evaluate_tab_draws_several_samples_per_example_for_pass_at_k(page):
    examples, _ = get_task("arithmetic-1", 3, 0)
    page.engine.answers = {ex.prompt: ex.answer for ex in examples}
    _, table, samples = page.service.evaluate(
        "arithmetic-1", 3, ["standard"], 1.0, 0.6, 0.8, 16, 0, draws=4, request=session(), progress=lambda *a, **k: None
    )
    rows = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    assert len(rows) == 12 and [r["draw"] for r in rows[:4]] == [0, 1, 2, 3]
    assert "pass@4 (95% CI)" in table and "| standard | 50.0% |" in table
