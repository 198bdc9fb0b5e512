"""MoI under a user's plain engine (default arguments: torch.compile) and under tensor parallelism."""

from __future__ import annotations

import os

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from moi_demo.evaluation.reference import ReferenceDecoder
from tests.vllm_util import KV_BYTES, close_llm, make_llm, params

pytestmark = pytest.mark.engine
STEPS = 24
CASES = [MoIConfig("moi", 0.5, 5), MoIConfig("moi", 2.0, 20), MoIConfig("direct", 1.0, 5), MoIConfig("standard")]


def run_cases(llm, oracle):
    ids = oracle.tokenizer("Once upon a time")["input_ids"]
    outs = llm.generate(
        [{"prompt_token_ids": ids}] * len(CASES),
        [params(STEPS, moi_mode=c.mode, moi_beta=c.beta, moi_top_k=c.top_k) for c in CASES],
    )
    return ids, [list(o.outputs[0].token_ids) for o in outs]


def test_default_engine_arguments_compiled(tiny_models):
    """`LLM(model=..., additional_config={"moi": True})`, otherwise vLLM's defaults (compiled graph): the plugin
    switches the model to take input embeddings at engine start, so MoI requests are served correctly instead of
    crashing the graph."""
    from vllm import LLM

    from moi_demo.serving.settings import engine_kwargs

    llm = LLM(**engine_kwargs(tiny_models["llama"], cpu=True, kv_cache_memory_bytes=KV_BYTES))  # compiled
    try:
        config = llm.llm_engine.vllm_config
        assert config.model_config.enforce_eager is False and config.compilation_config.mode != 0
        oracle = ReferenceDecoder(tiny_models["llama"])
        ids, got = run_cases(llm, oracle)
        for cfg, tokens in zip(CASES, got, strict=True):
            assert tokens == oracle.generate(ids, cfg, SamplingSettings(max_tokens=STEPS), chat=False).token_ids
        assert llm.collective_rpc("moi_stats")[0]["applied_steps"] == 3 * (STEPS - 1)
    finally:
        close_llm(llm)


@pytest.fixture
def two_cpu_ranks():
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # one core per rank
    yield
    if saved is None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved


def test_tensor_parallel_2_equals_tp1(tiny_models, two_cpu_ranks):
    """Every rank computes the same weights from the same (all-gathered) logits and sampled ids, mixes its own shard
    of the embeddings and all-reduces the mixed [M, D]: MoI tokens at TP=2 equal those at TP=1 (the oracle)."""
    llm = make_llm(tiny_models["llama"], tensor_parallel_size=2)
    try:
        oracle = ReferenceDecoder(tiny_models["llama"])
        ids, got = run_cases(llm, oracle)
        for cfg, tokens in zip(CASES, got, strict=True):
            assert tokens == oracle.generate(ids, cfg, SamplingSettings(max_tokens=STEPS), chat=False).token_ids
        stats = llm.collective_rpc("moi_stats")
        assert len(stats) == 2 and all(s["applied_steps"] == 3 * (STEPS - 1) for s in stats)
        # Each rank mixed its shard of the embeddings; the last step's all-reduce carried [M, D] (hidden 64, M <= 3
        # MoI rows still running), not [M, K + 1, D] (K + 1 >= 6: at least 384 elements for one row).
        reduced = [s["mix_all_reduce_numel"] for s in stats]
        assert reduced[0] == reduced[1] and reduced[0] in (64, 128, 192), reduced
    finally:
        close_llm(llm)
