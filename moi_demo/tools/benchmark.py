"""Benchmarks: what MoI costs and how side-by-side is best served. Prints tables of ratios measured in one run.

`moi-demo bench` (or `python bench/run.py`). Every comparison is measured pair by pair, interleaved (A, B, A,
B, ...) so that drift on a shared machine hits both sides; each row gives the median ratio and its min-max
over the repeats. No timing is asserted anywhere in the tests: a smoke test runs this with tiny settings.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from moi_demo.serving.settings import engine_kwargs
from moi_demo.tools.measure import (
    MOI,
    PROMPT,
    STANDARD,
    PeakRSS,
    Row,
    app_overhead,
    lanes_time,
    offline_tps,
    paired,
    reference_tps,
    render,
)
from moi_demo.vllm.enablement import enable_kwargs

logger = logging.getLogger("moi_demo.bench")
SWEEP = [MoIConfig("moi", b, 20) for b in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)] + [MoIConfig("direct", 0.0, 20)]


@dataclass
class BenchSettings:
    model: str | None = None
    repeats: int = 5
    tokens: int = 64
    batches: tuple[int, ...] = (1, 8)
    compiled: bool = True
    app: bool = True
    layouts: bool = True
    reference: bool = True
    max_model_len: int = 1024
    plugin: bool = True
    plugin_batches: tuple[int, ...] = (1, 8, 64)
    plugin_only: bool = False


PLUGIN_TARGETS = {1: ">= 0.95", 8: ">= 0.95", 64: ">= 0.90"}


def plugin_cost(s: BenchSettings) -> str:
    """The plugin's own cost, where it shows: a tiny model whose forward is cheap (a GPU's regime), its
    default 49k vocabulary. g: MoI vs standard requests in one engine; h: standard requests on the MoI-enabled
    engine vs stock vLLM without the plugin on the same runner (in a subprocess): what the hooks cost requests
    that never ask for MoI."""
    from vllm import LLM

    from moi_demo.serving.models import cache_dir, tiny_random_llama
    from moi_demo.serving.stock import StockEngine

    model = tiny_random_llama(cache_dir() / "tiny-llama-h64")
    kwargs = engine_kwargs(
        model,
        moi=False,
        enforce_eager=True,
        max_model_len=512,
        kv_cache_memory_bytes=512 << 20,
        max_num_seqs=max(s.plugin_batches),
    )
    ids = list(range(100, 116))
    rows: list[Row] = []
    llm = LLM(**kwargs, **enable_kwargs())
    try:
        offline_tps(llm, ids, 4, 8, MOI)  # warm-up
        hook_ms: dict[int, float] = {}
        for batch in s.plugin_batches:
            before = llm.collective_rpc("moi_stats")[0]["hook_seconds"]
            rows.append(
                paired(
                    Row(
                        f"g. plugin's own cost: MoI vs standard tok/s, tiny model, batch {batch}",
                        "MoI",
                        "standard",
                        unit="tok/s",
                        target=PLUGIN_TARGETS.get(batch, ""),
                    ),
                    s.repeats,
                    lambda b=batch: offline_tps(llm, ids, b, s.tokens, MOI),
                    lambda b=batch: offline_tps(llm, ids, b, s.tokens, None),
                )
            )
            # The hooks' own wall time per decode step (moi_stats), over the MoI and the standard runs of the row:
            # a standard step costs the hooks ~nothing, so this is the MoI steps' cost.
            spent = llm.collective_rpc("moi_stats")[0]["hook_seconds"] - before
            hook_ms[batch] = spent / (s.repeats * s.tokens) * 1e3
        with StockEngine(**kwargs) as stock:
            stock.tokens_per_second(ids, 4, 8)  # warm-up

            def settled(fn: Callable[[], float]) -> float:
                # An idle vLLM worker spins for 1 s after its last step (shm_broadcast's busy loop): let the
                # other engine's worker go quiet before timing this one, or the two share 2 cores.
                time.sleep(1.2)
                return fn()

            for batch in [b for b in s.plugin_batches if b <= 8]:
                rows.append(
                    paired(
                        Row(
                            "h. standard tok/s, MoI-enabled engine vs stock vLLM (same runner), tiny model, "
                            f"batch {batch}",
                            "MoI-enabled",
                            "stock",
                            unit="tok/s",
                            target=">= 0.99",
                        ),
                        s.repeats,
                        lambda b=batch: settled(lambda: offline_tps(llm, ids, b, s.tokens, None)),
                        lambda b=batch: settled(lambda: stock.tokens_per_second(ids, b, s.tokens)),
                    )
                )
    finally:
        llm.llm_engine.engine_core.shutdown()
    hooks = ", ".join(f"batch {b}: {ms:.3f} ms" for b, ms in hook_ms.items())
    return render(
        rows,
        "### The plugin's own cost (tiny model: 2 layers, hidden 64, 49k vocabulary; "
        f"greedy, {s.tokens} new tokens per request, one engine, interleaved)",
    ) + (f"\n\nhook_seconds per MoI decode step (moi_stats): {hooks}")


def run(s: BenchSettings) -> str:
    from vllm import LLM

    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.models import resolve_model
    from moi_demo.serving.settings import EngineOptions

    if s.plugin_only:
        return plugin_cost(s)
    model = resolve_model(s.model)
    out: list[str] = []
    kv = 512 << 20

    # a, c, d: offline engine, MoI vs standard, vLLM vs reference, eager vs compiled
    rows_a: list[Row] = []
    llm = LLM(**engine_kwargs(model, enforce_eager=True, max_model_len=s.max_model_len, kv_cache_memory_bytes=kv))
    ids = llm.get_tokenizer()(PROMPT)["input_ids"]
    offline_tps(llm, ids, 2, 8, MOI)  # warm-up
    eager_moi: dict[int, list[float]] = {}
    for batch in s.batches:
        row = paired(
            Row(
                f"a. decode tokens/s, MoI vs standard, batch {batch}", "MoI", "standard", unit="tok/s", target=">= 0.97"
            ),
            s.repeats,
            lambda b=batch: offline_tps(llm, ids, b, s.tokens, MOI),
            lambda b=batch: offline_tps(llm, ids, b, s.tokens, None),
        )
        eager_moi[batch] = row.a_values
        rows_a.append(row)
    llm.llm_engine.engine_core.shutdown()
    if s.reference:
        from moi_demo.evaluation.reference import ReferenceDecoder

        decoder = ReferenceDecoder(model)
        for batch in s.batches:
            ref = [reference_tps(decoder, ids, batch, s.tokens) for _ in range(max(1, s.repeats // 2))]
            row = Row(
                f"c. tokens/s, vLLM (MoI) vs reference decoder, batch {batch}",
                "vLLM",
                "reference",
                unit="tok/s",
                target=">= 3 at batch 8" if batch == 8 else "",
            )
            row.a_values = eager_moi[batch]
            row.b_values = ref
            row.ratios = [a / statistics.median(ref) for a in eager_moi[batch]]
            rows_a.append(row)
    if s.compiled:
        start = time.perf_counter()
        compiled = LLM(**engine_kwargs(model, max_model_len=s.max_model_len, kv_cache_memory_bytes=kv))
        compile_start = time.perf_counter() - start
        offline_tps(compiled, ids, 2, 8, MOI)
        for batch in s.batches:
            row = Row(f"d. MoI tokens/s, compiled vs eager, batch {batch}", "compiled", "eager", unit="tok/s")
            row.a_values = [offline_tps(compiled, ids, batch, s.tokens, MOI) for _ in range(s.repeats)]
            row.b_values = eager_moi[batch]
            row.ratios = [a / b for a, b in zip(row.a_values, row.b_values, strict=True)]
            rows_a.append(row)
        compiled.llm_engine.engine_core.shutdown()
        out.append(f"compiled engine start: {compile_start:.1f} s")
    out.insert(0, render(rows_a, f"### Engine throughput (offline vLLM, greedy, {s.tokens} new tokens per request)"))

    # b, e, f: side by side, shared engine vs two engines; app overhead
    rows_b: list[Row] = []
    peaks: dict[str, float] = {}  # GiB, per layout
    layouts = ("shared", "split") if s.layouts else ("shared",)
    for layout in layouts:
        with PeakRSS() as mem:
            start = time.perf_counter()
            engine = MoIEngine(
                model, EngineOptions(max_model_len=s.max_model_len, kv_cache_memory_bytes=kv), layout=layout
            ).start()
            started = time.perf_counter() - start
            lanes_time(engine, PROMPT, 4, [STANDARD, MOI])
            rows_b.append(
                paired(
                    Row(
                        f"b. side-by-side wall time, both lanes vs one lane, {layout} engine",
                        "both",
                        "one",
                        unit="s",
                        target="<= 1.15",
                    ),
                    s.repeats,
                    lambda e=engine: lanes_time(e, PROMPT, s.tokens, [STANDARD, MOI]),
                    lambda e=engine: lanes_time(e, PROMPT, s.tokens, [STANDARD]),
                )
            )
            if layout == "shared":
                rows_b.append(
                    paired(
                        Row(
                            "i. beta sweep to completion, standard + 7 MoI lanes vs one lane",
                            "sweep",
                            "one",
                            unit="s",
                            target="<= 2.0",
                        ),
                        s.repeats,
                        lambda e=engine: lanes_time(e, PROMPT, s.tokens, [STANDARD, *SWEEP]),
                        lambda e=engine: lanes_time(e, PROMPT, s.tokens, [MOI]),
                    )
                )
            if layout == "shared" and s.app:
                rows_b.append(app_overhead(engine, s.repeats))
            engine.shutdown()
        out.append(
            f"{layout} layout: engine start {started:.1f} s (with self-check), "
            f"peak RSS of all processes {mem.peak / 2**30:.2f} GiB"
        )
        peaks[layout] = mem.peak / 2**30
    if "split" in peaks:
        rows_b.append(
            Row(
                "e. peak RSS of all engine processes, two engines vs shared",
                "two",
                "shared",
                [peaks["split"] / peaks["shared"]],
                [peaks["split"]],
                [peaks["shared"]],
                unit="GiB",
            )
        )
    else:
        rows_b.append(
            Row("e. peak RSS, shared", "shared", "-", [1.0], [peaks["shared"]], [peaks["shared"]], unit="GiB")
        )
    out.append(render(rows_b, "### Side by side and the app"))
    if s.plugin:
        out.append(plugin_cost(s))
    return "\n\n".join(out)


@dataclass
class EvalBenchSettings:
    model: str | None = None
    task: str = "arithmetic-1"
    n: int = 100
    max_tokens: int = 128
    repeats: int = 1
    app_seqs: int = 16  # the app's engine: what `moi-demo eval` ran with before it sized its own


def eval_throughput(s: EvalBenchSettings) -> str:
    """j. `moi-demo eval`'s engine sized for the job (every job at once up to 256 sequences and memory; on a CPU
    the model's threads on every core) vs the app's 16-sequence engine, samples/s on the same task, modes and
    seeds. The engines run one after the other (each alone on the machine), A then B per repeat; their answers
    must agree sample for sample (seeded sampling does not depend on the batch)."""
    from moi_demo.evaluation.evaluate import evaluate, mode_configs
    from moi_demo.evaluation.tasks import get_task
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.models import resolve_model
    from moi_demo.serving.settings import EngineOptions, batch_job_options

    model = resolve_model(s.model)
    examples, checker = get_task(s.task, s.n, 0)
    configs = mode_configs(["standard", "direct", "moi"], [1.0], 20)
    settings = SamplingSettings(0.6, 0.8, s.max_tokens, 0)
    sized = batch_job_options(model, [ex.prompt for ex in examples], len(configs), s.max_tokens)
    app = EngineOptions(max_num_seqs=s.app_seqs, max_model_len=sized.max_model_len)

    def rate(options: EngineOptions) -> tuple[float, list[bool]]:
        with MoIEngine(model, options) as engine:
            evaluate(engine, examples[:2], checker, configs, settings)  # warm-up
            start = time.perf_counter()
            _, samples = evaluate(engine, examples, checker, configs, settings)
            return len(samples) / (time.perf_counter() - start), [x.correct for x in samples]

    row = Row(
        f"j. eval samples/s, {s.task} n = {s.n} x 3 modes, {s.max_tokens} tokens: engine sized for the job "
        f"({sized.max_num_seqs} sequences{', every core' if sized.cpu_threads_bind else ''}) vs the app's "
        f"({s.app_seqs} sequences)",
        "sized",
        "app",
        unit="samples/s",
        target=">= 2.0",
    )
    agree = True
    for _ in range(s.repeats):
        a, hits_a = rate(sized)
        b, hits_b = rate(app)
        agree &= hits_a == hits_b
        row.a_values.append(a)
        row.b_values.append(b)
        row.ratios.append(a / b)
    return (
        render([row], "### Evaluation throughput (`moi-demo eval`)")
        + f"\nanswers identical, sample for sample, in both engines: {agree}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="moi-demo bench", description=__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--no-compiled", action="store_true", help="skip eager vs compiled (compiling takes ~1 min)")
    p.add_argument("--no-app", action="store_true")
    p.add_argument("--no-split", action="store_true", help="skip the two-engine layout")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--no-plugin", action="store_true", help="skip the plugin's own cost (tiny model, stock vLLM)")
    p.add_argument("--plugin-only", action="store_true", help="only the plugin's own cost")
    p.add_argument("--plugin-batches", default="1,8,64")
    p.add_argument("--load", action="store_true", help="only the load test of the app (gradio_client sessions)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--load-tokens", type=int, default=24)
    p.add_argument("--eval", action="store_true", help="only the eval throughput: sized engine vs the app's")
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--eval-tokens", type=int, default=128)
    p.add_argument("--eval-repeats", type=int, default=1, help="with --eval: pairs of runs (each ~1-3 min at n=100)")
    p.add_argument("--page", action="store_true", help="only the page in Chromium (long tasks, time to first token)")
    p.add_argument("--page-runs", type=int, default=5)
    p.add_argument("--screenshot", default=None, help="with --page: save the page after the sweep here")
    p.add_argument(
        "--page-cores",
        choices=["own", "shared"],
        default="own",
        help="with --page: the browser on a core of its own (default) or sharing every core with the engine",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.page:
        from moi_demo.tools.pagebench import PageSettings
        from moi_demo.tools.pagebench import main as page_main

        print(page_main(a.model, PageSettings(runs=a.page_runs, screenshot=a.screenshot, cores=a.page_cores)))  # noqa: T201
        return 0
    if a.eval:
        print(eval_throughput(EvalBenchSettings(a.model, n=a.eval_n, max_tokens=a.eval_tokens, repeats=a.eval_repeats)))  # noqa: T201
        return 0
    if a.load:
        from moi_demo.tools.loadtest import LoadSettings
        from moi_demo.tools.loadtest import main as load_main

        print(load_main(a.model, LoadSettings(a.clients, a.requests, a.load_tokens)))  # noqa: T201
        return 0
    settings = BenchSettings(
        a.model,
        a.repeats,
        a.tokens,
        tuple(int(b) for b in a.batches.split(",")),
        not a.no_compiled,
        not a.no_app,
        not a.no_split,
        not a.no_reference,
        plugin=not a.no_plugin,
        plugin_batches=tuple(int(b) for b in a.plugin_batches.split(",")),
        plugin_only=a.plugin_only,
    )
    print(run(settings))  # noqa: T201 - the table is the command's output
    return 0
