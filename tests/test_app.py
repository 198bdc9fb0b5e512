"""The real Gradio app on the embedded default model, driven through gradio_client (and Chromium in
test_browser.py). One engine and one server for the module."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from moi_demo.core.plain import step_weights
from moi_demo.core.trace import Trace

pytestmark = pytest.mark.engine
PROMPT = "What is the capital of France?"
# prompt, mode, beta, top_k, temperature, top_p, max_tokens, seed (then entropy, prior, noise: RunRequest)
ARGS = (PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 48, 0)


@pytest.fixture
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def export(client) -> tuple[Trace, Trace]:
    path = client.predict(api_name="/export")
    standard, moi = (Trace.from_dict(t) for t in json.loads(Path(path).read_text())["traces"])
    return standard, moi


def test_api_endpoints(client):
    assert {"/generate", "/stop", "/select_step", "/export", "/health", "/compare", "/diversity"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )


def test_health_reports_engine_state_queue_and_uptime(client, app):
    health = client.predict(api_name="/health")
    assert health["engine"] == "ready" and health["model"] == app[1].model
    assert health["runs_in_flight"] == 0 and health["runs_queued"] == 0 and health["restarts"] == 0
    assert health["max_concurrent_runs"] == app[1].options.max_num_seqs // 2 and health["uptime_s"] > 0
    job = client.submit(*ARGS[:6], 200, 0, api_name="/generate")
    while not job.outputs():
        time.sleep(0.05)
    assert client.predict(api_name="/health")["runs_in_flight"] == 1
    client.predict(api_name="/stop")


def test_generate_streams_both_lanes_with_consistent_weights(client):
    job = client.submit(*ARGS, api_name="/generate")
    job.result(timeout=120)
    assert len(job.outputs()) >= 3  # streamed
    final = job.outputs()[-1]
    standard_text, moi_text = final[0]["value"], final[1]["value"]
    assert "Paris" in standard_text and moi_text
    assert final[1]["label"] == "Mixture of Inputs (beta = 1)"
    assert final[-1].startswith("Done:")
    standard, moi = export(client)
    assert standard.lane == "standard" and moi.lane == "moi" and moi.beta == 1.0 and moi.top_k == 20
    assert standard.token_ids[0] == moi.token_ids[0]
    for step in moi.steps:  # the weights shown are those of mixing.py on the returned top-k log-probs
        cands, weights, h = step_weights(step.topk_logprobs, step.topk_ids, step.token_id, moi.config)
        assert cands == step.candidate_ids and weights == pytest.approx(step.weights)
        assert h == pytest.approx(step.entropy) and sum(step.weights) == pytest.approx(1.0)
    assert all(s.weights is None for s in standard.steps)


def test_new_beta_applies_on_next_generate_without_restart(client, app):
    engine = app[1]
    started = engine.start_seconds
    client.predict(PROMPT, "MoI", 0.0, 20, 0.0, 1.0, 24, 0, api_name="/generate")
    _, zero = export(client)
    result = client.predict(PROMPT, "Direct mixture", 2.5, 5, 0.0, 1.0, 24, 0, api_name="/generate")
    _, direct = export(client)
    assert (zero.mode, zero.beta, zero.top_k) == ("moi", 0.0, 20)
    assert (direct.mode, direct.top_k) == ("direct", 5) and len(direct.steps[1].topk_ids) == 5
    assert result[1]["label"] == "Direct mixture (w = p)"
    assert zero.token_ids != direct.token_ids
    assert engine.start_seconds == started and engine.stats()["hooked"]


def test_select_step_returns_that_steps_figure_and_what_the_model_reads(client):
    client.predict(*ARGS, api_name="/generate")
    standard, moi = export(client)
    step_fig, token_fig, reads, inspection, _ = client.predict(3, "entropy", api_name="/select_step")
    fig = json.loads(step_fig["plot"])
    assert "step 3" in fig["layout"]["annotations"][0]["text"]
    std, mixed = inspection
    assert (std["lane"], mixed["lane"], std["step"], mixed["step"]) == ("standard", "moi", 3, 3)
    # The control: a standard lane reads back its sampled token's own embedding, the nearest token to itself.
    assert std["cos"] == pytest.approx([1.0] * len(standard.steps), abs=1e-5)
    assert std["nearest"][0]["id"] == standard.steps[3].token_id and std["nearest"][0]["cos"] == pytest.approx(1.0)
    assert len(std["nearest"]) == len(mixed["nearest"]) == 5
    sims = [n["cos"] for n in mixed["nearest"]]
    assert sims == sorted(sims, reverse=True) and min(sims) >= -1.0 and max(sims) <= 1.0 + 1e-6
    # MoI mixes where the model is unsure: its fed input leaves E[sampled] at some step, never by more than it mixed.
    assert len(mixed["cos"]) == len(moi.steps) and min(mixed["cos"]) < 0.999
    for c, step in zip(mixed["cos"], moi.steps, strict=True):
        assert c <= 1.0 + 1e-5 and (c > 0.9999 or step.sampled_weight < 0.9999)
    assert "after step 3" in reads and f"{mixed['cos_at_step']:.4f}" in reads and mixed["ms"] > 0


def test_stop_aborts_both_requests(client, app):
    engine = app[1]
    job = client.submit(
        "Write a very long story about a dragon and a knight.",
        "MoI",
        1.0,
        20,
        1.0,
        1.0,
        400,
        1,
        api_name="/generate",
    )
    deadline = time.time() + 60
    while engine.num_unfinished_requests() < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert engine.num_unfinished_requests() == 2
    assert client.predict(api_name="/stop").startswith("Stopped (2 requests aborted)")
    deadline = time.time() + 10
    while engine.num_unfinished_requests() and time.time() < deadline:
        time.sleep(0.05)
    assert engine.num_unfinished_requests() == 0
    job.result(timeout=30)
    standard, moi = export(client)
    assert len(standard.steps) < 400 and "abort" in (standard.finish_reason, moi.finish_reason)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("",) + ARGS[1:], "prompt: must not be empty"),
        (("word " * 2000,) + ARGS[1:], "prompt: is "),
        (ARGS[:2] + (4.5,) + ARGS[3:], "beta: must be "),
        (ARGS[:2] + (-1.0,) + ARGS[3:], "beta: must be "),
        (ARGS[:3] + (0,) + ARGS[4:], "top_k: must be "),
        (ARGS[:3] + (60,) + ARGS[4:], "top_k: must be "),
        (ARGS[:1] + ("Blend",) + ARGS[2:], "mode: must be one of MoI, Direct mixture"),
        (ARGS[:4] + (3.0,) + ARGS[5:], "temperature: must be "),
        (ARGS[:5] + (0.0,) + ARGS[6:], "top_p: must be "),
        (ARGS[:6] + (0,) + ARGS[7:], "max_new_tokens: must be "),
        (ARGS[:7] + (-3,) + ARGS[8:], "seed: must be "),
        # The public service's inputs: invalid Unicode, too many characters, NaN/inf and wrong types via the API.
        (("x" * 20_001,) + ARGS[1:], "prompt: must be at most 20000 characters; got 20001"),
        ((None,) + ARGS[1:], "prompt: must "),
        (ARGS[:2] + ("abc",) + ARGS[3:], "beta: must be "),
        (ARGS[:7] + ("abc",) + ARGS[8:], "seed: must be "),
        (ARGS[:7] + (1.5,) + ARGS[8:], "seed: must be "),
        (ARGS + ("vocab",), "entropy: must be one of top_k, full; got 'vocab'"),
        (ARGS + ("p",), "color_by: this endpoint no longer takes color_by"),  # the old arity: color_by 9th
        (ARGS + ("top_k", "tempered"), "prior: must be one of raw, processed; got 'tempered'"),
        (ARGS + ("top_k", "raw", 2.5), "noise: must be from 0 to 2; got 2.5"),
    ],
)
def test_bad_input_names_the_field_and_app_keeps_serving(client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message.replace("(", r"\(")):
        client.predict(*args, api_name="/generate")
    ok = client.predict(PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 4, 0, api_name="/generate")
    assert ok[-1].startswith("Done: 4 + 4 tokens")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('"Hello \\ud800 world", "MoI", 1.0', "prompt: must be valid Unicode text; character 6 is an unpaired"),
        ('"Hi", "MoI", NaN', "beta: must be "),
        ('"Hi", "MoI", Infinity', "beta: must be "),
        ('"Hi", "MoI", -Infinity', "beta: must be "),
    ],
)
def test_raw_api_inputs_name_the_field(app, data, message):
    """What gradio_client cannot even send (it encodes strictly): text that is not valid Unicode, NaN and
    infinities, as raw JSON over Gradio's REST API."""
    import httpx

    url = app[0]
    # every input, as a raw call must send them: ..., the seed, then the switches, the gate, tau, samples and the
    # page's event number
    body = ('{"data": [' + data + ', 20, 0.0, 1.0, 8, 0, "top_k", "raw", 0.0, "none", 0.5, 0.5, 3, 0]}').encode()
    with httpx.Client(timeout=60) as http:
        event = http.post(
            f"{url}gradio_api/call/generate", content=body, headers={"Content-Type": "application/json"}
        ).json()["event_id"]
        stream = http.get(f"{url}gradio_api/call/generate/{event}").text
    assert "event: error" in stream and message in stream, stream[-2000:]


def test_evaluate_tab_through_the_api(client):
    chart, summary, samples = client.predict(
        "arithmetic-1", 3, ["standard", "moi"], 1.0, 0.6, 0.8, 16, 0, api_name="/evaluate"
    )
    assert "| standard |" in summary and "| moi (beta=1) |" in summary
    assert len(Path(samples).read_text().splitlines()) == 6
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="n: must be "):
        client.predict("arithmetic-1", 80, ["standard"], 1.0, 0.6, 0.8, 16, 0, api_name="/evaluate")
    with pytest.raises(AppError, match="modes: choose one or more"):
        client.predict("arithmetic-1", 3, [], 1.0, 0.6, 0.8, 16, 0, api_name="/evaluate")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_stop_drops_a_queued_run_and_the_app_keeps_serving(app, client):
    """The queue full (every run slot taken by other sessions), a run waits; /stop from its own client drops
    it: it never starts, its job ends at once, and the app serves the next run. A compare first: every event of the
    runs' queue has run, and its slots are still max_concurrent_runs."""
    from gradio_client import Client

    url, engine = app
    client.predict(*ARGS[:6], 8, 0, step=0, api_name="/compare")
    others = [Client(url, verbose=False) for _ in range(engine.max_concurrent_runs)]
    busy = [
        c.submit("Write a very long story about a lighthouse.", "MoI", 1.0, 20, 1.0, 1.0, 300, i, api_name="/generate")
        for i, c in enumerate(others)
    ]
    try:
        _wait(
            lambda: client.predict(api_name="/health")["runs_in_flight"] == engine.max_concurrent_runs,
            120,
            "the run slots did not fill",
        )
        job = client.submit(PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 300, 0, api_name="/generate")
        _wait(lambda: client.predict(api_name="/health")["runs_queued"] >= 1, 30, "the run was not queued")
        assert client.predict(api_name="/stop") == "Stopped (0 requests aborted, 1 queued run dropped)."
        _wait(job.done, 10, "the dropped job did not end")
        assert client.predict(api_name="/health")["runs_queued"] == 0
    finally:
        for c in others:
            c.predict(api_name="/stop")
    for j in busy:
        j.result(timeout=60)
    _wait(lambda: engine.num_unfinished_requests() == 0, 30, "requests left on the engine")
    assert not any(o and o[0].get("value") for o in job.outputs() if isinstance(o, tuple | list))  # never ran
    ok = client.predict(PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 4, 0, api_name="/generate")
    assert ok[-1].startswith("Done: 4 + 4 tokens")


def test_stop_ends_a_running_evaluation(app, client):
    from gradio_client.exceptions import AppError

    engine = app[1]
    job = client.submit("arithmetic-1", 50, ["standard", "direct", "moi"], 1.0, 0.6, 0.8, 256, 0, api_name="/evaluate")
    _wait(lambda: engine.num_unfinished_requests() > 0, 60, "the evaluation did not start")
    assert client.predict(api_name="/stop").startswith("Stopped (150 requests aborted")
    with pytest.raises(AppError, match="Evaluation stopped"):
        job.result(timeout=30)
    _wait(lambda: engine.num_unfinished_requests() == 0, 10, "requests left on the engine")


def _export_all(client) -> list[Trace]:
    path = client.predict(api_name="/export")
    return [Trace.from_dict(t) for t in json.loads(Path(path).read_text())["lanes"]]


def test_sweep_lanes_match_the_same_betas_run_one_by_one(client, app):
    """/sweep: the standard lane and every beta in one batch, streamed; each lane equals that beta run alone
    (greedy, token for token), and Export holds every lane."""
    from gradio_client import Client

    job = client.submit(PROMPT, "0, 0.5, 2, direct", 20, 0.0, 1.0, 24, 0, api_name="/sweep")
    final = job.result(timeout=180)
    assert len(job.outputs()) >= 2  # streamed
    assert final[-1].startswith("Swept 4 lanes") and "Paris" in final[0]["value"]
    labels = [o["label"] for o in job.outputs()[0][1:5]]
    assert labels == [
        "Mixture of Inputs (beta = 0)",
        "Mixture of Inputs (beta = 0.5)",
        "Mixture of Inputs (beta = 2)",
        "Direct mixture (w = p)",
    ]
    standard, *swept = _export_all(client)
    assert standard.mode == "standard" and [(t.mode, t.beta) for t in swept] == [
        ("moi", 0.0),
        ("moi", 0.5),
        ("moi", 2.0),
        ("direct", 0.0),
    ]
    assert [t.text for t in swept] == [o["value"] if isinstance(o, dict) else o for o in final[1:5]]
    alone = Client(app[0], verbose=False)  # a fresh session: nothing to reuse
    for trace in swept:
        mode = "Direct mixture" if trace.mode == "direct" else "MoI"
        alone.predict(PROMPT, mode, trace.beta, 20, 0.0, 1.0, 24, 0, api_name="/generate")
        single_standard, single = export(alone)
        assert single.token_ids == trace.token_ids, (trace.mode, trace.beta)
        assert single_standard.token_ids == standard.token_ids


def test_live_beta_change_reruns_only_the_moi_lane_then_reuses_kept_lanes(client, app):
    engine = app[1]
    first = client.predict(PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 16, 0, api_name="/generate")
    assert "reused" not in first[-1]
    applied = engine.stats()["applied_steps"]
    changed = client.predict(PROMPT, "MoI", 0.0, 20, 0.0, 1.0, 16, 0, api_name="/live")
    assert changed[0]["label"] == "Standard (reused: same inputs)" and changed[0]["value"] == first[0]["value"]
    assert "standard lane reused" in changed[-1] and changed[1]["label"] == "Mixture of Inputs (beta = 0)"
    standard, moi = export(client)
    assert moi.beta == 0.0 and engine.stats()["applied_steps"] > applied
    # Back to beta 1, then a smaller top-k: beta 1 is shown from the session's lanes with no engine call; the
    # standard lane is reused (trimmed) for top-k 5, whose MoI lane runs.
    applied = engine.stats()["applied_steps"]
    back = client.predict(PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 16, 0, api_name="/live")
    assert "no engine call" in back[-1] and back[1]["value"] == first[1]["value"]
    assert engine.stats()["applied_steps"] == applied
    smaller = client.predict(PROMPT, "MoI", 1.0, 5, 0.0, 1.0, 16, 0, api_name="/live")
    assert "standard lane reused" in smaller[-1]
    standard5, moi5 = export(client)
    assert standard5.top_k == 5 and all(len(s.topk_ids) == 5 for s in standard5.steps)
    assert standard5.token_ids == standard.token_ids and moi5.top_k == 5
    # A new prompt: nothing is reused.
    job = client.submit("Name three colours.", "MoI", 1.0, 20, 0.0, 1.0, 8, 0, api_name="/live")
    other = job.result(timeout=120)
    assert "reused" not in other[-1] and other[0]["label"] == "Standard"
    assert job.outputs()[0][0]["label"] == "Standard"  # from the first streamed text on, not only at the end


def test_live_before_any_run_does_nothing(app):
    from gradio_client import Client

    fresh = Client(app[0], verbose=False)
    applied = app[1].stats()["applied_steps"]
    result = fresh.predict(PROMPT, "MoI", 0.5, 20, 0.0, 1.0, 8, 0, api_name="/live")
    # every output left as it was (an HTML output says so in its props)
    assert all(
        o.get("__type__") == "update" and "value" not in o and "value" not in o.get("props", {}) for o in result
    ), result
    assert app[1].stats()["applied_steps"] == applied


def test_a_newer_live_change_supersedes_the_older_run(client, app):
    engine = app[1]
    client.predict(PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 8, 0, api_name="/generate")
    long_prompt_args = (PROMPT, "MoI", 0.0, 20, 1.0, 1.0, 8, 0)  # temperature 1: a new standard key
    old = client.submit(*long_prompt_args[:6], 300, 0, api_name="/live")
    _wait(lambda: engine.num_unfinished_requests() >= 1, 60, "the older run did not start")
    new = client.predict(PROMPT, "MoI", 0.25, 20, 0.0, 1.0, 8, 0, api_name="/live")
    assert new[-1].startswith(("Done", "Shown"))
    old.result(timeout=60)
    _wait(lambda: engine.num_unfinished_requests() == 0, 30, "the older run was not aborted")
    _, moi = export(client)
    assert moi.beta == 0.25  # the page shows the newer run


@pytest.mark.parametrize(
    ("betas", "message"),
    [
        ("", "betas: must list at least one beta"),
        ("0, 1, 5", "betas: each beta must be from 0 to 4; got 5"),
        ("0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8", "betas: at most 8 lanes in one sweep; got 9"),
        ("0, one", "betas: each entry must be a beta from 0 to 4, `direct`, `gumbel` or `multiplex`"),
    ],
)
def test_bad_sweep_input_names_the_field(client, betas, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message.replace("(", r"\(")):
        client.predict(PROMPT, betas, 20, 0.0, 1.0, 8, 0, api_name="/sweep")


def test_an_export_carries_its_run_card_and_replays_lane_for_lane(client, app, tmp_path):
    """The page's export (a pair, then a live beta change: three lanes kept) says what produced it, and
    `moi-demo replay` re-runs it: every lane identical, exit 0; a recorded token changed is found at its step."""
    import subprocess
    import sys

    from moi_demo.evaluation.replay import load_export, replay
    from tests.vllm_util import ROOT

    seeded = (PROMPT, "MoI", 1.0, 20, 0.8, 0.9, 24, 7)  # sampled, seeded: replay must reproduce the draws
    client.predict(*seeded, api_name="/generate")
    client.predict(*seeded[:2], 0.25, *seeded[3:], api_name="/live")
    path = client.predict(api_name="/export")
    traces, card = load_export(path)
    assert [(t.mode, t.beta) for t in traces] == [("standard", 1.0), ("moi", 1.0), ("moi", 0.25)]
    assert card["model"] == app[1].model and card["dtype"] == "float32" and card["runner"] == "CPUModelRunner"
    assert card["vllm"] and card["torch"] and card["transformers"] and card["device"] and card["platform"]
    assert card["model_revision"].startswith("sha256:") and card["engine_options"]["max_model_len"] == 1024
    assert card["engine_kwargs"]["additional_config"] == {"moi": True}
    assert [r.identical for r in replay(app[1], traces)] == [True, True, True]
    traces[2].steps[5].token_id += 1  # a recorded token that the model did not sample
    assert [r.first_difference for r in replay(app[1], traces)] == [None, None, 5]
    out = subprocess.run(
        [sys.executable, "-m", "moi_demo.cli", "replay", path], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "same platform, device, versions and model as the run card" in out.stdout
    assert "3 of 3 lanes identical" in out.stdout and "Mixture of Inputs (beta = 0.25): identical" in out.stdout


def test_switches_through_the_api_show_what_the_plugin_fed_and_replay(client, app):
    """/generate with MoI's switches (full entropy, processed prior, noise 0.5; sampled, seeded): the MoI lane's
    label names them; the export holds them, and per step the plugin's own weights and H (its records, which no
    returned log-prob can rebuild): the weights sum to 1, the prior shown is the processed one (top-p 0.7 leaves
    candidates out: p = 0 there), H is the whole vocabulary's (not the top-k one). /live with the noise off reruns
    the MoI lane alone; the export replays lane for lane."""
    from moi_demo.evaluation.replay import load_export, replay

    args = (PROMPT, "MoI", 1.0, 10, 0.8, 0.7, 16, 5, "full", "processed", 0.5)
    final = client.predict(*args, api_name="/generate")
    assert final[1]["label"] == "Mixture of Inputs (beta = 1) · H over V, processed prior, noise 0.5"
    standard, moi = export(client)
    assert (moi.entropy, moi.prior, moi.noise) == ("full", "processed", 0.5)
    assert (standard.entropy, standard.prior, standard.noise) == ("top_k", "raw", 0.0)
    top_k_h = []
    for step in moi.steps:
        assert sum(step.weights) == pytest.approx(1.0, abs=1e-5) and len(step.mixed_prior) == 10
        assert sum(step.mixed_prior) == pytest.approx(1.0, abs=1e-4)
        top_k_h.append(step_weights(step.topk_logprobs, step.topk_ids, step.token_id, moi.config)[2])
    assert any(abs(s.entropy - h) > 1e-3 for s, h in zip(moi.steps, top_k_h, strict=True))
    assert any(min(s.mixed_prior) == 0.0 for s in moi.steps)
    off = client.predict(*args[:-1], 0.0, api_name="/live")
    assert off[1]["label"] == "Mixture of Inputs (beta = 1) · H over V, processed prior" and "reused" in off[-1]
    traces, _ = load_export(client.predict(api_name="/export"))
    assert [(t.mode, t.noise) for t in traces] == [("standard", 0.0), ("moi", 0.5), ("moi", 0.0)]
    assert [r.identical for r in replay(app[1], traces)] == [True, True, True]


def test_rival_modes_and_gates_through_the_api_export_and_replay_identical(client, app):
    """/generate with Gumbel soft thinking under a high gate, then /live with Multiplex under a low gate (sampled,
    seeded): the labels name them, the export holds every new key (moi_mode, moi_tau, moi_samples, moi_gate,
    moi_gate_h), and each lane replays token for token on the engine."""
    from moi_demo.evaluation.replay import load_export, replay

    run = dict(prompt=PROMPT, beta=1.0, top_k=8, temperature=0.9, top_p=0.95, max_tokens=14, seed=11)
    final = client.predict(**run, mode="Gumbel soft thinking", tau=0.7, gate="high", gate_h=0.3, api_name="/generate")
    assert final[1]["label"] == "Gumbel soft thinking (tau = 0.7) · mixes where H >= 0.3"
    live = client.predict(**run, mode="Multiplex", samples=4, gate="low", gate_h=0.6, api_name="/live")
    assert live[1]["label"] == "Multiplex (4 samples) · mixes where H <= 0.6"
    traces, _ = load_export(client.predict(api_name="/export"))
    got = [(t.mode, t.tau, t.samples, t.gate, t.gate_h) for t in traces]
    assert got == [
        ("standard", 0.5, 3, "none", 0.5),
        ("gumbel", 0.7, 3, "high", 0.3),
        ("multiplex", 0.5, 4, "low", 0.6),
    ]
    assert [r.identical for r in replay(app[1], traces)] == [True, True, True]


def test_compare_through_the_api_returns_each_steps_kl_on_the_standard_tokens(client):
    """/compare (the run's inputs, then the step to show): the MoI lane decoded the standard lane's tokens; per step
    KL(standard || MoI) >= 0 and the top-k overlap in [0, 1], as JSON beside the chart and the step's two top-k."""
    _, panel, summary = client.predict(*ARGS[:6], 24, 0, step=2, api_name="/compare")
    assert len(summary["kl"]) == len(summary["overlap"]) == len(summary["tokens"]) >= 5  # to the standard's end
    assert all(k >= 0 for k in summary["kl"]) and all(0 <= o <= 1 for o in summary["overlap"])
    assert max(summary["kl"]) > 0 and summary["label"] == "Mixture of Inputs (beta = 1)"
    assert "data-step='2'" in panel
