"""The plugin's per-step hook work at the paper's scale, in pure torch (no vLLM): `python bench/hook_math.py`.

Drives `BatchState` and `StepRunner` (vllm/step.py) through the plugin's own per-step sequence, as vllm/hooks.py
calls them: plan (host), feed (buffered mixed inputs into the step's input rows), the tap (top-k of the prior from
float32 logits, as vLLM's sampler hands them over), the mix (weights, mixed embeddings, record); with batch changes
between phases (adds, removes, a move, a swap) and a recompute of a preempted request from its history. Defaults:
vocabulary 152,064, hidden 5120, k 20, batches 1 / 8 / 64 / 256, bf16 embeddings (Qwen2.5-32B's shapes), on CUDA
when there is one.

On CUDA every step runs under `torch.cuda.set_sync_debug_mode("error")` (a device sync raises); each step's host time
(perf_counter) and device time (CUDA events) are reported apart, with one [B, V] argmax as a yardstick (what any
sampler pays). With graphs on (`--graphs`, default on CUDA) the steady steps replay the step's CUDA graphs, and the
eager step runs beside them. Each decode step's fed inputs are checked against the formula computed afresh from the
previous step's logits (the bench fails when they differ), so a fast wrong answer cannot pass; so is every step the
graphs replayed.

Each batch runs as the paper's MoI (eager, and from graphs where they are on) and with every row switched
(moi_entropy=full, moi_prior=processed, moi_noise=0.5: the O(B * V) full entropy and log-partition, the top-p mask,
the noise), checked the same way.

Also per batch: torch calls per steady step (each a kernel launch on a GPU), the host time of BatchState's plan, the
host time around the graphs (their replays stubbed: what a graphed step costs the host besides two replay calls),
and a torch.profiler table of one steady step.

`--smoke`: tiny sizes on the CPU with graphs replayed eagerly, what CI runs (tests/test_bench_hook_math.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout with only torch installed

from moi_demo.core import mixing
from moi_demo.core.batch_config import BatchConfig  # noqa: E402
from moi_demo.core.config import MoIConfig, SamplingContext  # noqa: E402
from moi_demo.vllm.batch_state import BatchState  # noqa: E402
from moi_demo.vllm.step import CAPTURE_AFTER, StepRunner  # noqa: E402

logger = logging.getLogger("moi_demo.bench.hook_math")
PROMPT = 16
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Clock:
    """Host time of a region (perf_counter: the Python and the launches), and on CUDA its device time (CUDA events
    around it: from the first queued kernel's start to the last one's end, which a host-bound step stretches)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], object]) -> tuple[float, float | None]:
        """(host ms, device ms or None on the CPU) of fn()."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn()
        host = (time.perf_counter() - t0) * 1e3
        if not self.cuda:
            return host, None
        end.record()
        end.synchronize()
        return host, start.elapsed_time(end)


class OpCounter(torch.overrides.TorchFunctionMode):
    """Torch calls made under it (each at least one kernel launch on a GPU, or one graph replay)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


class Rig:
    """One batch of `rows` MoI requests on a BatchState, stepped as the plugin steps them."""

    def __init__(
        self,
        state: BatchState,
        embed: Callable[[torch.Tensor], torch.Tensor],
        vocab: int,
        hidden: int,
        dtype: torch.dtype,
        cfg: MoIConfig,
        graphs: bool = False,
    ):
        self.state, self.embed, self.vocab, self.hidden, self.dtype, self.cfg = state, embed, vocab, hidden, dtype, cfg
        self.steps = StepRunner(state, graphs=graphs)
        self.plan_ms = 0.0
        self.like = torch.empty(0, hidden, dtype=dtype, device=state.device)  # the inputs' hidden size, dtype, device
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
        held = np.where([i is not None for i in ids], self.state.rows.length[:n], 0)  # generated tokens held, per row
        total = PROMPT + held  # the positions a request has: its prompt and its generated tokens
        scheduled = np.where(computed == 0, total, 1).astype(np.int64)
        return n, ids, computed, scheduled

    def step(
        self,
        n: int,
        computed: np.ndarray,
        scheduled: np.ndarray,
        logits: torch.Tensor,
        sampled: torch.Tensor,
        inputs_embeds: torch.Tensor,
    ) -> None:
        """The plugin's step for rows 0..n-1: plan (host), feed the inputs, top-k of the prior, weights, mix, record.
        `logits` [n, V] and `sampled` [n] stand for the model and the sampler (not timed as hook work)."""
        query_start = np.concatenate([[0], np.cumsum(scheduled)])
        t0 = time.perf_counter()
        fast_rows, fast_offsets, slow = self.state.plan(n, computed, scheduled, np.ones(n, dtype=bool))
        self.plan_ms = (time.perf_counter() - t0) * 1e3  # BatchState's host side of the step (numpy, no kernels)
        if fast_rows.size:
            self.state.write_buffer(inputs_embeds, fast_rows, query_start[fast_rows] + fast_offsets, n)
        for row, js, offsets in slow:
            self.state.write_from_history(row, js, self.embed, inputs_embeds, query_start[row] + offsets)
        plan = self.state.take_plan()
        tapped = self.steps.tap(plan, logits)  # in vLLM: inside the sampler, before it samples
        self.steps.mix(plan, tapped, sampled, self.embed, self.like)


def expected_inputs(
    logits: torch.Tensor,
    sampled: torch.Tensor,
    cfg: MoIConfig,
    embed: Callable,
    dtype: torch.dtype,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The formula afresh (mixing.mix_step: top-k, p, H, onehot(y), w; `positions` [B] for the noise): [B, D]."""
    config = BatchConfig.from_configs([cfg] * logits.shape[0], logits.device)
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
SWITCHED = MoIConfig(
    "moi",
    1.0,
    20,
    entropy="full",
    prior="processed",
    noise=0.5,
    context=SamplingContext(temperature=0.8, top_p=0.9, seed=1),
)


def bench_batch(
    b: int,
    a: argparse.Namespace,
    device: torch.device,
    table: torch.Tensor,
    clock: Clock,
    tol: float,
    base: MoIConfig = PAPER,
    graphs: bool = False,
) -> dict[str, object]:
    """Run batch b through a.steps steps (with batch changes and a recompute), check every fed input, and time the
    steady decode steps: host and device ms (medians), torch calls per steady step, and the graphs' counts."""
    import dataclasses

    dtype = table.dtype
    cfg = dataclasses.replace(base, top_k=a.k)

    embed = embedder(table)
    state = BatchState(b + 1, device)
    rig = Rig(state, embed, a.vocab, a.hidden, dtype, cfg, graphs=graphs)
    gen = torch.Generator(device=device).manual_seed(b)
    inputs = torch.zeros((b + 1) * (PROMPT + a.steps + 2), a.hidden, dtype=dtype, device=device)
    expected: dict[str, list[torch.Tensor]] = {}  # request id -> the mixed input of each generated token
    rig.add(b)
    host: list[float] = []
    dev: list[float] = []
    calls: list[int] = []
    plan: list[float] = []
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
        logits = (torch.randn(n, a.vocab, generator=gen, device=device) * 3).float()  # vLLM's sampler: float32
        sampled = logits.argmax(dim=-1)  # the sampler's (greedy)
        steady = bool((scheduled == 1).all())
        replays = rig.steps.replays
        counter = OpCounter() if t % 4 == 3 else contextlib.nullcontext()  # counted steps are not timed
        with _sync_checked(device), counter:
            host_ms, dev_ms = clock.time(
                lambda lg=logits, sp=sampled, c=computed, s=scheduled, n=n: rig.step(n, c, s, lg, sp, inputs)
            )
        if steady and (not graphs or rig.steps.replays > replays):  # graphed: the steps that replayed
            if isinstance(counter, OpCounter):
                calls.append(counter.calls)
            else:
                host.append(host_ms)
                dev.append(dev_ms or 0.0)
                plan.append(rig.plan_ms)
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
        positions = torch.from_numpy(np.maximum(state.rows.length[:n] - 1, 0)).to(device)  # each row's token index
        fresh = expected_inputs(logits, sampled, cfg, embed, dtype, positions)
        for r in range(n):
            if ids[r] is not None:
                held = int(state.rows.length[r])
                expected.setdefault(ids[r], [])[held - 1 :] = [fresh[r]]
                rig.computed[ids[r]] = int(computed[r] + scheduled[r])
    if worst > tol:
        raise AssertionError(f"batch {b}: fed inputs differ from the formula by {worst:.3g} (tolerance {tol:g})")
    if state.counts.recomputed_steps == 0 or (b >= 2 and not (state.counts.swaps and state.counts.moves)):
        raise AssertionError(f"batch {b}: the run missed a recompute, a swap or a move")
    if graphs and not rig.steps.replays:
        raise AssertionError(f"batch {b}: graphs were asked for and never replayed ({a.steps} steps)")
    logits = (torch.randn(b, a.vocab, generator=gen, device=device) * 3).float()
    argmax = [clock.time(lambda: logits.argmax(dim=-1)) for _ in range(10)]
    argmax_ms = statistics.median(d if d is not None else h for h, d in argmax)
    return {
        "batch": b,
        "host_ms": statistics.median(host),
        "device_ms": statistics.median(dev) if clock.cuda else None,
        "calls": int(statistics.median(calls)),
        "plan_ms": statistics.median(plan),
        "argmax_ms": argmax_ms,
        "checked": checked,
        "max_err": worst,
        "graphs": f"{rig.steps.captures} captured, {rig.steps.replays} replayed" if graphs else "eager",
    }


def embedder(table: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's input embedding, as the plugin calls it: ids [...] -> rows of `table` [..., D]."""

    def embed(ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, table)

    return embed


def steady(
    b: int,
    a: argparse.Namespace,
    device: torch.device,
    table: torch.Tensor,
    graphs: bool,
    graph_type: type | None = None,
) -> tuple[Rig, Callable[[], float]]:
    """A rig of b paper's-MoI rows past its prompt step and up to a graph capture, and a function that runs its next
    steady decode step (the same logits each step) and returns the step's host ms."""
    rig = Rig(
        BatchState(b + 1, device), embedder(table), a.vocab, a.hidden, table.dtype,
        dataclasses.replace(PAPER, top_k=a.k), graphs=graphs,
    )  # fmt: skip
    if graph_type is not None:
        rig.steps.graph_type = graph_type
    rig.add(b)
    logits = (torch.randn(b, a.vocab, device=device) * 3).float()
    sampled = logits.argmax(dim=-1)
    inputs = torch.zeros(b * (PROMPT + 1), a.hidden, dtype=table.dtype, device=device)

    def one() -> float:
        n, _, computed, scheduled = rig.schedule()
        t0 = time.perf_counter()
        rig.step(n, computed, scheduled, logits, sampled, inputs)
        ms = (time.perf_counter() - t0) * 1e3
        for r in range(n):
            rig.computed[rig.rows[r]] = int(computed[r] + scheduled[r])
        return ms

    for _ in range(CAPTURE_AFTER + 2):  # the prompt step, then steady steps up to a capture
        one()
    return rig, one


def profile(
    b: int, a: argparse.Namespace, device: torch.device, table: torch.Tensor, graphs: bool, steps: int = 10
) -> tuple[float, list[str]]:
    """A steady decode step of batch b under torch.profiler: (ms of torch ops per step on the host, the top lines).
    A step's host Python is its host time less the first figure."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    _, one = steady(b, a, device, table, graphs)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            one()
    top = [e for e in prof.events() if e.cpu_parent is None and not e.name.startswith("ProfilerStep")]
    op_ms = sum(e.cpu_time_total for e in top) / 1e3 / steps
    table_txt = prof.key_averages().table(sort_by="cpu_time_total", row_limit=8, max_name_column_width=40)
    return op_ms, table_txt.splitlines()


class NullGraph:
    """A graph whose replay does nothing: timing steps with it leaves the host's own work around the replays (the
    plan, the copies into the static inputs, the bookkeeping), what a graphed step costs the host besides its two
    replay calls. Its values are wrong after the capture: timing only, never checked."""

    def capture(self, fn: Callable[[], object]) -> object:
        return fn()

    def replay(self) -> None:
        pass


def host_around_graphs(
    b: int, a: argparse.Namespace, device: torch.device, table: torch.Tensor, steps: int = 20
) -> float:
    """Median host ms of a steady step of batch b with its graphs' replays stubbed (NullGraph)."""
    rig, one = steady(b, a, device, table, graphs=True, graph_type=NullGraph)
    times = [one() for _ in range(steps)]
    if not rig.steps.replays:
        raise AssertionError(f"batch {b}: the stubbed graphs never replayed")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--hidden", type=int, default=5120)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--graphs",
        choices=("auto", "on", "off"),
        default="auto",
        help="the step from graphs (vllm/step.py): auto = on CUDA; on a CPU 'on' replays them eagerly",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, graphs on (CI)")
    a = p.parse_args(argv)
    if a.smoke:
        a.vocab, a.hidden, a.k, a.batches, a.dtype, a.steps, a.device = 4096, 64, 8, "1,4", "fp32", 24, "cpu"
        a.graphs = "on"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(a.device)
    graphs = a.graphs == "on" or (a.graphs == "auto" and device.type == "cuda")
    dtype = DTYPES[a.dtype]
    table = (torch.randn(a.vocab, a.hidden, device=device, dtype=torch.float32) * 0.02).to(dtype)
    clock = Clock(device)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    rows, profile_lines = [], []
    for b in map(int, a.batches.split(",")):
        eager = bench_batch(b, a, device, table, clock, tol, PAPER, graphs=False)
        paper = bench_batch(b, a, device, table, clock, tol, PAPER, graphs=graphs) if graphs else eager
        switched = bench_batch(b, a, device, table, clock, tol, SWITCHED, graphs=graphs)
        op_ms, profile_lines = profile(b, a, device, table, graphs)
        rows.append(
            {
                "batch": b,
                "paper": paper,
                "switched": switched,
                "eager": eager,
                "op_ms": op_ms,
                "around_ms": host_around_graphs(b, a, device, table),
                "checked": eager["checked"] + switched["checked"] + (paper["checked"] if graphs else 0),
                "max_err": max(eager["max_err"], switched["max_err"], paper["max_err"]),
            }
        )

    def ms(r: dict) -> str:
        return f"{r['host_ms']:.3f}" + (f" / {r['device_ms']:.3f}" if r["device_ms"] is not None else "")

    def key_ms(r: dict) -> float:  # what a step costs: its device time where it is longer than its host time
        return max(r["host_ms"], r["device_ms"] or 0.0)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    unit = "host / device ms" if device.type == "cuda" else "host ms"
    lines = [
        f"### MoI hook work per decode step: vocabulary {a.vocab}, hidden {a.hidden}, k {a.k}, {a.dtype}, "
        f"{name}, torch {torch.__version__}, graphs {'on' if graphs else 'off'}",
        "",
        f"| batch | paper's MoI ({unit}) | every switch on ({unit}) | switched / paper | eager paper's MoI "
        f"({unit}) | torch calls per step (this / eager) | plan (host) ms | host around the graphs ms "
        "| torch ops' host ms "
        "| one [B, V] argmax ms "
        "| steps checked | max err | graphs (paper's MoI) |",
        "|---" * 13 + "|",
    ]
    for r in rows:
        p_, s_, e_ = r["paper"], r["switched"], r["eager"]
        lines.append(
            f"| {r['batch']} | {ms(p_)} | {ms(s_)} | {key_ms(s_) / max(key_ms(p_), 1e-9):.2f} | {ms(e_)} | "
            f"{p_['calls']} / {e_['calls']} | {p_['plan_ms']:.3f} | {r['around_ms']:.3f} | {r['op_ms']:.3f} | "
            f"{p_['argmax_ms']:.3f} | {r['checked']} | "
            f"{r['max_err']:.1e} | {p_['graphs']} |"
        )
    sync = (
        "every step under torch.cuda.set_sync_debug_mode('error'): no sync"
        if device.type == "cuda"
        else "sync check: n/a (CPU; the host-read counter covers it in the tests)"
    )
    lines += [
        "",
        sync,
        "",
        "host around the graphs: a steady step's host time with its graphs' replays stubbed (the "
        "plan, the copies into the static inputs, the bookkeeping): what a graphed step costs the host besides "
        "two replay calls.",
        "",
        f"Profile of one steady step of batch {rows[-1]['batch']} (torch.profiler, "
        "over 10 steps; the torch ops' host ms above is its total per step):",
        "```",
        *profile_lines,
        "```",
    ]
    print("\n".join(lines))  # noqa: T201 - the table is the output
    return 0


if __name__ == "__main__":
    sys.exit(main())
