"""MoI state of a serving batch, per row, as persistent tensors: pure torch + numpy, no vLLM import.

A serving engine keeps a *persistent batch*: request i sits in row r until it finishes or is preempted,
and rows change only when requests are added, removed or moved (vLLM's `InputBatch` and the `BatchUpdate`
it hands to logits processors). `BatchState` mirrors that: every per-row setting lives in host arrays
(numpy, what the hooks compute indices from) and device tensors (what the math reads), both touched only
when the batch changes. A steady decode step is then a few tensor ops whatever the batch size: no Python
loop over requests, no device-to-host read.

Memory. Per generated token a request keeps its (k + 1) candidate ids (int32), mix weights (float32) and H:
8 * (k + 1) + 4 bytes (172 at k = 20), whatever the hidden size, in pages of `PAGE` tokens drawn from a pool
per width (like vLLM's KV blocks: a page belongs to one request, returns to the pool when it finishes).
The next step's mixed inputs live in one preallocated [rows, hidden] buffer. The history is what rebuilds
the mixed inputs when the engine recomputes a request (after preemption) and what `records` return.

Positions, not counters, are the truth: each step the engine says which sequence positions of a request it
computes (`num_computed`, `num_scheduled`); generated token j sits at position prompt_len + j. A request
whose scheduled positions are behind its history was rewound (preemption, a dropped stale output, a
resumed session): its history is cut to the tokens that stand.

Over the house's ~500 lines (and BatchState over ~250) on purpose: one state machine over one set of per-row arrays
(see BatchState's docstring); what stands alone is in history.py and host_reads.py.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from moi_demo.core import mixing
from moi_demo.core.config import MODE_CODES, MODE_MOI, MoIConfig
from moi_demo.core.mixing import BatchConfig
from moi_demo.vllm.history import (
    PAGE,
    RECOMPUTE_BYTES,
    SWAP,
    PagePool,
    RequestHistory,
    merged,
    recompute_bytes_per_token,
)
from moi_demo.vllm.host_reads import HostReadCounter

logger = logging.getLogger("moi_demo.vllm.batch_state")

MAX_KEPT_RECORDS = 256  # finished requests (moi_record) whose records wait to be read (records_of)


class HookOrderError(RuntimeError):
    """The engine adapter called BatchState out of the order its protocol writes down (see BatchState)."""


class FeedPlan(NamedTuple):
    """The input rows `plan()` says to overwrite before the forward pass. Offsets are relative to each row's first
    scheduled token."""

    fast_rows: np.ndarray  # [F] rows whose next input is the buffered mixed input of their last sample
    fast_offsets: np.ndarray  # [F] where that input sits among the row's scheduled tokens
    slow: list[tuple[int, np.ndarray, np.ndarray]]  # (row, generated token indices [n], offsets [n]): from history

    @property
    def empty(self) -> bool:
        return not self.fast_rows.size and not self.slow


_NO_FEED = FeedPlan(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), [])
IDLE, PLANNED, SAMPLING = "idle", "planned", "sampling"  # BatchState.phase


@dataclass
class StepPlan:
    """What one step's sampling does, computed on the host in `plan()` before the forward pass: handed to the
    sampler hook by `take_plan()`, back to the state by `record()`."""

    rows: np.ndarray  # [M] batch rows that sample this step and mix (in row order)
    span: slice | None  # rows == arange(lo, hi) (contiguous: every row of the batch, or a run of them): the step
    # reads and writes row views, no gather
    rows_t: torch.Tensor | None  # [M] long on the device (None when span)
    config: BatchConfig | None  # of `rows`
    write_t: dict[int, tuple[torch.Tensor | None, torch.Tensor]]  # width -> (positions in rows [G] or None
    # for all of them, pool rows [G])
    positions: torch.Tensor | None = None  # [M] long: each row's generated-token index (where a row is noised)


class BatchState:
    """Per-row MoI state of a persistent batch of up to `max_rows` requests, and the requests' histories.

    Host arrays (numpy, length max_rows) are the index source; device tensors mirror the settings.

    The protocol, one step at a time (`phase`; a call out of this order raises HookOrderError, as vLLM's
    BatchUpdateBuilder does, instead of mixing into the wrong rows):
      idle:      `finish(req_id)` and `apply_update(...)` (the batch changes, between steps), any number of times;
      1. `plan(...)` -> FeedPlan: the rows to overwrite now (`write_buffer`, `write_from_history`); when MoI rows
         sample this step the phase becomes "planned", else it stays idle;
      2. `take_plan()` -> StepPlan (None when idle): "planned" -> "sampling";
      3. `mix_target(plan, ...)`, then `record(plan, ...)` with the plan taken: "sampling" -> idle.
    Introspection (`stats`, `history`, `mixed_from_history`) may come at any time.

    One class over the house's ~250 lines, on purpose: every method reads and writes the same per-row arrays, and
    the steady decode step's speed comes from keeping them in one place. What stands alone lives apart: history.py
    (pages, a request's history, the recompute bound), host_reads.py, and the protocol's FeedPlan / StepPlan.
    """

    def __init__(self, max_rows: int, device: torch.device | str = "cpu", record: bool = False):
        self.max_rows, self.device = max_rows, torch.device(device)
        self.record_all = record  # keep finished requests' histories (tests, debugging)
        r = max_rows
        self.req: list[RequestHistory | None] = [None] * r  # the MoI request in each row
        self.mixes = np.zeros(r, dtype=bool)
        self.mode = np.zeros(r, dtype=np.int64)
        self.beta = np.zeros(r, dtype=np.float32)
        self.top_k = np.ones(r, dtype=np.int64)
        self.switched = np.zeros(r, dtype=bool)  # a switch away from the paper's MoI (MoIConfig.switched)
        self.prompt_len = np.zeros(r, dtype=np.int64)
        self.length = np.zeros(r, dtype=np.int64)
        self.fed = np.zeros(r, dtype=np.int64)
        self.page = np.zeros(r, dtype=np.int64)  # the page that holds token `length` (when length % PAGE)
        self.buffer_valid = np.zeros(r, dtype=bool)  # buffer row holds the mixed input of token length - 1
        self.requests: dict[str, RequestHistory] = {}  # live MoI requests, in a row or preempted
        self.pools: dict[int, PagePool] = {}
        self.buffer: torch.Tensor | None = None  # [max_rows, D] the next step's mixed inputs
        self._dev: dict[str, torch.Tensor] = {}  # device mirrors of mode/beta/top_k
        self._dirty = True  # the device mirrors need a refresh (the batch changed)
        self._steady: tuple | None = None  # (num_reqs, rows) of the last all-decode step, until the batch changes
        self._config_key: tuple | None = None
        self._cached: tuple = ()
        self._pinned: torch.Tensor | None = None
        self._stage_off = 0
        self.phase = IDLE
        self._pending: StepPlan | None = None  # the step's plan, from plan() to record()
        self.applied_steps = 0  # generated positions fed as mixed inputs for the first time
        self.recomputed_steps = 0  # ... fed again (recompute after preemption)
        self.rewound_tokens = 0  # tokens cut from histories because the engine went back on them
        self.moves = self.swaps = 0  # batch rows moved / swapped while a MoI request was in the batch
        self.finished: dict[str, int] = {}  # req_id -> tokens fed (bounded)
        self.finished_records: dict[str, tuple[torch.Tensor, ...]] = {}  # req_id -> (ids, weights, H)
        self.max_finished = 4096
        # The records of requests that asked for them (moi_record: a switched lane's weights cannot be rebuilt from
        # returned log-probs), kept at finish until read (`records_of`), the oldest dropped past MAX_KEPT_RECORDS.
        self.kept_records: dict[str, tuple[torch.Tensor, ...]] = {}
        self.tokens_total = self.bytes_total = 0  # history held by finished requests, summed
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
        if not self.mixes.any() and all(cfg is None for _, cfg in added):
            return  # no MoI request before or after: nothing to track
        for row in removed:
            self._detach(row)
        pending: dict[int, MoIConfig] = {}
        for row, cfg in added:
            self._detach(row)
            if cfg is not None:
                pending[row] = cfg
        for a, b, direction in moved:
            if str(getattr(direction, "name", direction)).lower() == SWAP:
                self.swaps += 1
                self._swap(a, b)
                pa, pb = pending.pop(a, None), pending.pop(b, None)
                if pa is not None:
                    pending[b] = pa
                if pb is not None:
                    pending[a] = pb
            else:
                self.moves += 1
                self._detach(b)
                self._move(a, b)
                if a in pending:
                    pending[b] = pending.pop(a)
        for row, cfg in pending.items():
            req_id, prompt_len, owner = identify(row)
            self._attach(row, self._history(req_id, cfg, prompt_len, owner))
        self._dirty = True

    def _history(self, req_id: str, config: MoIConfig, prompt_len: int, owner: Any) -> RequestHistory:
        hist = self.requests.get(req_id)
        if hist is not None and (hist.owner is not owner or hist.prompt_len != prompt_len or hist.config != config):
            # Same id, another request (abort + resubmit) or a resumed session (the prompt grew to hold
            # the earlier output): nothing of the old history stands.
            self._release(hist)
            hist = None
        if hist is None:
            hist = self.requests[req_id] = RequestHistory(req_id, config, prompt_len, owner)
        return hist

    def _attach(self, row: int, hist: RequestHistory) -> None:
        self.req[row], hist.row = hist, row
        self.mixes[row] = True
        self.mode[row] = MODE_CODES[hist.config.mode]
        self.beta[row] = max(hist.config.beta, 0.0)
        self.top_k[row] = hist.config.top_k
        self.switched[row] = hist.config.switched
        self.prompt_len[row] = hist.prompt_len
        self.length[row] = hist.length
        self.fed[row] = hist.fed
        self.page[row] = hist.pages[hist.length // PAGE] if hist.length % PAGE else -1
        self.buffer_valid[row] = False

    def _sync(self, row: int) -> None:
        """Host arrays of `row` -> its request (before the row changes hands)."""
        hist = self.req[row]
        if hist is not None:
            hist.length, hist.fed = int(self.length[row]), int(self.fed[row])

    def _detach(self, row: int) -> None:
        self._sync(row)
        if self.req[row] is not None:
            self.req[row].row = -1
        self.req[row] = None
        self.mixes[row] = False
        self.buffer_valid[row] = False

    _ROW_ARRAYS = ("mixes", "mode", "beta", "top_k", "switched", "prompt_len", "length", "fed", "page", "buffer_valid")

    def _move(self, a: int, b: int) -> None:
        self.req[b], self.req[a] = self.req[a], None
        if self.req[b] is not None:
            self.req[b].row = b
        for name in self._ROW_ARRAYS:
            arr = getattr(self, name)
            arr[b] = arr[a]
        if self.buffer_valid[b] and self.buffer is not None:
            self.buffer[b].copy_(self.buffer[a])  # int indices: views, a device copy (no host index tensor)
        self.mixes[a] = self.buffer_valid[a] = False

    def _swap(self, a: int, b: int) -> None:
        self.req[a], self.req[b] = self.req[b], self.req[a]
        for row in (a, b):
            if self.req[row] is not None:
                self.req[row].row = row
        for name in self._ROW_ARRAYS:
            arr = getattr(self, name)  # host numpy: fancy indexing is free here
            arr[[a, b]] = arr[[b, a]]
        if (self.buffer_valid[a] or self.buffer_valid[b]) and self.buffer is not None:
            # Never `buffer[[a, b]] = buffer[[b, a]]`: a list index becomes a pageable host tensor copied to the
            # device (a stream sync on CUDA). Row views and device copies only.
            row_a = self.buffer[a].clone()
            self.buffer[a].copy_(self.buffer[b])
            self.buffer[b].copy_(row_a)

    def finish(self, req_id: str) -> None:
        """The request ended (finished or aborted): free its history, keep its count (and records)."""
        self._expect(IDLE, "finish")
        hist = self.requests.get(req_id)
        if hist is None:
            return
        if hist.row >= 0:
            self._detach(hist.row)
            self._dirty = True
        self.finished[req_id] = hist.fed
        if hist.length:
            self.tokens_total += hist.length
            self.bytes_total += hist.length * self.pools[hist.width].bytes_per_token
        if self.record_all:
            self.finished_records[req_id] = self._held(hist)  # read on the host only when asked (stats)
        if hist.config.keep_record and not hist.read:
            self.kept_records[req_id] = self._held(hist)
        self._release(hist)
        for store, most in (
            (self.finished, self.max_finished),
            (self.finished_records, self.max_finished),
            (self.kept_records, MAX_KEPT_RECORDS),
        ):
            while len(store) > most:
                store.pop(next(iter(store)))

    def _release(self, hist: RequestHistory) -> None:
        if hist.pages:
            self.pools[hist.width].release(hist.pages)
        hist.pages, hist.length = [], 0
        if self.requests.get(hist.req_id) is hist:
            del self.requests[hist.req_id]

    # -- one step ------------------------------------------------------------------------------------------

    def _to_device(self, *arrays: np.ndarray, staged: bool = True) -> list[torch.Tensor]:
        """Host int64 arrays -> device tensors in one copy: from a pinned staging buffer, non_blocking, off
        the CPU. The staging buffer is reused from the start at every `plan()`: the engine calls `plan`
        only after the previous step's input copies are done (vLLM's `synchronize_input_prep`). Calls from
        outside a step (introspection) pass staged=False."""
        arrays = tuple(np.asarray(a, dtype=np.int64) for a in arrays)
        if self.device.type == "cpu":
            return [torch.from_numpy(a.copy()) for a in arrays]
        sizes = [a.size for a in arrays]
        total = sum(sizes)
        flat = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if not staged:  # a fresh pinned tensor: torch's host allocator keeps it until the copy is done
            pinned = torch.from_numpy(flat.copy()).pin_memory()
            return list(torch.split(pinned.to(self.device, non_blocking=True), sizes))
        if self._pinned is None or self._pinned.numel() < self._stage_off + total:
            self._pinned = torch.empty(
                max(2 * (self._stage_off + total), 8 * self.max_rows), dtype=torch.int64, pin_memory=True
            )
            self._stage_off = 0
        host = self._pinned[self._stage_off : self._stage_off + total]
        self._stage_off += total
        host.numpy()[:] = flat
        return list(torch.split(host.to(self.device, non_blocking=True), sizes))

    def _device_settings(self) -> dict[str, torch.Tensor]:
        if self._dirty:
            mode, top_k = self._to_device(self.mode, self.top_k)
            beta = torch.from_numpy(self.beta.copy())  # on batch changes only
            if self.device.type != "cpu":
                beta = beta.pin_memory().to(self.device, non_blocking=True)
            self._dev = {"mode": mode, "top_k": top_k, "beta": beta}
            self._dirty = False
            self._config_key = None
        return self._dev

    def plan(self, num_reqs: int, num_computed: np.ndarray, num_scheduled: np.ndarray, samples: np.ndarray) -> FeedPlan:
        """Step 1: plan the step of a batch of `num_reqs` rows, each computing positions [num_computed,
        num_computed + num_scheduled) and, where `samples`, sampling its next token."""
        self._expect(IDLE, "plan")
        if not self.requests:  # no MoI request alive: nothing to do (the plugin's whole cost for other requests)
            return _NO_FEED
        self._stage_off = 0
        feed = None
        if self._steady is not None and not self._dirty and self._steady[0] == num_reqs:
            feed = self._plan_steady(num_computed, num_scheduled, samples)
        feed = feed or self._plan_general(num_reqs, num_computed, num_scheduled, samples)
        if self._pending is not None:
            self.phase = PLANNED
        return feed

    def _expect(self, phase: str, call: str) -> None:
        if self.phase != phase:
            raise HookOrderError(
                f"moi-demo: BatchState.{call}() in phase {self.phase!r} (expected {phase!r}): "
                "the hooks ran out of order (plan -> take_plan -> record, batch changes between "
                "steps)"
            )

    def _plan_steady(self, num_computed: np.ndarray, num_scheduled: np.ndarray, samples: np.ndarray) -> FeedPlan | None:
        """The common step: the same MoI rows as last step, each decoding its next token (one scheduled
        position: its last sample, whose mixed input the buffer holds). A handful of numpy ops."""
        num_reqs, rows, zeros = self._steady
        length = self.length[rows]
        if not (num_scheduled[rows] == 1).all() or not samples[rows].all() or (length % PAGE == 0).any():
            return None
        if not np.array_equal(num_computed[rows], self.prompt_len[rows] + length - 1):
            return None
        self.applied_steps += int(np.count_nonzero(self.fed[rows] < length))
        self.fed[rows] = length
        flat = self.page[rows] * PAGE + length % PAGE
        self._pending = self._finish_plan(rows, num_reqs, flat)
        return FeedPlan(rows, zeros, [])

    def _plan_general(
        self, num_reqs: int, num_computed: np.ndarray, num_scheduled: np.ndarray, samples: np.ndarray
    ) -> FeedPlan:
        """Any step: the input rows to overwrite, and the sampling plan kept for `take_plan`."""
        mix = self.mixes[:num_reqs]
        rows = np.flatnonzero(mix)
        if rows.size == 0:
            return _NO_FEED
        first = num_computed[rows].astype(np.int64)
        n = num_scheduled[rows].astype(np.int64)
        plen = self.prompt_len[rows]
        end = first + n  # [M] one past the last scheduled position
        j_lo = np.maximum(first - plen, 0)  # first generated token scheduled
        j_hi = end - 1 - plen  # last generated token scheduled (< j_lo: none)
        length = self.length[rows]
        sampling = samples[rows]
        # Every generated token scheduled must be held; a sampling row appends token end - plen next.
        missing = (j_hi >= length) & (j_hi >= j_lo)
        if missing.any():
            row = int(rows[np.flatnonzero(missing)[0]])
            raise RuntimeError(
                f"moi-demo: request {self.req[row].req_id} has no mixed input for "
                f"generated token {int(self.length[row])}"
            )
        fast = (j_hi == j_lo) & (j_hi == length - 1) & self.buffer_valid[rows]
        fast_rows = rows[fast]
        fast_offsets = (n - 1)[fast]
        slow = []
        for i in np.flatnonzero(~fast & (j_hi >= j_lo)):  # recompute, chunked prefill over outputs: rare
            js = np.arange(j_lo[i], j_hi[i] + 1)
            slow.append((int(rows[i]), js, js + plen[i] - first[i]))
        # Fed counts: a token fed for the first time is applied, again is recomputed.
        new_fed = np.maximum(self.fed[rows], np.where(j_hi >= j_lo, j_hi + 1, 0))
        count = np.maximum(j_hi - j_lo + 1, 0)
        first_time = np.clip(new_fed - np.maximum(self.fed[rows], j_lo), 0, None)
        self.applied_steps += int(first_time.sum())
        self.recomputed_steps += int((count - first_time).sum())
        self.fed[rows] = new_fed
        # Rewinds: a sampling row whose history runs past its scheduled positions lost those tokens.
        rewound = sampling & (length > end - plen)
        for i in np.flatnonzero(rewound):
            self.truncate(int(rows[i]), int(end[i] - plen[i]))
        self._pending = self._plan_sampling(rows[sampling], num_reqs)
        steady = fast.all() and sampling.all() and (n == 1).all()
        self._steady = (num_reqs, rows, np.zeros(rows.size, dtype=np.int64)) if steady else None
        return FeedPlan(fast_rows, fast_offsets, slow)

    def truncate(self, row: int, keep: int) -> None:
        """Cut the history of the request in `row` to its first `keep` generated tokens."""
        hist = self.req[row]
        assert hist is not None
        self.rewound_tokens += int(self.length[row]) - keep
        logger.debug(
            "moi-demo: request %s rewound from %d to %d generated tokens", hist.req_id, int(self.length[row]), keep
        )
        n_pages = -(-keep // PAGE)
        self.pools[hist.width].release(hist.pages[n_pages:])
        del hist.pages[n_pages:]
        self.length[row] = hist.length = keep
        self.fed[row] = hist.fed = min(int(self.fed[row]), keep)
        self.page[row] = hist.pages[keep // PAGE] if keep % PAGE else -1
        self.buffer_valid[row] = False

    def _plan_sampling(self, rows: np.ndarray, num_reqs: int) -> StepPlan | None:
        if rows.size == 0:
            return None
        # Pages: a row whose next token starts a page gets one (host ints; every PAGE tokens per row).
        length = self.length[rows]
        for i in np.flatnonzero(length % PAGE == 0):
            row = int(rows[i])
            hist = self.req[row]
            pool = self.pools.get(hist.width) or self.pools.setdefault(hist.width, PagePool(hist.width, self.device))
            hist.pages.append(pool.alloc())
            self.page[row] = hist.pages[-1]
        return self._finish_plan(rows, num_reqs, self.page[rows] * PAGE + length % PAGE)

    def _finish_plan(self, rows: np.ndarray, num_reqs: int, flat: np.ndarray) -> StepPlan:
        """The sampling plan of `rows`, whose next tokens go to pool rows `flat` [M]. What depends on the
        rows alone (settings, width groups, device indices) is built once per batch."""
        dev = self._device_settings()
        key = (num_reqs, rows.tobytes())
        if key != self._config_key:
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            span = slice(lo, hi) if hi - lo == rows.size else None  # rows is sorted and distinct: a run when it fits
            rows_t = None if span else self._to_device(rows, staged=False)[0]
            k = self.top_k[rows]
            widths = np.unique(k) + 1
            groups = [(int(w), np.flatnonzero(k + 1 == w)) for w in widths]  # one per distinct k: usually one
            sels_t = [self._to_device(sel, staged=False)[0] for _, sel in groups] if len(groups) > 1 else [None]
            mode = dev["mode"][span] if span else dev["mode"].index_select(0, rows_t)
            beta = dev["beta"][span] if span else dev["beta"].index_select(0, rows_t)
            top_k = dev["top_k"][span] if span else dev["top_k"].index_select(0, rows_t)
            switches = None
            if self.switched[rows].any():  # built on batch changes only; a request without a seed: one from its id
                hists = [self.req[r] for r in rows]
                switches = mixing.Switches.from_configs(
                    [h.config for h in hists], self.device, [zlib.crc32(h.req_id.encode()) for h in hists]
                )
            config = BatchConfig.from_tensors(
                mode,
                beta,
                top_k,
                k_max=int(k.max()),
                uniform_k=len(widths) == 1,
                all_moi=bool((self.mode[rows] == MODE_MOI).all()),
                switches=switches,
            )
            self._config_key, self._cached = key, (config, span, rows_t, groups, sels_t)
        config, span, rows_t, groups, sels_t = self._cached
        noised = config.switches is not None and config.switches.any_noise
        parts = [flat] if len(groups) == 1 else [flat[sel] for _, sel in groups]
        flats = self._to_device(*parts, *([self.length[rows]] if noised else []))
        positions = flats.pop() if noised else None  # the next token's index: the noise's counter
        write_t = {w: (sel_t, f) for (w, _), sel_t, f in zip(groups, sels_t, flats, strict=True)}
        return StepPlan(rows, span, rows_t, config, write_t, positions)

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
        self.ensure_buffer(hidden, dtype, device)
        if plan.span is not None:
            return self.buffer[plan.span]
        return torch.empty(plan.rows.size, hidden, dtype=dtype, device=device)

    def ensure_buffer(self, hidden: int, dtype: torch.dtype, device: torch.device) -> None:
        if self.buffer is None or self.buffer.shape[1] != hidden or self.buffer.dtype != dtype:
            self.buffer = torch.zeros(self.max_rows, hidden, dtype=dtype, device=device)
            self.buffer_valid[:] = False

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
        self.ensure_buffer(mixed.shape[1], mixed.dtype, mixed.device)
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
            target = self.buffer[plan.span]
            if mixed.data_ptr() != target.data_ptr():  # not written in place (mix_target)
                target.copy_(mixed)
        else:
            self.buffer.index_copy_(0, plan.rows_t, mixed)
        for width, (sel, flat) in plan.write_t.items():
            pool = self.pools[width]
            ids = candidate_ids if candidate_ids.shape[1] == width else candidate_ids[:, :width]
            w = weights if weights.shape[1] == width else weights[:, :width]
            h = entropy
            if sel is not None:
                ids, w = ids.index_select(0, sel), w.index_select(0, sel)
                h = h.index_select(0, sel) if h is not None else None
            pool.ids_flat.index_copy_(0, flat, ids if ids.dtype == torch.int32 else ids.to(torch.int32))
            pool.weights_flat.index_copy_(0, flat, w if w.dtype == torch.float32 else w.float())
            if h is not None:
                pool.entropy_flat.index_copy_(0, flat, h if h.dtype == torch.float32 else h.float())

    def recorded(self, plan: StepPlan) -> None:
        """The host side of `record` (its device side written, by `write_record` or a graph replay of it): the
        planned rows hold one more token, buffered; the phase returns to idle."""
        self.check_plan(plan)
        self._advance(plan)

    def _advance(self, plan: StepPlan) -> None:
        """The planned rows hold one more token, buffered; the phase returns to idle (the plan checked)."""
        self.phase, self._pending = IDLE, None
        rows = plan.rows
        if plan.span is not None:
            self.length[plan.span] += 1
            self.buffer_valid[plan.span] = True
        else:
            self.length[rows] += 1
            self.buffer_valid[rows] = True

    def write_buffer(self, out: torch.Tensor, rows: np.ndarray, targets: np.ndarray, num_reqs: int) -> None:
        """Copy the buffered mixed inputs of `rows` [F] (their last samples') into rows `targets` [F] of `out`."""
        m = rows.size
        if m == num_reqs and targets[-1] == m - 1:  # rows 0..m-1, one token each: a slice copy
            out[:m].copy_(self.buffer[:m])
        else:
            rows_t, targets_t = self._to_device(rows, targets)
            out.index_copy_(0, targets_t, self.buffer.index_select(0, rows_t))

    def recompute_chunk(self, width: int, hidden: int, dtype: torch.dtype) -> int:
        """Tokens per chunk of a recompute: the most whose temporaries fit RECOMPUTE_BYTES (at least one)."""
        return max(1, RECOMPUTE_BYTES // recompute_bytes_per_token(width, hidden, dtype))

    def write_from_history(
        self,
        row: int,
        js: np.ndarray,
        embed: Callable[[torch.Tensor], torch.Tensor],
        out: torch.Tensor,
        targets: np.ndarray,
        reduce: mixing.Reduce | None = None,
    ) -> None:
        """Rebuild the mixed inputs of generated tokens js [n] of the request in `row` from its history, through
        the model's own embedding, into rows `targets` [n] of `out` [N, D] (recompute after preemption, chunked
        prefill over outputs). In chunks: the temporaries never exceed max(RECOMPUTE_BYTES, one token's), whatever
        n is (vLLM may schedule a whole max_num_batched_tokens of it). `embed` and `reduce` as in mixing.fed_step (a
        rank's shards, then the all-reduce of the mixed [c, D]): the same sum as the step that first fed them."""
        hist = self.req[row]
        assert hist is not None
        step = self.recompute_chunk(hist.width, out.shape[1], out.dtype)
        for lo in range(0, js.size, step):
            ids, w, _ = self._read(hist, js[lo : lo + step])  # [c, C] int32, [c, C] float32
            mixed = mixing.mix_embeddings(w, ids.long(), embed, out_dtype=out.dtype, reduce=reduce)  # [c, D]
            (targets_t,) = self._to_device(targets[lo : lo + step])
            out.index_copy_(0, targets_t, mixed)

    def mixed_from_history(
        self, row: int, js: np.ndarray, embed: Callable[[torch.Tensor], torch.Tensor], out_dtype: torch.dtype
    ) -> torch.Tensor:
        """Mixed inputs [len(js), D] of generated tokens js of the request in `row` (tests, introspection: the
        engine writes them in bounded chunks with `write_from_history`)."""
        hist = self.req[row]
        assert hist is not None
        ids, w, _ = self._read(hist, js, staged=False)
        return mixing.mix_embeddings(w, ids.long(), embed, out_dtype=out_dtype)

    def _read(self, hist: RequestHistory, js: np.ndarray, staged: bool = True) -> tuple[torch.Tensor, ...]:
        """(ids [n, C] int32, weights [n, C], H [n]) of generated tokens js [n]."""
        pool = self.pools[hist.width]
        (flat,) = self._to_device(pool.flat(hist.pages, js), staged=staged)
        return (
            pool.ids_flat.index_select(0, flat),
            pool.weights_flat.index_select(0, flat),
            pool.entropy_flat.index_select(0, flat),
        )

    # -- introspection -------------------------------------------------------------------------------------

    def history(self, hist: RequestHistory) -> list[tuple[list[int], list[float]]]:
        """(candidate ids, weights) per generated token held, one weight per distinct id (a device read:
        tests and debugging only). The sampled id is stored in its own column: its weights add up."""
        return merged(*self._held(hist)[:2])

    def _held(self, hist: RequestHistory) -> tuple[torch.Tensor, ...]:
        """A copy of the request's held (candidate ids [n, C], weights [n, C], H [n]), on the device (no host
        read)."""
        if hist.row >= 0:
            self._sync(hist.row)
        if hist.length == 0:
            empty = torch.zeros(0, hist.width)
            return empty.int(), empty, torch.zeros(0)
        return self._read(hist, np.arange(hist.length), staged=False)

    def records_of(self, prefixes: Sequence[str]) -> dict[str, dict[str, list]]:
        """What was fed, per generated token, to the requests vLLM runs under the ids `prefixes` (live, or
        finished and kept: `moi_record`). A record is handed out once: a live request read is not kept at its finish
        (the engine reads a lane when its last token is out): {req_id: {"candidates": [n][..],
        "weights": [n][..], "entropy": [n]}}, one weight per distinct id. A device read: on request only."""

        def asked(req_id: str) -> bool:  # vLLM's internal id: the request's own, then "-" and a random suffix
            return any(req_id == p or req_id.startswith(p + "-") for p in prefixes)

        found: dict[str, tuple[torch.Tensor, ...]] = {}
        for req_id in [r for r in self.kept_records if asked(r)]:
            found[req_id] = self.kept_records.pop(req_id)
        for req_id, hist in self.requests.items():
            if asked(req_id):
                found[req_id] = self._held(hist)
                hist.read = True
        # One device read for the whole call: every record's ids, weights and H packed into one float64 tensor
        # (exact for int32 ids and float32 values), read once, split on the host.
        parts = [t.reshape(-1).to(torch.float64) for held in found.values() for t in held]
        flat = torch.cat(parts).tolist() if parts else []
        out, at = {}, 0
        for req_id, (ids, _, _) in found.items():
            n, width = ids.shape
            ids_h = [[int(x) for x in flat[at + i * width : at + (i + 1) * width]] for i in range(n)]
            at += n * width
            weights_h = [flat[at + i * width : at + (i + 1) * width] for i in range(n)]
            at += n * width
            rows = merged(ids_h, weights_h)
            out[req_id] = {
                "candidates": [c for c, _ in rows],
                "weights": [w for _, w in rows],
                "entropy": flat[at : at + n],
            }
            at += n
        return out

    def stats(self, records: bool = False) -> dict[str, Any]:
        for row, r in enumerate(self.req):
            if r is not None:
                self._sync(row)
        live = self.requests.values()
        tokens = sum(h.length for h in live)
        history_bytes = sum(h.length * self.pools[h.width].bytes_per_token for h in live if h.length)
        pool_bytes = sum(p.capacity * PAGE * p.bytes_per_token for p in self.pools.values())
        buffer_bytes = 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()
        all_tokens, all_bytes = tokens + self.tokens_total, history_bytes + self.bytes_total
        out: dict[str, Any] = {
            "applied_steps": int(self.applied_steps),  # plain ints: the stats cross process boundaries
            "recomputed_steps": int(self.recomputed_steps),
            "rewound_tokens": int(self.rewound_tokens),
            "moves": int(self.moves),
            "swaps": int(self.swaps),
            "requests": {**self.finished, **{r: int(h.fed) for r, h in self.requests.items()}},
            "memory": {  # live: what MoI holds now; bytes_per_token: over every request so far
                "history_tokens": tokens,
                "history_bytes": history_bytes,
                "pool_bytes": pool_bytes,
                "buffer_bytes": buffer_bytes,
                "total_bytes": pool_bytes + buffer_bytes,
                "bytes_per_token": all_bytes / all_tokens if all_tokens else 0.0,
            },
            "host_reads": None if self.host_reads is None else dict(self.host_reads.counts),
            "hook_seconds": self.hook_seconds,
        }
        if records:
            out["records"] = {
                **{r: merged(*held[:2]) for r, held in self.finished_records.items()},
                **{r: self.history(h) for r, h in self.requests.items()},
            }
        return out
