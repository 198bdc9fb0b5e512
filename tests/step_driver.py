"""A toy engine around BatchState and StepRunner, pure torch: rows hold requests (MoI or standard), each step plans,
feeds the buffered mixed inputs into the step's input rows, taps the batch's logits [B, V] and mixes after sampling,
the way vllm/hooks.py drives them from vLLM's runner. Used by the host-read, step and on-device tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from moi_demo.core.config import MoIConfig, SamplingContext
from moi_demo.vllm.batch_state import BatchState
from moi_demo.vllm.step import StepRunner

VOCAB, HIDDEN, PROMPT = 600, 16, 5
# Every switch on (the full entropy, the processed prior under the request's temperature and top-p, seeded noise).
SWITCHED = MoIConfig(
    "moi",
    1.0,
    8,
    entropy="full",
    prior="processed",
    noise=0.5,
    context=SamplingContext(temperature=0.7, top_p=0.8, seed=5),
)


class Driver:
    def __init__(
        self,
        rows: int = 6,
        device: str | torch.device = "cpu",
        graphs: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        hooks: Callable[[], AbstractContextManager] | None = None,
    ):
        """`hooks`: what the hooks' own calls run under (a HostReadCounter, a sync check); the toy model's own work
        (its logits and samples) runs outside it."""
        self.hooks = hooks or contextlib.nullcontext
        self.device = torch.device(device)
        self.state = BatchState(rows, self.device)
        self.steps = StepRunner(self.state, graphs=graphs)
        gen = torch.Generator().manual_seed(seed)
        self.table = (torch.randn(VOCAB, HIDDEN, generator=gen) * 0.1).to(dtype).to(self.device)
        self.like = torch.empty(0, HIDDEN, dtype=dtype, device=self.device)
        self.rows: list[str | None] = [None] * rows
        self.computed: dict[str, int] = {}
        self.generated: dict[str, int] = {}
        self.cfg: dict[str, MoIConfig | None] = {}
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.fed: dict[str, list[torch.Tensor]] = {}  # request -> the mixed input made for each of its tokens

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.table)

    def identify(self, row: int) -> tuple[str, int, object]:
        return self.rows[row], PROMPT, None

    # -- batch changes (one BatchUpdate each) ---------------------------------------------------------------------
    def add(self, rid: str, row: int, cfg: MoIConfig | None) -> None:
        self.rows[row], self.cfg[rid] = rid, cfg
        self.computed[rid] = self.generated[rid] = 0
        with self.hooks():
            self.state.apply_update([], [(row, cfg)], [], self.identify)

    def remove(self, row: int) -> None:
        rid = self.rows[row]
        self.rows[row] = None
        with self.hooks():
            self.state.finish(rid)
            self.state.apply_update([row], [], [], self.identify)

    def swap(self, a: int, b: int) -> None:
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
        with self.hooks():
            self.state.apply_update([], [], [(a, b, "swap")], self.identify)

    def preempt(self, rid: str) -> None:
        self.computed[rid] = 0  # recomputed: prompt and outputs, from the history

    # -- one step -------------------------------------------------------------------------------------------------
    def step(self) -> None:
        n = max(i + 1 for i, r in enumerate(self.rows) if r is not None)
        ids = self.rows[:n]
        total = np.array([PROMPT + self.generated[r] if r else 0 for r in ids], dtype=np.int64)
        computed = np.array([self.computed[r] if r else 0 for r in ids], dtype=np.int64)
        scheduled = np.where(computed == 0, total, 1).astype(np.int64)
        scheduled[[r is None for r in ids]] = 0
        query_start = np.concatenate([[0], np.cumsum(scheduled)])
        inputs = torch.zeros(int(scheduled.sum()) + 1, HIDDEN, dtype=self.like.dtype, device=self.device)
        logits = (torch.randn(n, VOCAB, generator=self.gen) * 2).to(self.device)  # [B, V] float32, as vLLM's
        sampled = torch.randint(0, VOCAB, (n, 1), generator=self.gen, dtype=torch.int32).to(self.device)  # [B, 1]
        with self.hooks():
            feed = self.state.plan(n, computed, scheduled, np.array([r is not None for r in ids]))
            if feed.fast_rows.size:
                self.state.write_buffer(inputs, feed.fast_rows, query_start[feed.fast_rows] + feed.fast_offsets, n)
            for row, js, offsets in feed.slow:
                self.state.write_from_history(row, js, self.embed, inputs, query_start[row] + offsets)
            plan = self.state.take_plan()
            if plan is not None:
                tapped = self.steps.tap(plan, logits)
                self.steps.mix(plan, tapped, sampled, self.embed, self.like)
        if plan is not None:
            for row in plan.rows:
                self.fed.setdefault(ids[row], []).append(self.state.rows.buffer[row].clone())
        for row, rid in enumerate(ids):
            if rid is not None:
                self.computed[rid] += int(scheduled[row])
                self.generated[rid] += 1
