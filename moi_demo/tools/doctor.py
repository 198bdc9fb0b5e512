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
import logging
import time
from collections.abc import Sequence
from typing import Any

from moi_demo.tools import doctor_checks as checks
from moi_demo.tools.doctor_rig import DIRECT, FAIL, LOW_BETA, MOI, PREEMPT_EXTRAS, PREEMPT_STEPS, PROMPTS, Check, Rig

logger = logging.getLogger("moi_demo.tools.doctor")


class Doctor(Rig):
    """The checks of tools/doctor_checks.py in the order they run on a GPU (one engine at a time), on the rig."""

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
            self.run_check("plugin hooked on every rank", lambda: checks.check_hooked(self, llm))
            self.run_check(
                "standard requests token-identical to stock vLLM (no plugin)",
                lambda: checks.check_stock(self, llm, stock_tokens),
            )
            self.run_check("mixed batch: MoI and direct differ from standard", lambda: checks.check_differs(self, llm))
            self.run_check("prefix caching never shares MoI blocks", lambda: checks.check_prefix_cache(self, llm))
            self.run_check("batch reordered (rows swap): same tokens, no sync", lambda: checks.check_reorder(self, llm))
            self.run_check("memory flat over a long multi-request run", lambda: checks.check_memory(self, llm))
            self.eager = self.generate(llm, self.prompts, [MOI, DIRECT, LOW_BETA, None])
            self.preempt_expected = self.generate(llm, self.preempt_prompts, PREEMPT_EXTRAS, tokens=PREEMPT_STEPS)
            self.run_check(
                "hooks make no host read of a tensor (no device sync)", lambda: checks.check_host_reads(self, llm)
            )
        self.run_check("forced preemption: recomputed from history, same tokens", lambda: checks.check_preemption(self))
        compiled_name = "MoI tokens: eager vs compiled" + (" + CUDA graphs + async scheduling" if self.cuda else "")
        if self.compiled:
            with self.engine(enforce_eager=False) as llm:  # compiled; CUDA graphs and async scheduling on CUDA
                self.run_check(compiled_name, lambda: checks.check_compiled(self, llm))
                self.run_check(
                    f"speed: MoI / standard tok/s at batch {self.speed_batch} (>= 0.90)",
                    lambda: checks.check_speed(self, llm),
                )
                if self.cuda:
                    self.enabled_tps = [self.standard_tps(llm) for _ in range(3)]
        else:
            self.add(compiled_name, None, "skipped (--no-compiled)")
            with self.engine(enforce_eager=True) as llm:
                self.run_check(
                    f"speed: MoI / standard tok/s at batch {self.speed_batch} (>= 0.90)",
                    lambda: checks.check_speed(self, llm),
                )
        self.run_check("MoI tokens: async scheduling on vs off", lambda: checks.check_async(self))
        self.run_check(
            f"speed: standard tok/s, MoI-enabled engine vs stock vLLM's default runner, batch {self.speed_batch}",
            lambda: checks.check_enable_cost(self),
        )
        return self.checks


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
