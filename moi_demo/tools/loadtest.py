"""`moi-demo bench --load`: the app as a public service under load, through the real Gradio server.

N concurrent gradio_client sessions (default 32) send greedy runs, with Stops and bad inputs mixed in. Reported:
runs/s against what the engine alone does with the same runs, p50/p95 time to first token and to completion,
errors by kind, every greedy output checked against the same request run alone, peak memory of all processes,
and memory after `requests` runs against after the first 10% (a leak shows as growth).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Count from one to five.",
    "What is two plus two?",
    "Say hello in Spanish.",
    "Name a large animal.",
    "What is water made of?",
    "Give me a synonym for happy.",
]


@dataclass
class LoadSettings:
    clients: int = 32
    requests: int = 500
    tokens: int = 24
    stop_every: int = 8  # every 8th run of a client is stopped after its first token
    bad_every: int = 10  # every 10th is a bad input (must be refused, naming the field)


@dataclass
class LoadResult:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    mismatches: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rss_all() -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _args(prompt: str, tokens: int) -> tuple:
    return (prompt, "MoI", 1.0, 20, 0.0, 1.0, tokens, 0)


def run_load(url: str, engine: Any, s: LoadSettings) -> str:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from moi_demo.core.config import MoIConfig
    from moi_demo.core.trace import SamplingSettings

    # The same requests alone, once: the expected outputs, and the engine's own pace for the same work.
    expected = {}
    for p in PROMPTS:
        standard, moi = engine.generate_pair_sync(p, MoIConfig(), SamplingSettings(max_tokens=s.tokens))
        expected[p] = (standard.text, moi.text)
    runs_engine = _engine_rate(engine, s)

    result = LoadResult()
    counter = iter(range(10**9))
    rss_marks: dict[str, int] = {}
    peak = [0]
    stop_sampling = threading.Event()

    def sample_memory() -> None:
        while not stop_sampling.is_set():
            peak[0] = max(peak[0], _rss_all())
            time.sleep(0.2)

    def client_loop(index: int) -> None:
        client = Client(url, verbose=False)
        rng = random.Random(index)
        while True:
            with result.lock:
                n = next(counter)
            if n >= s.requests:
                return
            prompt = rng.choice(PROMPTS)
            kind = "bad" if n % s.bad_every == s.bad_every - 1 else "stop" if n % s.stop_every == 3 else "run"
            start = time.perf_counter()
            first = None
            try:
                if kind == "bad":
                    try:
                        client.predict(prompt, "MoI", 9.0, 20, 0.0, 1.0, s.tokens, 0, api_name="/generate")
                        outcome = "bad input accepted"
                    except AppError as e:
                        outcome = None if "beta: must be" in str(e) else f"unnamed error: {str(e)[:60]}"
                else:
                    job = client.submit(*_args(prompt, s.tokens), api_name="/generate")
                    while not job.done():
                        outs = job.outputs()
                        if first is None and outs and isinstance(outs[-1], (list, tuple)) and outs[-1][0].get("value"):
                            first = time.perf_counter() - start
                            if kind == "stop":
                                client.predict(api_name="/stop")
                        time.sleep(0.005)
                    final = job.result(timeout=120)
                    outcome = None
                    if kind == "run" and (final[0]["value"], final[1]["value"]) != expected[prompt]:
                        outcome = "output differs from the same request alone"
            except Exception as e:  # counted by kind, the load goes on
                outcome = f"{type(e).__name__}: {str(e)[:60]}"
            elapsed = time.perf_counter() - start
            with result.lock:
                result.kinds[kind] += 1
                result.done += 1
                if outcome:
                    result.errors[outcome] += 1
                    result.mismatches += outcome.startswith("output differs")
                elif kind == "run":
                    result.total.append(elapsed)
                    if first is not None:
                        result.ttft.append(first)
                if result.done == max(1, s.requests // 10):
                    rss_marks["early"] = _rss_all()

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(s.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss_marks["end"] = _rss_all()
    stop_sampling.set()
    sampler.join()

    def pct(values: list[float], q: float) -> str:
        if not values:
            return "-"
        values = sorted(values)
        return f"{values[min(len(values) - 1, int(q * len(values)))]:.2f} s"

    runs = result.kinds["run"] + result.kinds["stop"]
    growth = rss_marks["end"] / rss_marks.get("early", rss_marks["end"]) - 1
    lines = [
        f"### Load: {s.clients} concurrent gradio_client sessions, {s.requests} requests of {s.tokens} tokens "
        f"per lane (greedy; every {s.stop_every}th stopped after its first token, every {s.bad_every}th a bad "
        "input)",
        "| measure | value |",
        "|---|---|",
        f"| runs/s through the app (runs and stopped runs) | {runs / wall:.2f} |",
        f"| runs/s of the engine alone, same runs, as concurrent | {runs_engine:.2f} |",
        f"| app / engine | {runs / wall / runs_engine:.2f} |",
        f"| time to first token, p50 / p95 | {pct(result.ttft, 0.5)} / {pct(result.ttft, 0.95)} |",
        f"| time to completion, p50 / p95 | {pct(result.total, 0.5)} / {pct(result.total, 0.95)} |",
        f"| requests by kind | {dict(result.kinds)} |",
        f"| errors by kind (bad inputs refused by name are not errors) | {dict(result.errors) or 'none'} |",
        f"| greedy outputs different from the same request alone | {result.mismatches} |",
        f"| peak RSS of all processes | {peak[0] / 2**30:.2f} GiB |",
        f"| RSS after {s.requests} requests vs after {max(1, s.requests // 10)} | {growth * 100:+.1f}% |",
        f"| wall time | {wall:.1f} s |",
    ]
    return "\n".join(lines)


def _engine_rate(engine: Any, s: LoadSettings) -> float:
    """Runs/s of the engine alone: the same pair runs from as many threads as the app admits at once."""
    from moi_demo.core.config import MoIConfig
    from moi_demo.core.trace import SamplingSettings

    n = min(s.requests, 4 * engine.max_concurrent_runs)
    todo = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            engine.generate_pair_sync(PROMPTS[i % len(PROMPTS)], MoIConfig(), SamplingSettings(max_tokens=s.tokens))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(engine.max_concurrent_runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


def main(model: str | None, s: LoadSettings) -> str:
    from moi_demo.app.layout import build_demo
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.models import resolve_model
    from moi_demo.serving.settings import EngineOptions

    engine = MoIEngine(resolve_model(model), EngineOptions(max_model_len=1024, kv_cache_memory_bytes=1 << 30)).start()
    demo = build_demo(engine, max_new_tokens=max(64, s.tokens))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        return run_load(demo.local_url, engine, s)
    finally:
        demo.close()
        engine.shutdown()
