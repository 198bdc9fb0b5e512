"""Sizing a batch engine (eval, sweep) from the job count, the sequence length and memory: pure arithmetic,
no engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moi_demo.serving.settings import (
    COMPILE_MIN_JOBS,
    CPU_KV_SHARE,
    KV_BLOCK_TOKENS,
    MAX_BATCH_SEQS,
    MIN_KV_BYTES,
    EngineOptions,
    kv_bytes_per_token,
    throughput_options,
)

GIB = 1 << 30
# SmolLM2-135M: 30 layers, 3 KV heads of 64: float32 K and V are 2 * 30 * 3 * 64 * 4 = 46,080 bytes per token.
SMOL = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_size=576)


def test_kv_bytes_per_token_counts_k_and_v_of_every_kv_head():
    assert kv_bytes_per_token(SMOL, 4) == 46_080
    assert kv_bytes_per_token(SMOL, 2) == 23_040
    no_gqa = SimpleNamespace(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=None, head_dim=None, hidden_size=256
    )  # heads of 256 / 4 = 64, as many KV heads as heads
    assert kv_bytes_per_token(no_gqa, 4) == 2 * 2 * 4 * 64 * 4


def test_text_config_of_a_multimodal_model_is_used():
    outer = SimpleNamespace(get_text_config=lambda: SMOL)
    assert kv_bytes_per_token(outer, 4) == 46_080


def test_cpu_every_job_at_once_when_memory_allows():
    o = throughput_options(jobs=300, seq_tokens=51 + 128, kv_per_token=46_080, on_cpu=True, memory_available=20 * GIB)
    assert o.max_num_seqs == MAX_BATCH_SEQS  # 300 jobs, capped at 256
    per_seq = (-(-179 // KV_BLOCK_TOKENS) + 1) * KV_BLOCK_TOKENS * 46_080  # 7 blocks of 32 tokens
    assert per_seq == 224 * 46_080
    assert o.kv_cache_memory_bytes == 256 * per_seq
    assert not o.enforce_eager and o.cpu_threads_bind  # compiled, on every core


def test_cpu_sequences_limited_by_memory():
    per_seq = 224 * 46_080
    o = throughput_options(jobs=300, seq_tokens=179, kv_per_token=46_080, on_cpu=True, memory_available=1 * GIB)
    assert o.max_num_seqs == int(GIB * CPU_KV_SHARE) // per_seq == 41
    assert o.kv_cache_memory_bytes == 41 * per_seq <= GIB * CPU_KV_SHARE


def test_small_job_is_eager_and_holds_one_max_model_len_sequence():
    o = throughput_options(
        jobs=2, seq_tokens=40, kv_per_token=46_080, on_cpu=True, memory_available=8 * GIB, max_model_len=2048
    )
    assert o.max_num_seqs == 2 and o.enforce_eager and COMPILE_MIN_JOBS > 2
    assert o.kv_cache_memory_bytes == (2048 // KV_BLOCK_TOKENS + 1) * KV_BLOCK_TOKENS * 46_080  # not 2 x 3 blocks
    tiny = throughput_options(jobs=2, seq_tokens=40, kv_per_token=1024, on_cpu=True, memory_available=8 * GIB)
    assert tiny.kv_cache_memory_bytes == MIN_KV_BYTES
    assert throughput_options(2, 40, 1024, True, 8 * GIB, enforce_eager=False).enforce_eager is False


@pytest.mark.parametrize("jobs", [1, 100, 5000])
def test_gpu_leaves_the_kv_cache_to_vllm(jobs):
    o = throughput_options(jobs=jobs, seq_tokens=32_768, kv_per_token=262_144, on_cpu=False, memory_available=GIB)
    assert o.kv_cache_memory_bytes is None and o.cpu_threads_bind is None
    assert o.max_num_seqs == min(jobs, MAX_BATCH_SEQS)


def test_app_options_keep_vllms_core_choice_and_pass_their_limits_to_vllm(monkeypatch):
    """The app's engine (EngineOptions as the app makes it) binds no cores itself (vLLM keeps one for its engine core
    process) and hands vLLM its sequence cap, float32 on a CPU and whole prompts (no chunked prefill)."""
    from moi_demo.serving import settings

    monkeypatch.setattr(settings, "is_cpu", lambda: True)
    kwargs = EngineOptions(max_num_seqs=12).engine_kwargs("some/model")
    assert "cpu_threads_bind" not in kwargs and not any("threads" in k for k in kwargs)
    assert kwargs["max_num_seqs"] == 12 and kwargs["enable_chunked_prefill"] is False and kwargs["dtype"] == "float32"
    assert EngineOptions(cpu_threads_bind="0,1").cpu_threads_bind == "0,1"  # only where a caller asks


def test_a_sequence_cap_does_not_change_the_compile_choice():
    o = throughput_options(
        jobs=300, seq_tokens=179, kv_per_token=46_080, on_cpu=True, memory_available=20 * GIB, max_seqs=16
    )
    assert o.max_num_seqs == 16 and not o.enforce_eager  # 300 jobs: compiled, 16 at a time
