"""The device work of one MoI step, as vLLM's sampler runs it: eager, or replayed from CUDA graphs. Pure torch.

Two parts, split where the sampler samples (vllm/hooks.py calls them; bench/hook_math.py and the tests drive them the
same way without vLLM):

    tap(plan, logits [B, V])             before sampling: the prior's top-k [M, K] of the plan's rows and the
                                         switched extras (mixing.topk_logits, mixing.prior_extras)
    mix(plan, tapped, sampled, embed)    after: the weights and the mixed inputs (mixing.fed_step) into the
                                         next-input buffer and the history pages (BatchState.write_record), then
                                         BatchState.recorded on the host

A steady decode step repeats the same ops on tensors of the same shapes, ~25 kernel launches and their Python, which
on a GPU costs more host time than device time. Where graphs are on (CUDA by default), once a batch's rows and
settings have held for CAPTURE_AFTER steps, each part is captured in a CUDA graph over static inputs, and every later
step of that batch is three small copies into them (logits, sampled ids, history rows) and two replays. A capture
that fails logs one line and the step runs eager from then on; a batch change, a grown history pool or a new input
buffer drops the graph (the next steady stretch captures again). Captured and eager steps give the same values
(tests/test_step.py, and the GPU tier's capture test).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils._pytree import tree_leaves

from moi_demo.core import mixing
from moi_demo.vllm.batch_state import BatchState
from moi_demo.vllm.planning import StepPlan

logger = logging.getLogger("moi_demo.vllm.step")

CAPTURE_AFTER = 8  # steady steps of one batch before its graphs are captured (a capture costs a few ms of host)
ENV_GRAPHS = "MOI_DEMO_GRAPHS"  # "0": never capture; "1": capture wherever the device allows; unset: on CUDA


class Tapped(NamedTuple):
    """What the tap took from the logits before sampling: the prior's top-k ids and logits [M, K], and the extras."""

    ids: torch.Tensor
    top_logits: torch.Tensor
    extras: mixing.PriorExtras


class Graph(Protocol):
    """A recorded sequence of device work: `capture(fn)` records fn's work (fn runs as it is recorded only where the
    backend says so), `replay()` runs it again on whatever its input tensors hold."""

    def capture(self, fn: Callable[[], Any]) -> Any: ...

    def replay(self) -> None: ...


class CudaGraph:
    """A torch.cuda.CUDAGraph, captured on a side stream with `capture_begin` / `capture_end` (not the
    `torch.cuda.graph` context manager, which synchronizes the device, runs the garbage collector and empties the
    allocator's cache: costs a serving engine should not pay mid-run). The work runs once on that stream before the
    capture (warm-up: lazy initialisations happen outside it). Capture errors are thread-local (other threads may use
    CUDA meanwhile). The sync checks (`set_sync_debug_mode`, vLLM's VLLM_GPU_SYNC_CHECK) are set aside around the
    capture and restored."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], Any]) -> Any:
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())  # after whatever the step queued before
        try:
            with torch.cuda.stream(side):
                fn()  # warm-up
                self.graph.capture_begin(capture_error_mode="thread_local")
                try:
                    out = fn()
                finally:
                    self.graph.capture_end()
        finally:
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.set_sync_debug_mode(mode)
        return out

    def replay(self) -> None:
        self.graph.replay()  # on the current stream


class EagerGraph:
    """The same protocol without a GPU: `capture` runs fn once and keeps its outputs, `replay` runs it again and
    copies the new values into them (as a CUDA graph's replay refills its outputs). The graph path's static inputs,
    outputs and invalidation are then tested on a CPU."""

    def __init__(self) -> None:
        self.fn: Callable[[], Any] | None = None
        self.out: Any = None

    def capture(self, fn: Callable[[], Any]) -> Any:
        self.fn, self.out = fn, fn()
        return self.out

    def replay(self) -> None:
        assert self.fn is not None
        for kept, new in zip(tree_leaves(self.out), tree_leaves(self.fn()), strict=True):
            if isinstance(kept, torch.Tensor):
                kept.copy_(new)


def graphs_wanted(device: torch.device) -> bool:
    """MOI_DEMO_GRAPHS: "0" off, "1" on, unset: on CUDA only."""
    flag = os.environ.get(ENV_GRAPHS, "")
    return flag == "1" or (flag == "" and device.type == "cuda")


@dataclasses.dataclass
class _Captured:
    """One batch's graphs and their static tensors. `plan` is the captured plan: its config's tensors are the graph's
    settings, its write_t points at `flat`, its positions at `positions`."""

    key: tuple  # holds id(plan.config): `plan` keeps that config alive, so the id stays its own while the graph lives
    plan: StepPlan
    logits: torch.Tensor  # [M, V] static input of the tap
    sampled: torch.Tensor  # [M, 1] static input of the mix
    flat: torch.Tensor  # [M] history rows the mix writes
    positions: torch.Tensor | None  # [M] noise counters (noised batches)
    guard: tuple = ()  # the buffer's and the pool's data pointers the mix graph writes into
    tap: Graph | None = None
    mix: Graph | None = None
    tapped: Tapped | None = None
    fed: mixing.Fed | None = None


class StepRunner:
    """Runs the device work of a BatchState's steps (module docstring): eager, or from graphs once a batch holds.

    `graphs`: capture graphs (None: `graphs_wanted`; pass False where `embed` is not one plain device function every
    step, e.g. under tensor parallelism, where the embedding all-reduces). `graph_type` makes a Graph (CudaGraph on
    CUDA, EagerGraph elsewhere). A step is graphed only where its shape allows: the plan's rows a run of the batch
    and one k (one history width)."""

    def __init__(self, state: BatchState, graphs: bool | None = None, graph_type: type | None = None):
        self.state = state
        self.graphs = graphs_wanted(state.device) if graphs is None else graphs
        self.graph_type = graph_type or (CudaGraph if state.device.type == "cuda" else EagerGraph)
        self.captured: _Captured | None = None
        self._seen: tuple[Any, int] = (None, 0)  # (config, consecutive eligible steps with it)
        self._graphed: _Captured | None = None  # the tap of this step ran from `captured`
        self.replays = self.captures = 0

    # -- the two parts ------------------------------------------------------------------------------------------

    def tap(self, plan: StepPlan, logits: torch.Tensor) -> Tapped:
        """Before sampling: the prior's top-k of the plan's rows of `logits` [B, V], and the extras."""
        self._graphed = None
        if plan.forced is not None:  # teacher forcing: the prior first, then the sampler left one token to draw
            tapped = tap_eager(plan, logits)
            force_tokens(plan, logits)
            return tapped
        cap = self._graph_for(plan, logits)
        if cap is None:
            return tap_eager(plan, logits)
        cap.logits.copy_(logits[plan.span])
        if cap.tap is None:
            if not self._capture(cap, "tap", lambda: tap_eager(_whole(cap.plan), cap.logits)):
                return tap_eager(plan, logits)
        else:
            cap.tap.replay()
        self._graphed = cap
        return cap.tapped

    def mix(
        self,
        plan: StepPlan,
        tapped: Tapped,
        sampled: torch.Tensor,
        embed: Callable[[torch.Tensor], torch.Tensor],
        like: torch.Tensor,
        reduce: mixing.Reduce | None = None,
    ) -> mixing.Fed:
        """After sampling (`sampled` [B] or [B, 1], the batch's): the weights, the mixed inputs (in `like`'s hidden
        size, dtype and device) into the next-input buffer, the step into the history; then the host's record.
        `reduce`: under tensor parallelism, the all-reduce of the mixed inputs (mixing.fed_step); never graphed."""
        state = self.state
        cap, self._graphed = self._graphed, None
        if cap is not None and tapped is cap.tapped and reduce is None:
            state.check_plan(plan)
            state.rows.ensure_buffer(like.shape[-1], like.dtype, like.device)
            if cap.mix is not None and cap.guard != self._guard(plan):
                cap.mix = None  # the buffer or the pool moved: capture the mix again
            self._load(cap, plan, sampled)
            if cap.mix is None:
                cap.guard = self._guard(plan)
                captured = self._capture(cap, "mix", lambda: self._mix_work(cap, embed))
            else:
                cap.mix.replay()
                self.replays += 1
                captured = True
            if captured:
                state.recorded(plan)
                return cap.fed
        mixed = state.mix_target(plan, like.shape[-1], like.dtype, like.device)  # [M, D]
        fed = mixing.fed_step(
            tapped.ids, tapped.top_logits, _rows(sampled, plan), plan.config, embed, mixed, tapped.extras, reduce
        )
        state.record(plan, fed.candidate_ids, fed.weights, mixed, fed.entropy)
        return fed

    # -- graphs -------------------------------------------------------------------------------------------------

    def _graph_for(self, plan: StepPlan, logits: torch.Tensor) -> _Captured | None:
        """The graphs of this step's batch: None until it has held CAPTURE_AFTER steps (or where graphs are off or
        the step's shape allows none)."""
        if not self.graphs:
            return None
        if plan.span is None or len(plan.write_t) != 1 or not plan.config.uniform_k:
            self._seen = (None, 0)
            return None
        key = (id(plan.config), plan.span.start, plan.span.stop, tuple(logits.shape[1:]), logits.dtype)
        if self.captured is not None and self.captured.key == key:
            return self.captured
        seen = self._seen[1] + 1 if self._seen[0] is plan.config else 1
        self._seen = (plan.config, seen)
        if seen < CAPTURE_AFTER:
            return None
        self.captured = self._statics(key, plan, logits)
        return self.captured

    def _statics(self, key: tuple, plan: StepPlan, logits: torch.Tensor) -> _Captured:
        ((width, (_, flat)),) = plan.write_t.items()
        m, dev = plan.rows.size, logits.device
        positions = None if plan.positions is None else torch.zeros(m, dtype=torch.long, device=dev)
        static_flat = torch.zeros(m, dtype=flat.dtype, device=dev)
        captured_plan = dataclasses.replace(plan, write_t={width: (None, static_flat)}, positions=positions)
        return _Captured(
            key,
            captured_plan,
            torch.empty(m, *logits.shape[1:], dtype=logits.dtype, device=dev),
            torch.zeros(m, 1, dtype=torch.long, device=dev),
            static_flat,
            positions,
        )

    def _capture(self, cap: _Captured, part: str, fn: Callable[[], Any]) -> bool:
        """Capture one part's graph (its outputs kept on `cap`) and run it for this step; on failure, one log line
        and eager from now on."""
        try:
            graph = self.graph_type()
            out = graph.capture(fn)
            graph.replay()
        except Exception as e:  # never fail a request
            logger.warning(
                "moi-demo: no graph of the MoI step's %s (%s: %s); the step runs eager from now on",
                part,
                type(e).__name__,
                str(e)[:200],
            )
            self.graphs, self.captured, self._graphed = False, None, None
            return False
        if part == "tap":
            cap.tap, cap.tapped = graph, out
        else:
            cap.mix, cap.fed = graph, out
        self.captures += 1
        return True

    def _mix_work(self, cap: _Captured, embed: Callable[[torch.Tensor], torch.Tensor]) -> mixing.Fed:
        """The mix's device work on the graph's static tensors (what its graph records)."""
        state, plan, tapped = self.state, cap.plan, cap.tapped
        mixed = state.rows.buffer[plan.span]
        fed = mixing.fed_step(tapped.ids, tapped.top_logits, cap.sampled, plan.config, embed, mixed, tapped.extras)
        state.write_record(plan, fed.candidate_ids, fed.weights, mixed, fed.entropy)
        return fed

    def _guard(self, plan: StepPlan) -> tuple:
        """The addresses a mix graph writes into: the next-input buffer and the history pool of the plan's width."""
        (width,) = plan.write_t
        pool = self.state.store.pools[width]
        return (
            self.state.rows.buffer.data_ptr(),
            pool.ids_flat.data_ptr(),
            pool.weights_flat.data_ptr(),
            pool.entropy_flat.data_ptr(),
        )

    def _load(self, cap: _Captured, plan: StepPlan, sampled: torch.Tensor) -> None:
        """This step's inputs into the graph's static tensors: its sampled ids, history rows and noise counters."""
        s = sampled[plan.span]
        cap.sampled.copy_(s if s.dim() == 2 else s[:, None])
        ((_, flat),) = plan.write_t.values()
        cap.flat.copy_(flat)
        if cap.positions is not None:
            cap.positions.copy_(plan.positions)


def _whole(plan: StepPlan) -> StepPlan:
    """The plan as the tap graph sees it: its static logits hold the plan's rows alone, 0..M-1."""
    return dataclasses.replace(plan, span=slice(0, plan.rows.size))


def _rows(t: torch.Tensor, plan: StepPlan) -> torch.Tensor:
    """The plan's rows of a batch tensor [B, ...]: a view when they are a run, else a gather."""
    return t[plan.span] if plan.span is not None else t.index_select(0, plan.rows_t)


def tap_eager(plan: StepPlan, logits: torch.Tensor) -> Tapped:
    """The tap in plain ops: no [M, V] copy of the logits (a view for a run of rows, else the top-k over every row
    and [M, K] selected)."""
    cfg = plan.config
    x, rows = (logits[plan.span], None) if plan.span is not None else (logits, plan.rows_t)
    ids, top = mixing.topk_logits(x, cfg.top_k, cfg.k_max, cfg.uniform_k, rows=rows)
    return Tapped(ids, top, mixing.prior_extras(x, cfg.switches, plan.positions, rows=rows))


def force_tokens(plan: StepPlan, logits: torch.Tensor) -> None:
    """Teacher forcing, in place: each forced row of the plan keeps one finite logit [B, V], its forced token's
    (the sampler's raw log-probs were taken before, so what a request returns stays its own distribution)."""
    forced = plan.forced  # [M], -1: the row samples its own
    rows = _rows(logits, plan)  # [M, V]
    only = torch.full_like(rows, float("-inf")).scatter_(1, forced.clamp_min(0)[:, None], 0.0)
    kept = torch.where((forced >= 0)[:, None], only, rows)
    if plan.span is not None:
        logits[plan.span] = kept
    else:
        logits.index_copy_(0, plan.rows_t, kept)
