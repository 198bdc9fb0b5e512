"""The doctor's checks, one function each (`moi-demo doctor`, tools/doctor.py runs them in order): each takes the rig
(and the engine it checks) and returns (passed, or None where this platform lacks what it needs; a detail line)."""

from __future__ import annotations

import statistics
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.tools.doctor_rig import DIRECT, LOW_BETA, MOI, PREEMPT_EXTRAS, PREEMPT_STEPS, Rig, run_staggered


def check_enable_cost(rig: Rig) -> tuple[bool | None, str]:
    """What enabling MoI costs a GPU user's standard requests: the V1 runner with input embeddings and the hooks,
    against vLLM exactly as installed (its default runner, V2 on CUDA), both compiled. Reported, not judged."""
    if not rig.cuda:
        return None, "CUDA only: here vLLM's default runner is already V1 (no Triton); bench row h has the hooks"
    if not getattr(rig, "enabled_tps", None):
        return None, "needs the compiled engine (skipped with --no-compiled)"
    from moi_demo.serving.stock import StockEngine

    kwargs = {k: v for k, v in rig.kwargs(enforce_eager=False).items() if k != "model"}
    with StockEngine(rig.model, runner="default", **kwargs) as stock:
        stock.tokens_per_second(rig.prompts[1], 4, 8)  # warm-up
        stock_tps = [stock.tokens_per_second(rig.prompts[1], rig.speed_batch, rig.tokens) for _ in range(3)]
    ratio = statistics.median(rig.enabled_tps) / statistics.median(stock_tps)
    return True, (
        f"{ratio:.3f} (MoI-enabled {statistics.median(rig.enabled_tps):.0f} tok/s, stock default runner "
        f"{statistics.median(stock_tps):.0f} tok/s; medians of 3)"
    )


def check_hooked(rig: Rig, llm: Any) -> tuple[bool, str]:
    stats = rig.stats(llm)
    hooked = [s["hooked"] for s in stats]
    return all(hooked), f"{sum(hooked)}/{len(hooked)} workers hooked"


def check_differs(rig: Rig, llm: Any) -> tuple[bool, str]:
    p = rig.prompts[0]
    before = rig.stats(llm)[0]["applied_steps"]
    std, moi, low, direct, std2 = rig.generate(llm, [p] * 5, [None, MOI, LOW_BETA, DIRECT, None])
    applied = rig.stats(llm)[0]["applied_steps"] - before
    ok = std == std2 and low != std and direct != std and applied == 3 * (rig.tokens - 1)
    return ok, (
        f"standard twice identical: {std == std2}; beta 0 differs: {low != std}; direct differs: "
        f"{direct != std}; beta 1 differs: {moi != std}; mixed inputs fed: {applied}"
    )


def check_reorder(rig: Rig, llm: Any) -> tuple[bool, str]:
    extras = [MOI, DIRECT, None, LOW_BETA, MOI, None, DIRECT, LOW_BETA]
    arrive = [0, 0, 1, 3, 4, 6, 9, 13]

    def jobs(tag: str) -> list[tuple[str, list[int], Any, int]]:
        return [
            (f"{tag}{i}", rig.prompts[i % 4], rig.params(x, tokens=6 + (5 * i) % 17), at)
            for i, (x, at) in enumerate(zip(extras, arrive, strict=True))
        ]

    plain = run_staggered(llm, jobs("plain-"))
    before = rig.stats(llm)
    reordered = run_staggered(llm, jobs("swap-"), reorder=True)
    after = rig.stats(llm)
    swaps = sum(a["swaps"] - b["swaps"] for a, b in zip(after, before, strict=True))
    reads = [a["host_reads"] for a in after]
    same = sum(plain[f"plain-{i}"] == reordered[f"swap-{i}"] for i in range(len(extras)))
    ok = same == len(extras) and swaps > 0 and all(r == {} for r in reads)
    sync = "; under VLLM_GPU_SYNC_CHECK=error" if rig.cuda else ""
    return ok, (
        f"{same}/{len(extras)} staggered requests identical with and without reordering; rows swapped "
        f"{swaps} times; host reads {reads}{sync}"
    )


def check_prefix_cache(rig: Rig, llm: Any) -> tuple[bool, str]:
    block = llm.llm_engine.vllm_config.cache_config.block_size
    prompt = (rig.prompts[3] * (2 * block // len(rig.prompts[3]) + 2))[: 2 * block + 3]
    reuse = {}
    for mode in ("moi", "standard"):
        llm.reset_prefix_cache()
        first = rig.generate(llm, [prompt], [MoIConfig(mode, 0.0).extra_args()], tokens=2 * block)[0]
        follow = llm.generate({"prompt_token_ids": prompt + first}, rig.params(tokens=2), use_tqdm=False)[0]
        reuse[mode] = follow.num_cached_tokens
    prompt_blocks = len(prompt) // block * block
    ok = reuse["moi"] == prompt_blocks and reuse["standard"] > prompt_blocks
    return ok, (
        f"cached tokens reused after MoI: {reuse['moi']} (its prompt blocks: {prompt_blocks}); "
        f"after standard (control): {reuse['standard']}"
    )


def check_memory(rig: Rig, llm: Any) -> tuple[bool, str]:
    prompts = [rig.prompts[i % 4] for i in range(16)]
    extras = [MOI if i % 2 else DIRECT for i in range(16)]
    readings = []
    for _ in range(rig.long_rounds):
        rig.generate(llm, prompts, extras, tokens=4 * rig.tokens)
        mem = rig.stats(llm)[0]["memory"]
        device = sum(s["device_allocated"] or 0 for s in rig.stats(llm))
        readings.append((mem["total_bytes"], mem["history_tokens"], device))
    moi_flat = len({r[0] for r in readings[1:]}) == 1 and all(r[1] == 0 for r in readings)
    dev = [r[2] for r in readings]
    dev_flat = dev[-1] <= dev[1] * 1.01 if rig.cuda else None
    per_token = rig.stats(llm)[0]["memory"]["bytes_per_token"]
    ok = moi_flat and dev_flat is not False
    detail = (
        f"{rig.long_rounds} rounds x 16 requests x {4 * rig.tokens} tokens: MoI holds "
        f"{readings[-1][0] / 2**20:.2f} MiB after each round from the 2nd (pool + next-input buffer), "
        f"history {per_token:.0f} B/token, freed at finish"
    )
    detail += (
        f"; device allocated {dev[1] / 2**20:.1f} -> {dev[-1] / 2**20:.1f} MiB"
        if rig.cuda
        else "; device memory: n/a here (CPU)"
    )
    return ok, detail


def check_host_reads(rig: Rig, llm: Any) -> tuple[bool, str]:
    """What would sync on CUDA (vllm/host_reads.py: host reads of device tensors, host indices, device tensors
    made from host data; host-only buffers such as the pinned staging are not counted), and the step's graphs."""
    stats = rig.stats(llm)
    reads = [s["host_reads"] for s in stats]
    ok = all(r == {} for r in reads)
    extra = "; VLLM_GPU_SYNC_CHECK=error was on" if rig.cuda else "; VLLM_GPU_SYNC_CHECK: n/a here (CPU)"
    graphs = stats[0].get("graphs") or {}
    extra += (
        f"; the step's CUDA graphs: {graphs.get('captures', 0)} captured, {graphs.get('replays', 0)} replayed"
        if graphs.get("on")
        else "; the step's graphs: off (eager)"
    )
    return ok, f"syncs counted in the hooks during every step above: {reads}{extra}"


def check_stock(rig: Rig, llm: Any, stock_tokens: list[list[int]]) -> tuple[bool, str]:
    mixed = rig.generate(llm, rig.prompts * 2, [None] * 4 + [MOI, DIRECT, LOW_BETA, MOI])[:4]
    same = sum(a == b for a, b in zip(stock_tokens, mixed, strict=True))
    return same == len(stock_tokens), f"{same}/{len(stock_tokens)} standard requests identical (batched with MoI)"


def check_preemption(rig: Rig) -> tuple[bool, str]:
    block = 32 if rig.cpu else 16
    per_req = -(-(40 + PREEMPT_STEPS) // block)
    with rig.engine(
        enforce_eager=True,
        async_scheduling=False,
        num_gpu_blocks_override=2 * per_req,
        max_num_seqs=4,
        max_num_batched_tokens=max(block, 32),
        enable_prefix_caching=False,
        max_model_len=128,
        block_size=block,
    ) as llm:
        got = rig.generate(llm, rig.preempt_prompts, PREEMPT_EXTRAS, tokens=PREEMPT_STEPS)
        recomputed = rig.stats(llm)[0]["recomputed_steps"]
    same = sum(a == b for a, b in zip(rig.preempt_expected, got, strict=True))
    return recomputed > 0 and same == 4, (
        f"recomputed_steps {recomputed}; {same}/4 requests identical to an engine with room for all"
    )


def check_compiled(rig: Rig, llm: Any) -> tuple[bool, str]:
    compiled = rig.generate(llm, rig.prompts, [MOI, DIRECT, LOW_BETA, None])
    same = sum(a == b for a, b in zip(rig.eager, compiled, strict=True))
    what = "torch.compile + CUDA graphs, async scheduling default" if rig.cuda else "torch.compile (CPU)"
    return same == 4, f"{same}/4 requests (MoI, direct, beta 0, standard) identical; {what}"


def check_async(rig: Rig) -> tuple[bool | None, str]:
    if not rig.cuda:
        return None, "this platform forces async scheduling off"
    with rig.engine(enforce_eager=True, async_scheduling=True) as llm:
        on = rig.generate(llm, rig.prompts, [MOI, DIRECT, LOW_BETA, None])
    same = sum(a == b for a, b in zip(rig.eager, on, strict=True))
    return same == 4, f"{same}/4 requests identical (eager, async scheduling on vs off)"


def check_speed(rig: Rig, llm: Any) -> tuple[bool, str]:
    from moi_demo.core.config import MoIConfig
    from moi_demo.tools.measure import offline_tps

    ids = rig.prompts[1]
    offline_tps(llm, ids, 4, 8, MoIConfig())  # warm-up
    ratios = []
    for _ in range(3):
        moi = offline_tps(llm, ids, rig.speed_batch, rig.tokens, MoIConfig())
        std = offline_tps(llm, ids, rig.speed_batch, rig.tokens, None)
        ratios.append(moi / std)
    med = statistics.median(ratios)
    return med >= 0.90, f"median of 3 interleaved pairs: {med:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
