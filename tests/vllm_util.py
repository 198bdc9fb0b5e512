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

from moi_demo.serving.settings import KV_BLOCK_TOKENS
from moi_demo.serving.stock import PLUGINS_WITHOUT_MOI  # noqa: F401 - the allowlist without "moi", for the tests

ROOT = Path(__file__).resolve().parents[1]
KV_BYTES = 256 << 20
BLOCK = KV_BLOCK_TOKENS  # CPU attention needs a multiple of 32


def make_llm(model: str, **kwargs: Any):
    from vllm import LLM

    from moi_demo.serving.settings import engine_kwargs

    kv = kwargs.pop("kv_cache_memory_bytes", KV_BYTES)
    return LLM(
        **engine_kwargs(
            model,
            cpu=True,
            kv_cache_memory_bytes=kv,
            **{"enforce_eager": True, "max_model_len": 512, "max_logprobs": 50, **kwargs},
        )
    )


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
    top_p = extra.pop("top_p", 1.0)
    return SamplingParams(
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        ignore_eos=True,
        logprobs=logprobs,
        n=n,
        seed=seed,
        extra_args=extra or None,
    )


def run_engine_subprocess(
    job: dict[str, Any], env: dict[str, str], with_stats: bool = False, full: bool = False
) -> Any:
    """Run tests/engine_job.py in a fresh process (its own plugin set and environment): its token ids, and
    with `with_stats` also the workers' moi_stats; with `full` a dict of every line it printed (tokens, stats,
    config, probe)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "engine_job.py"), json.dumps({**job, "stats": with_stats or full})],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    found: dict[str, str] = {}
    for ln in out.stdout.splitlines():
        head, _, rest = ln.partition(" ")
        if head in ("RESULT", "STATS", "CONFIG", "PROBE", "REFUSED"):
            found[head] = rest
    assert out.returncode == 0 and "RESULT" in found, out.stderr[-4000:] + out.stdout[-2000:]
    tokens = json.loads(found["RESULT"])
    if full:
        return {
            "tokens": tokens,
            "stats": json.loads(found["STATS"]),
            "config": json.loads(found["CONFIG"]),
            "probe": found.get("PROBE"),
        }
    if not with_stats:
        return tokens
    return tokens, json.loads(found["STATS"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lm_eval_samples(args: list[str], out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the `lm_eval` command (from the repository root, with the local tasks of tests/data/lm_eval) in its own
    process group, ended whole afterwards (an engine core and its workers included). Returns each task's
    outputs in document order, the prompts of the last task, and the log."""
    import contextlib
    import signal

    cmd = [
        os.path.join(os.path.dirname(sys.executable), "lm_eval"),
        *args,
        "--include_path",
        "tests/data/lm_eval",
        "--log_samples",
        "--output_path",
        str(out),
    ]
    full_env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    if "MIXINPUTS_BETA" not in (env or {}):
        full_env.pop("MIXINPUTS_BETA", None)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-4000:]
    result: dict[str, Any] = {"log": log}
    for samples in sorted(out.rglob("samples_*.jsonl")):
        task = samples.name[len("samples_") :].rsplit("_", 1)[0]
        rows = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["doc_id"])
        result[task] = [r["resps"][0][0] for r in rows]
        result["prompts"] = [r["arguments"]["gen_args_0"]["arg_0"] for r in rows]
    return result
