"""The doctor's rig: its requests' settings, the engines it starts (one at a time) and how a check's result is kept
(`moi-demo doctor`, tools/doctor.py)."""

from __future__ import annotations

import contextlib
import logging
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


class Rig:
    """What the doctor's checks run on: its engines (one at a time), request helpers, and the results table."""

    def __init__(
        self, model: str, tokens: int = 32, long_rounds: int = 6, speed_batch: int = 64, compiled: bool = True
    ):
        from vllm.platforms import current_platform

        self.model, self.tokens, self.long_rounds, self.speed_batch = model, tokens, long_rounds, speed_batch
        self.compiled = compiled
        self.cpu = current_platform.is_cpu()
        self.cuda = current_platform.is_cuda_alike()
        self.checks: list[Check] = []
        self.prompts: list[list[int]] = []  # PROMPTS tokenized (set by Doctor.run)
        self.preempt_prompts: list[list[int]] = []
        self.eager: list[list[int]] = []  # the eager engine's tokens for PROMPTS under PREEMPT_EXTRAS
        self.preempt_expected: list[list[int]] = []
        self.enabled_tps: list[float] = []

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

    def standard_tps(self, llm: Any) -> float:
        from moi_demo.tools.measure import offline_tps

        return offline_tps(llm, self.prompts[1], self.speed_batch, self.tokens, None)
