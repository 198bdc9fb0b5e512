"""What the benchmarks measure with: a row of paired ratios and its table, a process's peak memory, and timings of
an engine, a decoder and the app (`moi-demo bench`, tools/benchmark.py). No timing is asserted in the tests."""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings

PROMPT = "Write a short story about a lighthouse keeper."
MOI = MoIConfig("moi", 1.0, 20)
STANDARD = MoIConfig("standard")


@dataclass
class Row:
    name: str
    a: str
    b: str
    ratios: list[float] = field(default_factory=list)
    a_values: list[float] = field(default_factory=list)
    b_values: list[float] = field(default_factory=list)
    unit: str = ""
    target: str = ""

    def cells(self) -> list[str]:
        med = statistics.median(self.ratios)
        return [
            self.name,
            f"{statistics.median(self.a_values):.4g} {self.unit}",
            f"{statistics.median(self.b_values):.4g} {self.unit}",
            f"{med:.3f}",
            f"{min(self.ratios):.3f}-{max(self.ratios):.3f}",
            self.target,
        ]


def render(rows: Sequence[Row], header: str) -> str:
    head = ["comparison (ratio = A / B)", "A (median)", "B (median)", "ratio", "min-max", "target"]
    table = [head] + [r.cells() for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = [
        header,
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in table[1:]]
    return "\n".join(lines)


def paired(row: Row, repeats: int, a: Callable[[], float], b: Callable[[], float], invert: bool = False) -> Row:
    """Run a and b alternately `repeats` times; ratio = a/b (or b/a with invert, for times)."""
    for _ in range(repeats):
        x, y = a(), b()
        row.a_values.append(x)
        row.b_values.append(y)
        row.ratios.append(y / x if invert else x / y)
    return row


class PeakRSS:
    """Peak resident memory of this process and all its children (the engine processes), sampled."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a process that just exited
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- measurements ---------------------------------------------------------------------------------------


def offline_tps(llm: Any, ids: list[int], batch: int, tokens: int, cfg: MoIConfig | None) -> float:
    """Decode tokens/s of `batch` requests of `tokens` tokens each, in one generate call."""
    from vllm import SamplingParams

    extra = cfg.extra_args() if cfg else None  # the switches too, where cfg has them
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, extra_args=extra)
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": ids}] * batch, [params] * batch, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def reference_tps(decoder: Any, ids: list[int], batch: int, tokens: int) -> float:
    """The reference decoder has no batching: `batch` requests one after another."""
    start = time.perf_counter()
    n = 0
    for _ in range(batch):
        n += len(decoder.generate(ids, MOI, SamplingSettings(max_tokens=tokens), chat=False).steps)
    return n / (time.perf_counter() - start)


def lanes_time(engine: Any, prompt: str, tokens: int, configs: list[MoIConfig]) -> float:
    """Wall time until every lane (submitted together, each on its engine) has finished `tokens` tokens: both
    lanes of a pair, the standard lane alone, or a sweep."""
    settings = SamplingSettings(max_tokens=tokens, seed=0)
    ids = engine.prompt_ids(prompt, tokens)
    names = ["moi" if c.mixes else "standard" for c in configs]
    lanes = [(name, engine.engine_for(name), c) for name, c in zip(names, configs, strict=True)]
    start = time.perf_counter()
    for _ in engine._stream_lanes(lanes, ids, settings, prompt, ignore_eos=True):
        pass
    return time.perf_counter() - start


def first_token_time(engine: Any, prompt: str) -> float:
    """The engine's own time from request to the first streamed token of both lanes."""
    start = time.perf_counter()
    for standard, moi in engine.stream_pair(prompt, MOI, SamplingSettings(max_tokens=4)):
        if standard.steps and moi.steps:
            return time.perf_counter() - start
    return time.perf_counter() - start


def app_first_token_time(client: Any, prompt: str) -> float:
    """Through gradio_client: time from submitting Generate to the first update carrying text in both lanes."""
    start = time.perf_counter()
    job = client.submit(prompt, "MoI", 1.0, 20, 0.0, 1.0, 4, 0, api_name="/generate")
    while not job.done() or job.outputs():
        outs = job.outputs()
        if any(o[0].get("value") and o[1].get("value") for o in outs if isinstance(o[0], dict)):
            elapsed = time.perf_counter() - start
            job.result()
            return elapsed
        time.sleep(0.001)
        if job.done() and not outs:
            break
    return time.perf_counter() - start


# --- the run ------------------------------------------------------------------------------------------------


def app_overhead(engine: Any, repeats: int) -> Row:
    from gradio_client import Client

    from moi_demo.app.layout import build_demo

    demo = build_demo(engine, max_new_tokens=64)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        app_first_token_time(client, PROMPT)  # warm-up
        row = Row(
            "f. time to first token, through the app vs engine alone",
            "app",
            "engine",
            unit="s",
            target="app - engine <= 0.05 s",
        )
        paired(row, repeats, lambda: app_first_token_time(client, PROMPT), lambda: first_token_time(engine, PROMPT))
        overhead = [a - b for a, b in zip(row.a_values, row.b_values, strict=True)]
        floor = gradio_floor(repeats)
        row.target += (
            f" (measured {statistics.median(overhead) * 1000:.0f} ms; a trivial Gradio generator "
            f"alone: {floor * 1000:.0f} ms)"
        )
        return row
    finally:
        demo.close()


def gradio_floor(repeats: int) -> float:
    """Gradio's own floor: time to the first output of a generator that yields at once, via gradio_client."""
    import gradio as gr
    from gradio_client import Client

    def echo(text: str):
        yield text

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        box.submit(echo, box, out, api_name="echo")
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            job = client.submit("x", api_name="/echo")
            while not job.outputs():
                time.sleep(0.001)
            times.append(time.perf_counter() - start)
            job.result()
        return statistics.median(times[1:])
    finally:
        demo.close()
