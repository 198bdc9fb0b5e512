"""MoI state of a serving batch, per row: pure torch + numpy, no vLLM import.

A serving engine keeps a *persistent batch*: request i sits in row r until it finishes or is preempted, and rows
change only when requests are added, removed or moved (vLLM's `InputBatch` and the `BatchUpdate` it hands to logits
processors). `BatchState` mirrors that and holds the protocol the engine's hooks follow; its parts live apart:
- rows.py: `RowTable`, each row's settings and progress as host arrays (what the hooks compute indices from) and
  the next step's mixed inputs per row, touched only when the batch changes and once per step;
- planning.py: `Planner`, each step's plan from the scheduled positions (`FeedPlan`, `StepPlan`);
- records.py: `HistoryStore`, the requests' histories in page pools and the records the API reads;
- history.py: a request's history and its pages; staging.py: host indices to the device in one copy.
A steady decode step is then a few tensor ops whatever the batch size: no Python loop over requests, no
device-to-host read.

Memory. Per generated token a request keeps its (k + 1) candidate ids (int32), mix weights (float32) and H:
8 * (k + 1) + 4 bytes (172 at k = 20), whatever the hidden size, in pages of `PAGE` tokens drawn from a pool per
width (like vLLM's KV blocks: a page belongs to one request, returns to the pool when it finishes). The next step's
mixed inputs live in one preallocated [rows, hidden] buffer. The history is what rebuilds the mixed inputs when the
engine recomputes a request (after preemption) and what `records_of` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from moi_demo.core import mixing
from moi_demo.core.config import MoIConfig
from moi_demo.vllm.history import SWAP, RequestHistory, merged
from moi_demo.vllm.host_reads import HostReadCounter
from moi_demo.vllm.planning import NO_FEED, Counts, FeedPlan, Planner, StepPlan
from moi_demo.vllm.records import HistoryStore
from moi_demo.vllm.rows import RowTable
from moi_demo.vllm.staging import Staging

IDLE, PLANNED, SAMPLING = "idle", "planned", "sampling"  # BatchState.phase


class HookOrderError(RuntimeError):
    """The engine adapter called BatchState out of the order its protocol writes down (see BatchState)."""


class BatchState:
    """Per-row MoI state of a persistent batch of up to `max_rows` requests, and the requests' histories.

    The protocol, one step at a time (`phase`; a call out of this order raises HookOrderError, as vLLM's
    BatchUpdateBuilder does, instead of mixing into the wrong rows):
      idle:      `finish(req_id)` and `apply_update(...)` (the batch changes, between steps), any number of times;
      1. `plan(...)` -> FeedPlan: the rows to overwrite now (`write_buffer`, `write_from_history`); when MoI rows
         sample this step the phase becomes "planned", else it stays idle;
      2. `take_plan()` -> StepPlan (None when idle): "planned" -> "sampling";
      3. `mix_target(plan, ...)`, then `record(plan, ...)` with the plan taken: "sampling" -> idle (or its two
         halves: `check_plan`, `write_record` on the device, `recorded` on the host).
    Introspection (`stats`, `history`, `records_of`) may come at any time.
    """

    def __init__(self, max_rows: int, device: torch.device | str = "cpu", record: bool = False):
        self.max_rows, self.device = max_rows, torch.device(device)
        self.rows = RowTable(max_rows)
        self.staging = Staging(self.device, min_size=8 * max_rows)
        self.store = HistoryStore(self.device, self.staging, record_all=record)
        self.counts = Counts()
        self.planner = Planner(self.rows, self.store, self.staging, self.counts)
        self.requests: dict[str, RequestHistory] = {}  # live MoI requests, in a row or preempted
        self.phase = IDLE
        self._pending: StepPlan | None = None  # the step's plan, from plan() to record()
        self.host_reads: HostReadCounter | None = None
        self.hook_seconds = 0.0  # wall time of the engine hooks' own code (set by the engine adapter)

    # -- batch changes (vLLM's BatchUpdate: removed, then added, then moved) ------------------------------

    def apply_update(
        self,
        removed: Sequence[int],
        added: Sequence[tuple[int, MoIConfig | None]],
        moved: Sequence[tuple[int, int, Any]],
        identify: Callable[[int], tuple[str, int, Any]],
    ) -> None:
        """Apply one batch change, in vLLM's order: removed rows, added (row, MoI config or None for a
        standard request), moved (a, b, direction). Once rows have settled, `identify(row)` gives an added
        MoI request's (req_id, prompt_len, owner)."""
        self._expect(IDLE, "apply_update")
        t = self.rows
        if not t.mixes.any() and all(cfg is None for _, cfg in added):
            return  # no MoI request before or after: nothing to track
        for row in removed:
            t.detach(row)
        pending: dict[int, MoIConfig] = {}
        for row, cfg in added:
            t.detach(row)
            if cfg is not None:
                pending[row] = cfg
        for a, b, direction in moved:
            if str(getattr(direction, "name", direction)).lower() == SWAP:
                self.counts.swaps += 1
                t.swap(a, b)
                pa, pb = pending.pop(a, None), pending.pop(b, None)
                if pa is not None:
                    pending[b] = pa
                if pb is not None:
                    pending[a] = pb
            else:
                self.counts.moves += 1
                t.detach(b)
                t.move(a, b)
                if a in pending:
                    pending[b] = pending.pop(a)
        for row, cfg in pending.items():
            req_id, prompt_len, owner = identify(row)
            t.attach(row, self._history(req_id, cfg, prompt_len, owner))
        self.planner.changed()

    def _history(self, req_id: str, config: MoIConfig, prompt_len: int, owner: Any) -> RequestHistory:
        hist = self.requests.get(req_id)
        if hist is not None and (hist.owner is not owner or hist.prompt_len != prompt_len or hist.config != config):
            # Same id, another request (abort + resubmit) or a resumed session: nothing of the old history stands.
            self._release(hist)
            hist = None
        if hist is None:
            hist = self.requests[req_id] = RequestHistory(req_id, config, prompt_len, owner)
        return hist

    def finish(self, req_id: str) -> None:
        """The request ended (finished or aborted): free its history, keep its count (and records)."""
        self._expect(IDLE, "finish")
        hist = self.requests.get(req_id)
        if hist is None:
            return
        if hist.row >= 0:
            self.rows.detach(hist.row)
            self.planner.changed()
        self.store.retire(hist)
        self._release(hist)

    def _release(self, hist: RequestHistory) -> None:
        self.store.release(hist)
        if self.requests.get(hist.req_id) is hist:
            del self.requests[hist.req_id]

    # -- one step ------------------------------------------------------------------------------------------

    def plan(self, num_reqs: int, num_computed: np.ndarray, num_scheduled: np.ndarray, samples: np.ndarray) -> FeedPlan:
        """Step 1: plan the step of a batch of `num_reqs` rows, each computing positions [num_computed,
        num_computed + num_scheduled) and, where `samples`, sampling its next token."""
        self._expect(IDLE, "plan")
        if not self.requests:  # no MoI request alive: nothing to do (the plugin's whole cost for other requests)
            return NO_FEED
        feed, self._pending = self.planner.plan(num_reqs, num_computed, num_scheduled, samples)
        if self._pending is not None:
            self.phase = PLANNED
        return feed

    def _expect(self, phase: str, call: str) -> None:
        if self.phase != phase:
            raise HookOrderError(
                f"moi-demo: BatchState.{call}() in phase {self.phase!r} (expected {phase!r}): "
                "the hooks ran out of order (plan -> take_plan -> record, batch changes between steps)"
            )

    def take_plan(self) -> StepPlan | None:
        """Step 2, in the sampler hook: the step's plan (None when no MoI row samples this step)."""
        if self.phase == IDLE:
            return None
        self._expect(PLANNED, "take_plan")
        self.phase = SAMPLING
        return self._pending

    def mix_target(self, plan: StepPlan, hidden: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Where the step's mixed inputs [M, D] are to be written: the next-input buffer's own rows when the plan's
        rows are a run (no copy), else a scratch tensor that `record` scatters into the buffer."""
        self._expect(SAMPLING, "mix_target")
        self.rows.ensure_buffer(hidden, dtype, device)
        if plan.span is not None:
            return self.rows.buffer[plan.span]
        return torch.empty(plan.rows.size, hidden, dtype=dtype, device=device)

    def record(
        self,
        plan: StepPlan,
        candidate_ids: torch.Tensor,
        weights: torch.Tensor,
        mixed: torch.Tensor,
        entropy: torch.Tensor | None = None,
    ) -> None:
        """Step 3, after sampling: candidates [M, C] and weights [M, C] of the planned rows, their mixed inputs
        [M, D] (the next step's inputs; already in place when written into `mix_target`), and the H [M] they were
        mixed with: `write_record` on the device, then `recorded` on the host."""
        self.check_plan(plan)
        self.rows.ensure_buffer(mixed.shape[1], mixed.dtype, mixed.device)
        self.write_record(plan, candidate_ids, weights, mixed, entropy)
        self._advance(plan)

    def check_plan(self, plan: StepPlan) -> None:
        self._expect(SAMPLING, "record")
        if plan is not self._pending:
            raise HookOrderError("moi-demo: BatchState.record() with a plan other than the one taken this step")

    def write_record(
        self,
        plan: StepPlan,
        candidate_ids: torch.Tensor,
        weights: torch.Tensor,
        mixed: torch.Tensor,
        entropy: torch.Tensor | None = None,
    ) -> None:
        """The device side of `record`: the mixed inputs into the next-input buffer and the step into the history
        pages (device ops only; what a CUDA graph of the step replays, vllm/step.py)."""
        if plan.span is not None:
            target = self.rows.buffer[plan.span]
            if mixed.data_ptr() != target.data_ptr():  # not written in place (mix_target)
                target.copy_(mixed)
        else:
            self.rows.buffer.index_copy_(0, plan.rows_t, mixed)
        self.store.write(plan.write_t, candidate_ids, weights, entropy)

    def recorded(self, plan: StepPlan) -> None:
        """The host side of `record` (its device side written, by `write_record` or a graph replay of it)."""
        self.check_plan(plan)
        self._advance(plan)

    def _advance(self, plan: StepPlan) -> None:
        """The planned rows hold one more token, buffered; the phase returns to idle (the plan checked)."""
        self.phase, self._pending = IDLE, None
        at = plan.span if plan.span is not None else plan.rows
        self.rows.length[at] += 1
        self.rows.buffer_valid[at] = True

    def write_buffer(self, out: torch.Tensor, rows: np.ndarray, targets: np.ndarray, num_reqs: int) -> None:
        """Copy the buffered mixed inputs of `rows` [F] (their last samples') into rows `targets` [F] of `out`."""
        m = rows.size
        if m == num_reqs and targets[-1] == m - 1:  # rows 0..m-1, one token each: a slice copy
            out[:m].copy_(self.rows.buffer[:m])
        else:
            rows_t, targets_t = self.staging.to_device(rows, targets)
            out.index_copy_(0, targets_t, self.rows.buffer.index_select(0, rows_t))

    def write_from_history(
        self,
        row: int,
        js: np.ndarray,
        embed: Callable[[torch.Tensor], torch.Tensor],
        out: torch.Tensor,
        targets: np.ndarray,
        reduce: mixing.Reduce | None = None,
    ) -> None:
        """The mixed inputs of generated tokens js [n] of the request in `row` into rows `targets` of `out`."""
        self.store.rebuild(self.rows.req[row], js, embed, out, targets, reduce)

    # -- introspection -------------------------------------------------------------------------------------

    def _live(self) -> list[RequestHistory]:
        """The live requests, their counters current."""
        for row, hist in enumerate(self.rows.req):
            if hist is not None:
                self.rows.sync(row)
        return list(self.requests.values())

    def history(self, hist: RequestHistory) -> list[tuple[list[int], list[float]]]:
        """(candidate ids, weights) per generated token held, one weight per distinct id (a device read:
        tests and debugging only). The sampled id is stored in its own column: its weights add up."""
        if hist.row >= 0:
            self.rows.sync(hist.row)
        return merged(*self.store.held(hist)[:2])

    def records_of(self, prefixes: Sequence[str]) -> dict[str, dict[str, list]]:
        """What was fed, per generated token, to the requests vLLM runs under the ids `prefixes` (live, or
        finished and kept: `moi_record`), as `HistoryStore.records_of`. A device read: on request only."""

        def asked(req_id: str) -> bool:  # vLLM's internal id: the request's own, then "-" and a random suffix
            return any(req_id == p or req_id.startswith(p + "-") for p in prefixes)

        return self.store.records_of(asked, self._live())

    def stats(self, records: bool = False) -> dict[str, Any]:
        live = self._live()
        store = self.store
        out: dict[str, Any] = {
            **vars(self.counts),  # plain ints and floats: the stats cross process boundaries
            "requests": {**store.finished, **{h.req_id: int(h.fed) for h in live}},
            "memory": store.memory(
                live, self.rows.buffer
            ),  # live: what MoI holds now; bytes_per_token: over all so far
            "host_reads": None if self.host_reads is None else dict(self.host_reads.counts),
            "hook_seconds": self.hook_seconds,
        }
        if records:
            out["records"] = {
                **{r: merged(*held[:2]) for r, held in store.finished_records.items()},
                **{h.req_id: self.history(h) for h in live},
            }
        return out
