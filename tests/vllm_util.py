"""Helpers for tests that run real vLLM engines (offline LLM, subprocess engines)."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from moi_demo.stock import PLUGINS_WITHOUT_MOI  # noqa: F401 - the allowlist without "moi", for the tests

ROOT = Path(__file__).resolve().parents[1]
KV_BYTES = 256 << 20
BLOCK = 32  # CPU attention needs a multiple of 32


def make_llm(model: str, **kwargs: Any):
    from vllm import LLM

    defaults = dict(dtype="float32", enforce_eager=True, max_model_len=512, seed=0, kv_cache_memory_bytes=KV_BYTES,
                    max_logprobs=50, block_size=BLOCK)
    return LLM(model=model, **{**defaults, **kwargs})


def close_llm(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def params(max_tokens: int = 32, logprobs: int | None = None, **extra: Any):
    """Greedy SamplingParams with MoI keys in extra_args (none: a standard request)."""
    from vllm import SamplingParams

    n = extra.pop("n", 1)
    temperature = extra.pop("temperature", 0.0)
    seed = extra.pop("seed", None)
    return SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True, logprobs=logprobs,
                          n=n, seed=seed, extra_args=extra or None)


def run_engine_subprocess(job: dict[str, Any], env: dict[str, str], with_stats: bool = False) -> Any:
    """Run tests/engine_job.py in a fresh process (its own plugin set and environment): its token ids, and
    with `with_stats` also the workers' moi_stats."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "engine_job.py"), json.dumps({**job, "stats": with_stats})],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-4000:]
    tokens = json.loads(lines[-1][len("RESULT "):])
    if not with_stats:
        return tokens
    stats = [ln for ln in out.stdout.splitlines() if ln.startswith("STATS ")]
    return tokens, json.loads(stats[-1][len("STATS "):])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
