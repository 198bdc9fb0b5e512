"""`moi-demo doctor`: prove that MoI works in this machine's vLLM, in a few minutes on a small model.

Run it first on a new GPU (a Space, a cluster node): it starts real engines one after another (eager;
compiled with CUDA graphs and async scheduling where the platform has them; a tiny KV cache that forces
preemption; stock vLLM without the plugin, in a subprocess, on the runner a MoI engine keeps, and on CUDA also on
vLLM's default runner) and prints a pass/fail table. The eager engine runs with MOI_DEMO_HOST_READS=1 and, on CUDA,
VLLM_GPU_SYNC_CHECK=error; one check makes its runner reorder the batch (rows swap, as FlashInfer and MLA make it).
Rows that need what this platform lacks say "n/a here". Exit code 0 when nothing failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from moi_demo.core.config import MoIConfig

logger = logging.getLogger("moi_demo.tools.doctor")

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "1, 2, 3, 4, 5,",
    "Explain in one sentence why the sky is blue.",
]
MOI = MoIConfig("moi", 1.0, 20).extra_args()
LOW_BETA = MoIConfig("moi", 0.0, 20).extra_args()
DIRECT = MoIConfig("direct", 1.0, 20).extra_args()
PREEMPT_EXTRAS = [MOI, DIRECT, LOW_BETA, None]
PREEMPT_STEPS = 48
PASS, FAIL, NA = "pass", "FAIL", "n/a here"


def run_staggered(
    llm: Any, jobs: Sequence[tuple[str, list[int], Any, int]], reorder: bool = False, max_steps: int = 2000
) -> dict[str, list[int]]:
    """Requests arriving at different steps: (request id, prompt ids, SamplingParams, the step it arrives at), each
    added to the engine at its step, so that prefills and decodes share steps. With `reorder`, the runner reorders
    its batch before every step (`moi_force_reorder`, decodes first, as FlashInfer and MLA make it on a GPU), so
    that rows swap. Returns the final token ids by request id."""
    engine = llm.llm_engine
    if reorder:
        llm.collective_rpc("moi_force_reorder", args=(1,))
    try:
        final: dict[str, list[int]] = {}
        for step in range(max_steps):
            for rid, ids, params, at in jobs:
                if at == step:
                    engine.add_request(rid, {"prompt_token_ids": ids}, params)
            for out in engine.step():
                if out.finished:
                    final[out.request_id] = list(out.outputs[0].token_ids)
            if len(final) == len(jobs):
                return final
        raise RuntimeError(f"staggered run unfinished after {max_steps} steps")
    finally:
        if reorder:
            llm.collective_rpc("moi_force_reorder", args=(None,))


@dataclass
class Check:
    name: str
    status: str
    detail: str


class Doctor:
    def __init__(
        self, model: str, tokens: int = 32, long_rounds: int = 6, speed_batch: int = 64, compiled: bool = True
    ):
        from vllm.platforms import current_platform

        self.model, self.tokens, self.long_rounds, self.speed_batch = model, tokens, long_rounds, speed_batch
        self.compiled = compiled
        self.cpu = current_platform.is_cpu()
        self.cuda = current_platform.is_cuda_alike()
        self.checks: list[Check] = []

    # -- engines -------------------------------------------------------------------------------------------

    def kwargs(self, **over: Any) -> dict[str, Any]:
        from moi_demo.serving.settings import engine_kwargs

        base = engine_kwargs(
            self.model, cpu=self.cpu, max_model_len=1024, max_num_seqs=max(self.speed_batch, 8), max_logprobs=20
        )
        if not self.cpu:
            base.update(gpu_memory_utilization=0.5)
        return {**base, **over}

    @contextlib.contextmanager
    def engine(self, env: dict[str, str] | None = None, **over: Any) -> Iterator[Any]:
        from vllm import LLM

        from moi_demo.serving.lifecycle import temporary_env

        llm = None
        try:
            with temporary_env(env):  # read by the engine's worker processes when they start
                llm = LLM(**self.kwargs(**over))
            yield llm
        finally:
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()
                del llm
                import gc

                gc.collect()

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        status = NA if ok is None else PASS if ok else FAIL
        self.checks.append(Check(name, status, detail))
        logger.info("doctor: %-60s %s  %s", name, status, detail)

    def run_check(self, name: str, fn: Callable[[], tuple[bool | None, str]]) -> None:
        try:
            ok, detail = fn()
        except Exception as e:  # a check that crashes fails, the others still run
            logger.exception("doctor: %s crashed", name)
            ok, detail = False, f"crashed: {e!r}"[:300]
        self.add(name, ok, detail)

    # -- helpers -------------------------------------------------------------------------------------------

    def params(self, extra: dict[str, Any] | None = None, tokens: int | None = None, **kw: Any):
        from vllm import SamplingParams

        return SamplingParams(
            temperature=kw.pop("temperature", 0.0),
            max_tokens=tokens or self.tokens,
            ignore_eos=True,
            extra_args=extra or None,
            **kw,
        )

    def generate(self, llm: Any, prompts: list[list[int]], extras: Sequence[dict | None], **kw: Any) -> list[list[int]]:
        outs = llm.generate(
            [{"prompt_token_ids": p} for p in prompts], [self.params(x, **kw) for x in extras], use_tqdm=False
        )
        return [list(o.outputs[0].token_ids) for o in outs]

    @staticmethod
    def stats(llm: Any) -> list[dict[str, Any]]:
        return llm.collective_rpc("moi_stats")

    # -- the run -------------------------------------------------------------------------------------------

    def run(self) -> list[Check]:
        from moi_demo.serving.stock import StockEngine

        stock_kwargs = {
            k: v for k, v in self.kwargs(enforce_eager=True, async_scheduling=False).items() if k != "model"
        }
        with StockEngine(self.model, **stock_kwargs) as stock:  # first: one engine at a time on a GPU
            tok = _tokenizer(self.model)
            self.prompts = [tok(p)["input_ids"] for p in PROMPTS]
            self.preempt_prompts = [(self.prompts[i] * 20)[:40] for i in range(4)]
            stock_tokens = stock.generate(self.prompts, self.tokens)
        env = {"MOI_DEMO_HOST_READS": "1"}
        if self.cuda:
            env["VLLM_GPU_SYNC_CHECK"] = "error"  # vLLM's own: a device sync in a checked step raises
        with self.engine(env=env, enforce_eager=True, async_scheduling=False) as llm:
            self.run_check("plugin hooked on every rank", lambda: self.check_hooked(llm))
            self.run_check(
                "standard requests token-identical to stock vLLM (no plugin)",
                lambda: self.check_stock(llm, stock_tokens),
            )
            self.run_check("mixed batch: MoI and direct differ from standard", lambda: self.check_differs(llm))
            self.run_check("prefix caching never shares MoI blocks", lambda: self.check_prefix_cache(llm))
            self.run_check("batch reordered (rows swap): same tokens, no sync", lambda: self.check_reorder(llm))
            self.run_check("memory flat over a long multi-request run", lambda: self.check_memory(llm))
            self.eager = self.generate(llm, self.prompts, [MOI, DIRECT, LOW_BETA, None])
            self.preempt_expected = self.generate(llm, self.preempt_prompts, PREEMPT_EXTRAS, tokens=PREEMPT_STEPS)
            self.run_check("hooks make no host read of a tensor (no device sync)", lambda: self.check_host_reads(llm))
        self.run_check("forced preemption: recomputed from history, same tokens", self.check_preemption)
        compiled_name = "MoI tokens: eager vs compiled" + (" + CUDA graphs + async scheduling" if self.cuda else "")
        if self.compiled:
            with self.engine(enforce_eager=False) as llm:  # compiled; CUDA graphs and async scheduling on CUDA
                self.run_check(compiled_name, lambda: self.check_compiled(llm))
                self.run_check(
                    f"speed: MoI / standard tok/s at batch {self.speed_batch} (>= 0.90)", lambda: self.check_speed(llm)
                )
                if self.cuda:
                    self.enabled_tps = [self.standard_tps(llm) for _ in range(3)]
        else:
            self.add(compiled_name, None, "skipped (--no-compiled)")
            with self.engine(enforce_eager=True) as llm:
                self.run_check(
                    f"speed: MoI / standard tok/s at batch {self.speed_batch} (>= 0.90)", lambda: self.check_speed(llm)
                )
        self.run_check("MoI tokens: async scheduling on vs off", self.check_async)
        self.run_check(
            f"speed: standard tok/s, MoI-enabled engine vs stock vLLM's default runner, batch {self.speed_batch}",
            self.check_enable_cost,
        )
        return self.checks

    def standard_tps(self, llm: Any) -> float:
        from moi_demo.tools.benchmark import offline_tps

        return offline_tps(llm, self.prompts[1], self.speed_batch, self.tokens, None)

    def check_enable_cost(self) -> tuple[bool | None, str]:
        """What enabling MoI costs a GPU user's standard requests: the V1 runner with input embeddings and the hooks,
        against vLLM exactly as installed (its default runner, V2 on CUDA), both compiled. Reported, not judged."""
        if not self.cuda:
            return None, "CUDA only: here vLLM's default runner is already V1 (no Triton); bench row h has the hooks"
        if not getattr(self, "enabled_tps", None):
            return None, "needs the compiled engine (skipped with --no-compiled)"
        from moi_demo.serving.stock import StockEngine

        kwargs = {k: v for k, v in self.kwargs(enforce_eager=False).items() if k != "model"}
        with StockEngine(self.model, runner="default", **kwargs) as stock:
            stock.tokens_per_second(self.prompts[1], 4, 8)  # warm-up
            stock_tps = [stock.tokens_per_second(self.prompts[1], self.speed_batch, self.tokens) for _ in range(3)]
        ratio = statistics.median(self.enabled_tps) / statistics.median(stock_tps)
        return True, (
            f"{ratio:.3f} (MoI-enabled {statistics.median(self.enabled_tps):.0f} tok/s, stock default runner "
            f"{statistics.median(stock_tps):.0f} tok/s; medians of 3)"
        )

    def check_hooked(self, llm: Any) -> tuple[bool, str]:
        stats = self.stats(llm)
        hooked = [s["hooked"] for s in stats]
        return all(hooked), f"{sum(hooked)}/{len(hooked)} workers hooked"

    def check_differs(self, llm: Any) -> tuple[bool, str]:
        p = self.prompts[0]
        before = self.stats(llm)[0]["applied_steps"]
        std, moi, low, direct, std2 = self.generate(llm, [p] * 5, [None, MOI, LOW_BETA, DIRECT, None])
        applied = self.stats(llm)[0]["applied_steps"] - before
        ok = std == std2 and low != std and direct != std and applied == 3 * (self.tokens - 1)
        return ok, (
            f"standard twice identical: {std == std2}; beta 0 differs: {low != std}; direct differs: "
            f"{direct != std}; beta 1 differs: {moi != std}; mixed inputs fed: {applied}"
        )

    def check_reorder(self, llm: Any) -> tuple[bool, str]:
        extras = [MOI, DIRECT, None, LOW_BETA, MOI, None, DIRECT, LOW_BETA]
        arrive = [0, 0, 1, 3, 4, 6, 9, 13]

        def jobs(tag: str) -> list[tuple[str, list[int], Any, int]]:
            return [
                (f"{tag}{i}", self.prompts[i % 4], self.params(x, tokens=6 + (5 * i) % 17), at)
                for i, (x, at) in enumerate(zip(extras, arrive, strict=True))
            ]

        plain = run_staggered(llm, jobs("plain-"))
        before = self.stats(llm)
        reordered = run_staggered(llm, jobs("swap-"), reorder=True)
        after = self.stats(llm)
        swaps = sum(a["swaps"] - b["swaps"] for a, b in zip(after, before, strict=True))
        reads = [a["host_reads"] for a in after]
        same = sum(plain[f"plain-{i}"] == reordered[f"swap-{i}"] for i in range(len(extras)))
        ok = same == len(extras) and swaps > 0 and all(r == {} for r in reads)
        sync = "; under VLLM_GPU_SYNC_CHECK=error" if self.cuda else ""
        return ok, (
            f"{same}/{len(extras)} staggered requests identical with and without reordering; rows swapped "
            f"{swaps} times; host reads {reads}{sync}"
        )

    def check_prefix_cache(self, llm: Any) -> tuple[bool, str]:
        block = llm.llm_engine.vllm_config.cache_config.block_size
        prompt = (self.prompts[3] * (2 * block // len(self.prompts[3]) + 2))[: 2 * block + 3]
        reuse = {}
        for mode in ("moi", "standard"):
            llm.reset_prefix_cache()
            first = self.generate(llm, [prompt], [MoIConfig(mode, 0.0).extra_args()], tokens=2 * block)[0]
            follow = llm.generate({"prompt_token_ids": prompt + first}, self.params(tokens=2), use_tqdm=False)[0]
            reuse[mode] = follow.num_cached_tokens
        prompt_blocks = len(prompt) // block * block
        ok = reuse["moi"] == prompt_blocks and reuse["standard"] > prompt_blocks
        return ok, (
            f"cached tokens reused after MoI: {reuse['moi']} (its prompt blocks: {prompt_blocks}); "
            f"after standard (control): {reuse['standard']}"
        )

    def check_memory(self, llm: Any) -> tuple[bool, str]:
        prompts = [self.prompts[i % 4] for i in range(16)]
        extras = [MOI if i % 2 else DIRECT for i in range(16)]
        readings = []
        for _ in range(self.long_rounds):
            self.generate(llm, prompts, extras, tokens=4 * self.tokens)
            mem = self.stats(llm)[0]["memory"]
            device = sum(s["device_allocated"] or 0 for s in self.stats(llm))
            readings.append((mem["total_bytes"], mem["history_tokens"], device))
        moi_flat = len({r[0] for r in readings[1:]}) == 1 and all(r[1] == 0 for r in readings)
        dev = [r[2] for r in readings]
        dev_flat = dev[-1] <= dev[1] * 1.01 if self.cuda else None
        per_token = self.stats(llm)[0]["memory"]["bytes_per_token"]
        ok = moi_flat and dev_flat is not False
        detail = (
            f"{self.long_rounds} rounds x 16 requests x {4 * self.tokens} tokens: MoI holds "
            f"{readings[-1][0] / 2**20:.2f} MiB after each round from the 2nd (pool + next-input buffer), "
            f"history {per_token:.0f} B/token, freed at finish"
        )
        detail += (
            f"; device allocated {dev[1] / 2**20:.1f} -> {dev[-1] / 2**20:.1f} MiB"
            if self.cuda
            else "; device memory: n/a here (CPU)"
        )
        return ok, detail

    def check_host_reads(self, llm: Any) -> tuple[bool, str]:
        """What would sync on CUDA (vllm/host_reads.py: host reads of device tensors, host indices, device tensors
        made from host data; host-only buffers such as the pinned staging are not counted), and the step's graphs."""
        stats = self.stats(llm)
        reads = [s["host_reads"] for s in stats]
        ok = all(r == {} for r in reads)
        extra = "; VLLM_GPU_SYNC_CHECK=error was on" if self.cuda else "; VLLM_GPU_SYNC_CHECK: n/a here (CPU)"
        graphs = stats[0].get("graphs") or {}
        extra += (
            f"; the step's CUDA graphs: {graphs.get('captures', 0)} captured, {graphs.get('replays', 0)} replayed"
            if graphs.get("on")
            else "; the step's graphs: off (eager)"
        )
        return ok, f"syncs counted in the hooks during every step above: {reads}{extra}"

    def check_stock(self, llm: Any, stock_tokens: list[list[int]]) -> tuple[bool, str]:
        mixed = self.generate(llm, self.prompts * 2, [None] * 4 + [MOI, DIRECT, LOW_BETA, MOI])[:4]
        same = sum(a == b for a, b in zip(stock_tokens, mixed, strict=True))
        return same == len(stock_tokens), f"{same}/{len(stock_tokens)} standard requests identical (batched with MoI)"

    def check_preemption(self) -> tuple[bool, str]:
        block = 32 if self.cpu else 16
        per_req = -(-(40 + PREEMPT_STEPS) // block)
        with self.engine(
            enforce_eager=True,
            async_scheduling=False,
            num_gpu_blocks_override=2 * per_req,
            max_num_seqs=4,
            max_num_batched_tokens=max(block, 32),
            enable_prefix_caching=False,
            max_model_len=128,
            block_size=block,
        ) as llm:
            got = self.generate(llm, self.preempt_prompts, PREEMPT_EXTRAS, tokens=PREEMPT_STEPS)
            recomputed = self.stats(llm)[0]["recomputed_steps"]
        same = sum(a == b for a, b in zip(self.preempt_expected, got, strict=True))
        return recomputed > 0 and same == 4, (
            f"recomputed_steps {recomputed}; {same}/4 requests identical to an engine with room for all"
        )

    def check_compiled(self, llm: Any) -> tuple[bool, str]:
        compiled = self.generate(llm, self.prompts, [MOI, DIRECT, LOW_BETA, None])
        same = sum(a == b for a, b in zip(self.eager, compiled, strict=True))
        what = "torch.compile + CUDA graphs, async scheduling default" if self.cuda else "torch.compile (CPU)"
        return same == 4, f"{same}/4 requests (MoI, direct, beta 0, standard) identical; {what}"

    def check_async(self) -> tuple[bool | None, str]:
        if not self.cuda:
            return None, "this platform forces async scheduling off"
        with self.engine(enforce_eager=True, async_scheduling=True) as llm:
            on = self.generate(llm, self.prompts, [MOI, DIRECT, LOW_BETA, None])
        same = sum(a == b for a, b in zip(self.eager, on, strict=True))
        return same == 4, f"{same}/4 requests identical (eager, async scheduling on vs off)"

    def check_speed(self, llm: Any) -> tuple[bool, str]:
        from moi_demo.core.config import MoIConfig
        from moi_demo.tools.benchmark import offline_tps

        ids = self.prompts[1]
        offline_tps(llm, ids, 4, 8, MoIConfig())  # warm-up
        ratios = []
        for _ in range(3):
            moi = offline_tps(llm, ids, self.speed_batch, self.tokens, MoIConfig())
            std = offline_tps(llm, ids, self.speed_batch, self.tokens, None)
            ratios.append(moi / std)
        med = statistics.median(ratios)
        return med >= 0.90, f"median of 3 interleaved pairs: {med:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"


def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def render(checks: Sequence[Check], model: str, seconds: float) -> str:
    w = max(len(c.name) for c in checks)
    lines = [
        f"moi-demo doctor: {model}",
        "",
        f"| {'check'.ljust(w)} | result   | detail |",
        f"|{'-' * (w + 2)}|----------|--------|",
    ]
    lines += [f"| {c.name.ljust(w)} | {c.status.ljust(8)} | {c.detail} |" for c in checks]
    failed = [c for c in checks if c.status == FAIL]
    lines += [
        "",
        f"{len(checks) - len(failed)} of {len(checks)} checks passed or n/a, {len(failed)} failed, in {seconds:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="moi-demo doctor", description=__doc__)
    p.add_argument("--model", default=None, help="HF directory or id (default: the embedded default model)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request (default 32)")
    p.add_argument("--speed-batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6, help="rounds of the long memory run")
    p.add_argument("--no-compiled", action="store_true", help="skip the compiled engine (saves its warm-up)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from moi_demo.serving.models import resolve_model

    model = resolve_model(a.model)
    start = time.perf_counter()
    checks = Doctor(model, a.tokens, a.rounds, a.speed_batch, not a.no_compiled).run()
    print(render(checks, model, time.perf_counter() - start))  # noqa: T201 - the table is the output
    return 1 if any(c.status == FAIL for c in checks) else 0
