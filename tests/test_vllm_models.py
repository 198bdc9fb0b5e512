"""The oracle on more models: a tiny gemma3 (embeddings scaled by sqrt(hidden) inside the model's own
embedding function, so the mixture must be of the scaled embeddings) and the embedded default model."""

from __future__ import annotations

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from moi_demo.evaluation.reference import ReferenceDecoder
from tests.vllm_util import close_llm, make_llm, params

pytestmark = pytest.mark.engine
STEPS = 32
CASES = [MoIConfig("moi", 0.5, 5), MoIConfig("moi", 2.0, 20), MoIConfig("direct", 1.0, 5), MoIConfig("standard")]
PROMPTS = ["What is the capital of France?", "Write a haiku about autumn."]
DIRECT_STEPS = 24


@pytest.fixture(scope="module", params=["gemma3", "default"])
def engines(request, tiny_models, default_model):
    path = default_model if request.param == "default" else tiny_models[request.param]
    llm = make_llm(path, max_model_len=256)
    yield request.param, llm, ReferenceDecoder(path)
    close_llm(llm)


def test_oracle(engines):
    name, llm, oracle = engines
    jobs = [(oracle.prompt_ids(p), cfg) for p in PROMPTS for cfg in CASES]
    outs = llm.generate(
        [{"prompt_token_ids": ids} for ids, _ in jobs],
        [params(STEPS, moi_mode=c.mode, moi_beta=c.beta, moi_top_k=c.top_k) for _, c in jobs],
    )
    got = {(tuple(ids), cfg): list(o.outputs[0].token_ids) for (ids, cfg), o in zip(jobs, outs, strict=True)}
    for (ids, cfg), tokens in got.items():
        expected = oracle.generate(list(ids), cfg, SamplingSettings(max_tokens=STEPS), chat=False)
        want = expected.token_ids[:STEPS]
        if expected.finish_reason == "stop":  # the reference stops at EOS; vLLM was told to ignore it
            tokens = tokens[: len(want)]
        if name == "default" and cfg.mode == "direct":
            # Direct mixture on the default model falls into a newline loop where the mixed inputs' float32 sums,
            # in vLLM's order and in the reference's, drift apart (as the outside check of issue 18 saw from step
            # 10 on); here it parts at step 28, with a top-2 gap of 0.86 nats, at b46cd44 as now. The first
            # DIRECT_STEPS tokens must still agree.
            tokens, want = tokens[:DIRECT_STEPS], want[:DIRECT_STEPS]
        assert tokens == want, (name, cfg)
    # mixing must matter on these models: some MoI/direct lane differs from its standard lane
    differs = [got[(ids, cfg)] != got[(ids, CASES[-1])] for ids, cfg in got if cfg.mixes]
    assert any(differs), name
