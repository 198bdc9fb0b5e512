"""Preemption with recompute and chunked prefill: a tiny KV cache and a 32-token batch budget force both.
Mixed inputs must survive a recompute (the plugin keeps each request's mixed-embedding history)."""

from __future__ import annotations

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from moi_demo.evaluation.reference import ReferenceDecoder
from tests.vllm_util import close_llm, make_llm, params

pytestmark = pytest.mark.engine
CASES = [MoIConfig("moi", 0.5, 5), MoIConfig("moi", 2.0, 20), MoIConfig("direct", 1.0, 5), MoIConfig("standard")]
STEPS = 48


@pytest.fixture(scope="module")
def small_llm(tiny_models):
    # 6 blocks of 32 tokens for 4 requests of 40 + 48 tokens each: the scheduler must preempt.
    engine = make_llm(
        tiny_models["llama"],
        max_model_len=128,
        num_gpu_blocks_override=6,
        max_num_seqs=4,
        max_num_batched_tokens=32,
        enable_prefix_caching=False,
    )
    yield engine
    close_llm(engine)


def test_preemption_and_chunked_prefill_keep_the_mixed_inputs(small_llm, tiny_models):
    oracle = ReferenceDecoder(tiny_models["llama"])
    base = oracle.tokenizer("Once upon a time there was a small model that")["input_ids"]
    prompts = [(base * 5)[i : i + 40] for i in range(4)]  # 40 tokens each: prefill takes two chunks
    before = small_llm.collective_rpc("moi_stats")[0]
    outs = small_llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        [params(STEPS, moi_mode=c.mode, moi_beta=c.beta, moi_top_k=c.top_k) for c in CASES],
    )
    after = small_llm.collective_rpc("moi_stats")[0]
    assert after["recomputed_steps"] > before["recomputed_steps"], "no MoI request was preempted and recomputed"
    for prompt, cfg, out in zip(prompts, CASES, outs, strict=True):
        expected = oracle.generate(prompt, cfg, SamplingSettings(max_tokens=STEPS), chat=False).token_ids
        assert list(out.outputs[0].token_ids) == expected, cfg
    assert after["applied_steps"] - before["applied_steps"] == 3 * (STEPS - 1)
