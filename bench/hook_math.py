"""The plugin's per-step hook work at the paper's scale, in pure torch (no vLLM): `python bench/hook_math.py`.

Drives `BatchState` and the mixing through the plugin's own per-step sequence, as `vllm_plugin` calls them:
plan (host), feed (buffered mixed inputs into the step's input rows), top-k of the prior, the mix weights, the mixed
embeddings, record; with batch changes between phases (adds, removes, a move, a swap) and a recompute of a
preempted request from its history. Defaults: vocabulary 152,064, hidden 5120, k 20, batches 1 / 8 / 64 / 256,
bf16 (Qwen2.5-32B's shapes), on CUDA when there is one.

On CUDA every step runs under `torch.cuda.set_sync_debug_mode("error")` (a device sync raises), the hook work is
timed with CUDA events, and one [B, V] argmax is timed beside it as a yardstick (what any sampler pays). It also
tries to capture one decode step's device work (top-k, weights, mix, record writes) in a CUDA graph and says
whether it captured. Each decode step's fed inputs are checked against the formula computed afresh from the
previous step's logits (the bench fails when they differ), so a fast wrong answer cannot pass.

Each batch runs twice: the paper's MoI, and every row switched (moi_entropy=full, moi_prior=processed, moi_noise=0.5:
the O(B * V) full entropy and log-partition, the top-p mask, the noise), checked the same way.

`--smoke`: tiny sizes on the CPU, what CI runs (tests/test_bench_hook_math.py).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout with only torch installed

from moi_demo.core import mixing  # noqa: E402
from moi_demo.core.mixing import MoIConfig  # noqa: E402
from moi_demo.vllm.batch_state import BatchState  # noqa: E402

logger = logging.getLogger("moi_demo.bench.hook_math")
PROMPT = 16
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Clock:
    """Wall time of a region on the CPU; CUDA events on a GPU (the device time of the queued work)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], object]) -> float:
        """Milliseconds of fn()."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


class Rig:
    """One batch of `rows` MoI requests on a BatchState, stepped as the plugin steps them."""

    def __init__(self, state: BatchState, embed: Callable[[torch.Tensor], torch.Tensor], vocab: int, hidden: int,
                 dtype: torch.dtype, cfg: MoIConfig, seed: int = 0):
        self.state, self.embed, self.vocab, self.hidden, self.dtype, self.cfg = state, embed, vocab, hidden, dtype, cfg
        self.device = state.device
        self.rows: dict[int, str] = {}  # row -> request id
        self.computed: dict[str, int] = {}  # request id -> positions computed
        self.serial = 0

    # -- batch changes, in vLLM's BatchUpdate order ------------------------------------------------------------
    def add(self, n: int) -> None:
        free = [r for r in range(self.state.max_rows) if r not in self.rows][:n]
        for row in free:
            self.rows[row] = f"req-{self.serial}"
            self.computed[self.rows[row]] = 0
            self.serial += 1
        self.state.apply_update([], [(r, self.cfg) for r in free], [], self.identify)

    def remove(self, row: int) -> None:
        self.state.finish(self.rows.pop(row))
        self.state.apply_update([row], [], [], self.identify)

    def move(self, a: int, b: int) -> None:
        self.rows[b] = self.rows.pop(a)
        self.state.apply_update([], [], [(a, b, "unidirectional")], self.identify)

    def swap(self, a: int, b: int) -> None:
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
        self.state.apply_update([], [], [(a, b, "swap")], self.identify)

    def preempt(self, row: int) -> None:
        """vLLM drops the request's KV and later recomputes prompt + outputs: its computed positions go to 0."""
        self.computed[self.rows[row]] = 0

    def identify(self, row: int) -> tuple[str, int, object]:
        return self.rows[row], PROMPT, None

    # -- one step -------------------------------------------------------------------------------------------------
    def schedule(self) -> tuple[int, list[str | None], np.ndarray, np.ndarray]:
        """What vLLM's scheduler would run next: every row; a new or preempted request all its positions, the
        others their one decode token."""
        n = max(self.rows) + 1
        ids = [self.rows.get(r) for r in range(n)]
        computed = np.array([self.computed.get(i, 0) if i else 0 for i in ids], dtype=np.int64)
        held = np.where([i is not None for i in ids], self.state.length[:n], 0)  # generated tokens held, per row
        total = PROMPT + held  # the positions a request has: its prompt and its generated tokens
        scheduled = np.where(computed == 0, total, 1).astype(np.int64)
        return n, ids, computed, scheduled

    def step(self, n: int, computed: np.ndarray, scheduled: np.ndarray, logits: torch.Tensor, sampled: torch.Tensor,
             inputs_embeds: torch.Tensor) -> None:
        """The plugin's step for rows 0..n-1: plan (host), feed the inputs, top-k of the prior, weights, mix, record.
        `logits` [n, V] and `sampled` [n] stand for the model and the sampler (not timed as hook work)."""
        query_start = np.concatenate([[0], np.cumsum(scheduled)])
        fast_rows, fast_offsets, slow = self.state.plan(n, computed, scheduled, np.ones(n, dtype=bool))
        if fast_rows.size:
            self.state.write_buffer(inputs_embeds, fast_rows, query_start[fast_rows] + fast_offsets, n)
        for row, js, offsets in slow:
            self.state.write_from_history(row, js, self.embed, inputs_embeds, query_start[row] + offsets)
        plan = self.state.take_plan()
        cfg = plan.config
        rows_logits = logits if plan.all_rows else logits.index_select(0, plan.rows_t)
        rows_sampled = sampled if plan.all_rows else sampled.index_select(0, plan.rows_t)
        top_ids, top_logits = mixing.topk_logits(rows_logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
        extras = mixing.prior_extras(rows_logits, cfg.switches, plan.positions)
        mixed = self.state.mix_target(plan, self.hidden, self.dtype, self.device)  # [M, D]
        cand, weights, h = mixing.fed_step(top_ids, top_logits, rows_sampled, cfg, self.embed, mixed, extras)
        self.state.record(plan, cand, weights, mixed, h)

    def device_step(self, plan, logits: torch.Tensor, sampled: torch.Tensor) -> None:
        """Only the device work of a steady decode step of rows 0..n-1 (what a CUDA graph would hold)."""
        cfg = plan.config
        top_ids, top_logits = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
        extras = mixing.prior_extras(logits, cfg.switches, plan.positions)
        mixing.fed_step(top_ids, top_logits, sampled, cfg, self.embed, self.state.buffer[: logits.shape[0]], extras)


def expected_inputs(logits: torch.Tensor, sampled: torch.Tensor, cfg: MoIConfig, embed: Callable,
                    dtype: torch.dtype, positions: torch.Tensor) -> torch.Tensor:
    """The formula afresh (mixing.mix_step: top-k, p, H, onehot(y), w; `positions` [B] for the noise): [B, D]."""
    config = mixing.BatchConfig.from_configs([cfg] * logits.shape[0], logits.device)
    step = mixing.mix_step(logits, sampled, config, positions)
    return mixing.mix_embeddings(step.weights, step.candidate_ids, embed, out_dtype=dtype)


class _sync_checked:  # noqa: N801
    """On CUDA: a device sync inside raises (torch.cuda.set_sync_debug_mode("error"))."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")


PAPER = MoIConfig("moi", 1.0, 20)
SWITCHED = MoIConfig("moi", 1.0, 20, entropy="full", prior="processed", noise=0.5,
                     context=mixing.SamplingContext(temperature=0.8, top_p=0.9, seed=1))


def bench_batch(b: int, a: argparse.Namespace, device: torch.device, table: torch.Tensor, clock: Clock,
                tol: float, base: MoIConfig = PAPER) -> dict[str, object]:
    import dataclasses

    dtype = table.dtype
    cfg = dataclasses.replace(base, top_k=a.k)

    def embed(ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, table)

    state = BatchState(b + 1, device)
    rig = Rig(state, embed, a.vocab, a.hidden, dtype, cfg)
    gen = torch.Generator(device=device).manual_seed(b)
    inputs = torch.zeros((b + 1) * (PROMPT + a.steps + 2), a.hidden, dtype=dtype, device=device)
    expected: dict[str, list[torch.Tensor]] = {}  # request id -> the mixed input of each generated token
    rig.add(b)
    times: list[float] = []
    worst, checked = 0.0, 0
    for t in range(a.steps + 1):
        if t == a.steps // 2 and b >= 2:  # batch changes mid-run, in one BatchUpdate each
            rig.swap(0, b - 1)
            rig.remove(1)
            rig.add(1)  # a new request in the freed row
            rig.move(b - 1, b)  # and one moved to an empty row
        if t == a.steps // 2 + 2:
            rig.preempt(0)  # recomputed from history at the next step
        n, ids, computed, scheduled = rig.schedule()
        logits = (torch.randn(n, a.vocab, generator=gen, device=device) * 3).to(dtype)  # the model's output
        sampled = logits.argmax(dim=-1)  # the sampler's (greedy)
        steady = bool((scheduled == 1).all())
        with _sync_checked(device):
            ms = clock.time(lambda lg=logits, sp=sampled, c=computed, s=scheduled, n=n:
                            rig.step(n, c, s, lg, sp, inputs))
        if steady:
            times.append(ms)
        # Every generated token's input fed this step == the formula afresh from the logits that sampled it.
        start = 0
        for r in range(n):
            req, c, s = ids[r], int(computed[r]), int(scheduled[r])
            if req is not None:
                for pos in range(max(c, PROMPT), c + s):
                    fed = inputs[start + pos - c].float()
                    worst = max(worst, float((fed - expected[req][pos - PROMPT].float()).abs().max()))
                    checked += 1
            start += s
        positions = torch.from_numpy(np.maximum(state.length[:n] - 1, 0)).to(device)  # each row's token index
        fresh = expected_inputs(logits, sampled, cfg, embed, dtype, positions)
        for r in range(n):
            if ids[r] is not None:
                held = int(state.length[r])
                expected.setdefault(ids[r], [])[held - 1:] = [fresh[r]]
                rig.computed[ids[r]] = int(computed[r] + scheduled[r])
    if worst > tol:
        raise AssertionError(f"batch {b}: fed inputs differ from the formula by {worst:.3g} (tolerance {tol:g})")
    if state.recomputed_steps == 0 or (b >= 2 and not (state.swaps and state.moves)):
        raise AssertionError(f"batch {b}: the run missed a recompute, a swap or a move")
    logits = (torch.randn(b, a.vocab, generator=gen, device=device) * 3).to(dtype)
    argmax_ms = statistics.median(clock.time(lambda: logits.argmax(dim=-1)) for _ in range(10))
    return {"batch": b, "hook_ms": statistics.median(times), "argmax_ms": argmax_ms, "checked": checked,
            "max_err": worst, "graph": try_graph(rig, logits, device)}


def try_graph(rig: Rig, logits: torch.Tensor, device: torch.device) -> str:
    """Capture a steady decode step's device work in a CUDA graph, replay it, compare with eager."""
    if device.type != "cuda":
        return "n/a (CPU)"
    n = logits.shape[0]
    config = mixing.BatchConfig.from_configs([rig.cfg] * n, logits.device)
    plan = SimpleNamespace(config=config, positions=torch.zeros(n, dtype=torch.long, device=device))
    sampled = logits.argmax(dim=-1)
    try:
        rig.device_step(plan, logits, sampled)  # warm-up outside capture
        eager = rig.state.buffer[:n].clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            rig.device_step(plan, logits, sampled)
        rig.state.buffer.zero_()
        graph.replay()
        torch.cuda.synchronize()
        same = torch.equal(rig.state.buffer[:n], eager)
        return "yes" + ("" if same else " (replay differs!)")
    except Exception as e:  # report why, keep going
        return f"no: {type(e).__name__}: {str(e)[:80]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--hidden", type=int, default=5120)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (CI)")
    a = p.parse_args(argv)
    if a.smoke:
        a.vocab, a.hidden, a.k, a.batches, a.dtype, a.steps, a.device = 4096, 64, 8, "1,4", "fp32", 8, "cpu"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(a.device)
    dtype = DTYPES[a.dtype]
    table = (torch.randn(a.vocab, a.hidden, device=device, dtype=torch.float32) * 0.02).to(dtype)
    clock = Clock(device)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    rows = []
    for b in a.batches.split(","):
        paper, switched = (bench_batch(int(b), a, device, table, clock, tol, cfg) for cfg in (PAPER, SWITCHED))
        rows.append({**paper, "switched_ms": switched["hook_ms"], "checked": paper["checked"] + switched["checked"],
                     "max_err": max(paper["max_err"], switched["max_err"]),
                     "graph": paper["graph"] + ("" if switched["graph"] == paper["graph"] else
                                                f" / switched: {switched['graph']}")})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"### MoI hook work per decode step: vocabulary {a.vocab}, hidden {a.hidden}, k {a.k}, {a.dtype}, "
             f"{name}, torch {torch.__version__}",
             "", "| batch | hook work ms/step | switched ms/step | switched / paper | one [B, V] argmax ms "
             "| hook / argmax | steps checked | max err | CUDA graph |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['hook_ms']:.3f} | {r['switched_ms']:.3f} | "
                     f"{r['switched_ms'] / max(r['hook_ms'], 1e-9):.2f} | {r['argmax_ms']:.3f} | "
                     f"{r['hook_ms'] / max(r['argmax_ms'], 1e-9):.1f} | {r['checked']} | {r['max_err']:.1e} "
                     f"| {r['graph']} |")
    sync = "every step under torch.cuda.set_sync_debug_mode('error'): no sync" if device.type == "cuda" else \
        "sync check: n/a (CPU)"
    lines += ["", sync]
    print("\n".join(lines))  # noqa: T201 - the table is the output
    return 0


if __name__ == "__main__":
    sys.exit(main())
