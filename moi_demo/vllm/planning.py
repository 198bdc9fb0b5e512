"""A step's plan, made on the host before the forward pass from the positions the engine schedules: which input rows
to overwrite with mixed inputs (`FeedPlan`) and what the sampling step mixes and where it writes (`StepPlan`). Pure
torch + numpy."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from moi_demo.core.batch_config import BatchConfig, Switches
from moi_demo.core.config import MODE_MOI
from moi_demo.vllm.history import PAGE
from moi_demo.vllm.records import HistoryStore
from moi_demo.vllm.rows import RowTable
from moi_demo.vllm.staging import Staging

logger = logging.getLogger("moi_demo.vllm.planning")


class FeedPlan(NamedTuple):
    """The input rows to overwrite before the forward pass. Offsets are relative to each row's first scheduled
    token."""

    fast_rows: np.ndarray  # [F] rows whose next input is the buffered mixed input of their last sample
    fast_offsets: np.ndarray  # [F] where that input sits among the row's scheduled tokens
    slow: list[tuple[int, np.ndarray, np.ndarray]]  # (row, generated token indices [n], offsets [n]): from history

    @property
    def empty(self) -> bool:
        return not self.fast_rows.size and not self.slow


NO_FEED = FeedPlan(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), [])


@dataclass
class StepPlan:
    """What one step's sampling does: handed to the sampler hook by `BatchState.take_plan()`, back to the state by
    `record()`."""

    rows: np.ndarray  # [M] batch rows that sample this step and mix (in row order)
    span: slice | None  # rows == arange(lo, hi) (contiguous: every row of the batch, or a run of them): the step
    # reads and writes row views, no gather
    rows_t: torch.Tensor | None  # [M] long on the device (None when span)
    config: BatchConfig | None  # of `rows`
    write_t: dict[int, tuple[torch.Tensor | None, torch.Tensor]]  # width -> (positions in rows [G] or None
    # for all of them, pool rows [G])
    positions: torch.Tensor | None = None  # [M] long: each row's generated-token index (where a row draws)
    forced: torch.Tensor | None = None  # [M] long: the token a forced row samples this step (-1: its own)


@dataclass
class Counts:
    applied_steps: int = 0  # generated positions fed as mixed inputs for the first time
    recomputed_steps: int = 0  # ... fed again (recompute after preemption)
    rewound_tokens: int = 0  # tokens cut from histories because the engine went back on them
    moves: int = 0  # batch rows moved while a MoI request was in the batch
    swaps: int = 0  # ... swapped
    step_seconds: float = 0.0  # wall time from one engine step to the next while a MoI request is alive
    timed_steps: int = 0  # ... the steps it covers (moi_stats: the engine's time per step, live in the app)


class Planner:
    """Plans each step of the batch in `rows`. Positions, not counters, are the truth: each step the engine says
    which sequence positions of a request it computes (`num_computed`, `num_scheduled`); generated token j sits at
    position prompt_len + j. A request whose scheduled positions are behind its history was rewound (preemption, a
    dropped stale output, a resumed session): its history is cut to the tokens that stand.

    What depends on the batch's rows alone (device settings, the step's BatchConfig, width groups, index tensors) is
    built once per batch: `changed()` marks it stale. The steady decode step (the same rows, one token each) is a
    handful of numpy ops."""

    def __init__(self, rows: RowTable, store: HistoryStore, staging: Staging, counts: Counts):
        self.rows, self.store, self.staging, self.counts = rows, store, staging, counts
        self.device = store.device
        self.dirty = True  # the device settings need a refresh (the batch changed)
        self.steady: tuple | None = None  # (num_reqs, rows, zeros) of the last all-decode step
        self.settings: dict[str, torch.Tensor] = {}  # device mirrors of mode / beta / top_k
        self.config_key: tuple | None = None
        self.cached: tuple = ()  # (config, span, rows_t, groups, sels_t) of config_key

    def changed(self) -> None:
        self.dirty = True

    def plan(
        self, num_reqs: int, num_computed: np.ndarray, num_scheduled: np.ndarray, samples: np.ndarray
    ) -> tuple[FeedPlan, StepPlan | None]:
        self.staging.reset()
        if self.steady is not None and not self.dirty and self.steady[0] == num_reqs:
            planned = self._steady(num_computed, num_scheduled, samples)
            if planned is not None:
                return planned
        return self._general(num_reqs, num_computed, num_scheduled, samples)

    def _steady(
        self, num_computed: np.ndarray, num_scheduled: np.ndarray, samples: np.ndarray
    ) -> tuple[FeedPlan, StepPlan] | None:
        """The same MoI rows as last step, each decoding its next token (one scheduled position: its last sample,
        whose mixed input the buffer holds); None when this step is not that."""
        t = self.rows
        num_reqs, rows, zeros = self.steady
        length = t.length[rows]
        if not (num_scheduled[rows] == 1).all() or not samples[rows].all() or (length % PAGE == 0).any():
            return None
        if not np.array_equal(num_computed[rows], t.prompt_len[rows] + length - 1):
            return None
        self.counts.applied_steps += int(np.count_nonzero(t.fed[rows] < length))
        t.fed[rows] = length
        flat = t.page[rows] * PAGE + length % PAGE
        return FeedPlan(rows, zeros, []), self._step_plan(rows, num_reqs, flat)

    def _general(
        self, num_reqs: int, num_computed: np.ndarray, num_scheduled: np.ndarray, samples: np.ndarray
    ) -> tuple[FeedPlan, StepPlan | None]:
        t = self.rows
        rows = np.flatnonzero(t.mixes[:num_reqs])
        if rows.size == 0:
            return NO_FEED, None
        first = num_computed[rows].astype(np.int64)
        n = num_scheduled[rows].astype(np.int64)
        plen = t.prompt_len[rows]
        end = first + n  # [M] one past the last scheduled position
        j_lo = np.maximum(first - plen, 0)  # first generated token scheduled
        j_hi = end - 1 - plen  # last generated token scheduled (< j_lo: none)
        length = t.length[rows]
        sampling = samples[rows]
        # Every generated token scheduled must be held; a sampling row appends token end - plen next.
        missing = (j_hi >= length) & (j_hi >= j_lo)
        if missing.any():
            row = int(rows[np.flatnonzero(missing)[0]])
            raise RuntimeError(
                f"moi-demo: request {t.req[row].req_id} has no mixed input for generated token {int(t.length[row])}"
            )
        fast = (j_hi == j_lo) & (j_hi == length - 1) & t.buffer_valid[rows]
        slow = []
        for i in np.flatnonzero(~fast & (j_hi >= j_lo)):  # recompute, chunked prefill over outputs: rare
            js = np.arange(j_lo[i], j_hi[i] + 1)
            slow.append((int(rows[i]), js, js + plen[i] - first[i]))
        # Fed counts: a token fed for the first time is applied, again is recomputed.
        new_fed = np.maximum(t.fed[rows], np.where(j_hi >= j_lo, j_hi + 1, 0))
        count = np.maximum(j_hi - j_lo + 1, 0)
        first_time = np.clip(new_fed - np.maximum(t.fed[rows], j_lo), 0, None)
        self.counts.applied_steps += int(first_time.sum())
        self.counts.recomputed_steps += int((count - first_time).sum())
        t.fed[rows] = new_fed
        # Rewinds: a sampling row whose history runs past its scheduled positions lost those tokens.
        for i in np.flatnonzero(sampling & (length > end - plen)):
            self.cut(int(rows[i]), int(end[i] - plen[i]))
        steady = fast.all() and sampling.all() and (n == 1).all()
        self.steady = (num_reqs, rows, np.zeros(rows.size, dtype=np.int64)) if steady else None
        return FeedPlan(rows[fast], (n - 1)[fast], slow), self._sampling(rows[sampling], num_reqs)

    def cut(self, row: int, keep: int) -> None:
        """Cut the history of the request in `row` to its first `keep` generated tokens."""
        t = self.rows
        hist = t.req[row]
        self.counts.rewound_tokens += int(t.length[row]) - keep
        logger.debug("moi-demo: request %s rewound from %d to %d generated tokens", hist.req_id, t.length[row], keep)
        t.sync(row)
        self.store.cut(hist, keep)
        t.reload(row)

    def _sampling(self, rows: np.ndarray, num_reqs: int) -> StepPlan | None:
        if rows.size == 0:
            return None
        t = self.rows
        length = t.length[rows]
        for i in np.flatnonzero(length % PAGE == 0):  # a row whose next token starts a page gets one
            row = int(rows[i])
            t.page[row] = self.store.new_page(t.req[row])
        return self._step_plan(rows, num_reqs, t.page[rows] * PAGE + length % PAGE)

    def _device_settings(self) -> dict[str, torch.Tensor]:
        if self.dirty:
            t = self.rows
            mode, top_k = self.staging.to_device(t.mode, t.top_k)
            beta = torch.from_numpy(t.beta.copy())  # on batch changes only
            if self.device.type != "cpu":
                beta = beta.pin_memory().to(self.device, non_blocking=True)
            self.settings = {"mode": mode, "top_k": top_k, "beta": beta}
            self.dirty, self.config_key = False, None
        return self.settings

    def _step_plan(self, rows: np.ndarray, num_reqs: int, flat: np.ndarray) -> StepPlan:
        """The sampling plan of `rows`, whose next tokens go to pool rows `flat` [M]."""
        t = self.rows
        dev = self._device_settings()
        key = (num_reqs, rows.tobytes())
        if key != self.config_key:
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            span = slice(lo, hi) if hi - lo == rows.size else None  # rows is sorted and distinct: a run when it fits
            rows_t = None if span else self.staging.to_device(rows, staged=False)[0]
            k = t.top_k[rows]
            widths = np.unique(k) + 1
            groups = [(int(w), np.flatnonzero(k + 1 == w)) for w in widths]  # one per distinct k: usually one
            sels_t = [self.staging.to_device(s, staged=False)[0] for _, s in groups] if len(groups) > 1 else [None]
            mode, beta, top_k = (
                dev[n][span] if span else dev[n].index_select(0, rows_t) for n in ("mode", "beta", "top_k")
            )
            switches = None
            if t.switched[rows].any():  # built on batch changes only; a request without a seed: one from its id
                hists = [t.req[r] for r in rows]
                seeds = [zlib.crc32(h.req_id.encode()) for h in hists]
                switches = Switches.from_configs([h.config for h in hists], self.device, seeds)
            config = BatchConfig.from_tensors(
                mode,
                beta,
                top_k,
                k_max=int(k.max()),
                uniform_k=len(widths) == 1,
                all_moi=bool((t.mode[rows] == MODE_MOI).all()),
                switches=switches,
            )
            self.config_key, self.cached = key, (config, span, rows_t, groups, sels_t)
        config, span, rows_t, groups, sels_t = self.cached
        noised = config.switches is not None and config.switches.needs_positions
        parts = [flat] if len(groups) == 1 else [flat[sel] for _, sel in groups]
        flats = self.staging.to_device(*parts, *([t.length[rows]] if noised else []))
        positions = flats.pop() if noised else None  # the next token's index: the noise's counter
        write_t = {w: (sel_t, f) for (w, _), sel_t, f in zip(groups, sels_t, flats, strict=True)}
        return StepPlan(rows, span, rows_t, config, write_t, positions, self._forced(rows))

    def _forced(self, rows: np.ndarray) -> torch.Tensor | None:
        """[M] the token each forced row samples next (its force list at its next index; -1 once it runs out, and for
        the rows that sample their own), None when no row of the step is forced. A host loop over forced rows."""
        t = self.rows
        forced = t.forced[rows]
        if not forced.any():
            return None
        ids = np.full(rows.size, -1, dtype=np.int64)
        for i in np.flatnonzero(forced):
            force, j = t.req[rows[i]].config.force, int(t.length[rows[i]])
            ids[i] = force[j] if j < len(force) else -1
        return self.staging.to_device(ids)[0]
