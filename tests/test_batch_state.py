"""BatchState, the plugin's per-row MoI state, without vLLM: batch changes (adds, removes, moves, condense),
steady steps, paging of the compact history, rewinds, recompute, and resubmission of an id."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moi_demo.core import mixing
from moi_demo.core.config import MoIConfig, SamplingContext
from moi_demo.vllm.batch_state import BatchState
from moi_demo.vllm.history import PAGE

VOCAB, HIDDEN = 50, 8
torch.manual_seed(0)
EMBED = torch.nn.Embedding(VOCAB, HIDDEN).weight.detach().to(torch.float64)


def embed(ids: torch.Tensor) -> torch.Tensor:
    return EMBED[ids]


class Sim:
    """A toy engine around BatchState: rows hold request ids; each step feeds and samples one token per
    decoding row, with random logits, the way the plugin drives the state from vLLM's runner."""

    def __init__(self, rows: int = 8):
        self.state = BatchState(rows)
        self.rows: list[str | None] = [None] * rows
        self.info: dict[str, dict] = {}  # req_id -> prompt_len, computed, owner, config
        self.rng = torch.Generator().manual_seed(1)
        self.fed: dict[str, list[torch.Tensor]] = {}  # every mixed input fed, by request and token
        self.entropy: dict[str, list[float]] = {}  # ... and the H it was mixed with

    def identify(self, row: int):
        rid = self.rows[row]
        return rid, self.info[rid]["prompt_len"], self.info[rid]["owner"]

    def add(
        self, rid: str, row: int, cfg: MoIConfig | None, prompt_len: int = 5, owner: object = None, computed: int = 0
    ) -> None:
        self.rows[row] = rid
        self.info[rid] = {"prompt_len": prompt_len, "computed": computed, "owner": owner or object(), "cfg": cfg}
        self.state.apply_update([], [(row, cfg)], [], self.identify)

    def num_reqs(self) -> int:
        return max((i + 1 for i, r in enumerate(self.rows) if r is not None), default=0)

    def step(self, scheduled: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """One step; scheduled[rid] tokens per row (default: the whole prompt, then 1). Returns the mixed
        input fed at each row's positions (by request)."""
        n_req = self.num_reqs()
        computed = np.zeros(n_req, dtype=np.int64)
        sched = np.zeros(n_req, dtype=np.int64)
        samples = np.zeros(n_req, dtype=bool)
        for row, rid in enumerate(self.rows[:n_req]):
            if rid is None:
                continue
            info = self.info[rid]
            computed[row] = info["computed"]
            total = info["prompt_len"] + info.setdefault("generated", 0)
            want = (scheduled or {}).get(rid, total - info["computed"])
            sched[row] = want
            samples[row] = info["computed"] + want == total
        fast_rows, offsets, slow = self.state.plan(n_req, computed, sched, samples)
        fed = {}
        for row, off in zip(fast_rows, offsets, strict=True):
            assert off == sched[row] - 1
            fed[self.rows[row]] = self.state.rows.buffer[row][None].clone()
        for row, js, _ in slow:  # the engine's path: written into the step's input rows, in bounded chunks
            out = torch.full((js.size + 2, HIDDEN), float("nan"), dtype=torch.float64)
            self.state.write_from_history(row, js, embed, out, np.arange(js.size) + 1)
            assert out[0].isnan().all() and out[-1].isnan().all()  # only the targets were written
            fed[self.rows[row]] = out[1:-1]
        plan = self.state.take_plan()
        if plan is not None:
            logits = torch.randn(plan.rows.size, VOCAB, generator=self.rng, dtype=torch.float64)
            sampled = torch.randint(0, VOCAB, (plan.rows.size,), generator=self.rng)
            cfg = plan.config
            ids, top = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
            extras = mixing.prior_extras(logits, cfg.switches, plan.positions)
            cand, weights, h = mixing.fed_weights(ids, top, sampled, cfg, extras)
            mixed = mixing.mix_embeddings(weights, cand, embed, torch.float64)
            self.state.record(plan, cand, weights, mixed, h)
            for i, row in enumerate(plan.rows):
                self.fed.setdefault(self.rows[row], []).append(mixed[i])
                self.entropy.setdefault(self.rows[row], []).append(float(h[i]))
        for row, rid in enumerate(self.rows[:n_req]):
            if rid is not None:
                info = self.info[rid]
                info["computed"] += int(sched[row])
                if samples[row]:
                    info["generated"] += 1
        return fed


def test_adds_fill_row_arrays_and_standard_rows_stay_untracked():
    sim = Sim()
    sim.add("a", 0, MoIConfig("moi", 0.5, 3), prompt_len=4)
    sim.add("s", 1, None)
    sim.add("d", 2, MoIConfig("direct", 1.0, 5), prompt_len=7)
    st = sim.state
    assert st.rows.mixes[:3].tolist() == [True, False, True]
    assert st.rows.top_k[[0, 2]].tolist() == [3, 5] and st.rows.prompt_len[[0, 2]].tolist() == [4, 7]
    assert set(st.requests) == {"a", "d"} and st.rows.req[1] is None
    sim.step()
    plan_rows = st.rows.mixes[:3]
    assert plan_rows.sum() == 2 and st.rows.length[[0, 2]].tolist() == [1, 1] and st.rows.length[1] == 0


def test_steady_steps_feed_the_buffer_rows_of_the_last_sample():
    sim = Sim()
    sim.add("a", 0, MoIConfig("moi", 1.0, 4))
    sim.add("b", 1, MoIConfig("moi", 0.0, 4))
    sim.step()  # prefill: nothing to feed, samples token 0
    for t in range(1, 5):
        fed = sim.step()
        for rid in "ab":
            torch.testing.assert_close(fed[rid][0], sim.fed[rid][t - 1])  # the mix of the previous sample
    assert sim.state.counts.applied_steps == 2 * 4 and sim.state.counts.recomputed_steps == 0


def test_remove_keeps_history_and_readd_at_another_row_recomputes_it():
    sim = Sim()
    sim.add("a", 0, MoIConfig("moi", 1.0, 4))
    sim.add("b", 1, MoIConfig("moi", 2.0, 6))
    for _ in range(6):
        sim.step()
    # "a" is preempted: removed from the batch (vLLM: BatchUpdate.removed), its state kept.
    sim.state.apply_update([0], [], [], sim.identify)
    sim.rows[0] = None
    assert "a" in sim.state.requests and sim.state.requests["a"].row == -1 and sim.state.requests["a"].length == 6
    # Resumed into row 2 with every position recomputed: the 6 generated positions' inputs come from history
    # (the last sampled token's too) and equal what was fed or would have been fed.
    owner = sim.info["a"]["owner"]
    sim.rows[2] = "a"
    sim.info["a"]["computed"] = 0
    sim.state.apply_update([], [(2, MoIConfig("moi", 1.0, 4))], [], lambda row: ("a", 5, owner))
    before = sim.state.counts.recomputed_steps
    fed = sim.step()
    torch.testing.assert_close(fed["a"], torch.stack(sim.fed["a"][:6]))
    assert sim.state.counts.recomputed_steps - before == 5  # token 5 is fed for the first time
    assert sim.state.rows.length[2] == 7


def test_moves_and_condense_carry_rows_and_buffer():
    sim = Sim()
    cfgs = [
        MoIConfig("moi", 0.5, 3),
        None,
        MoIConfig("moi", 1.0, 3),
        MoIConfig("direct", 1.0, 4),
        MoIConfig("moi", 3.0, 5),
    ]
    for row, cfg in enumerate(cfgs):
        sim.add(f"r{row}", row, cfg)
    for _ in range(3):
        sim.step()
    st = sim.state
    buf = {f"r{i}": st.rows.buffer[i].clone() for i, cfg in enumerate(cfgs) if cfg is not None}
    # vLLM's condense after removing rows 1 and 3: row 4 moves down into row 1, row 3 stays empty.
    st.finish("r3")
    st.apply_update([3], [], [(4, 1, "unidirectional")], sim.identify)
    sim.rows[1], sim.rows[3], sim.rows[4] = "r4", None, None
    assert (
        st.rows.req[1].req_id == "r4"
        and st.rows.req[1].row == 1
        and st.rows.mixes[:5].tolist() == [True, True, True, False, False]
    )
    torch.testing.assert_close(st.rows.buffer[1], buf["r4"])
    assert st.rows.beta[1] == 3.0 and st.rows.top_k[1] == 5
    # A swap (vLLM may reorder the batch).
    st.apply_update([], [], [(0, 2, "swap")], sim.identify)
    sim.rows[0], sim.rows[2] = sim.rows[2], sim.rows[0]
    torch.testing.assert_close(st.rows.buffer[0], buf["r2"])
    torch.testing.assert_close(st.rows.buffer[2], buf["r0"])
    fed = sim.step()
    for rid in ("r0", "r2", "r4"):
        torch.testing.assert_close(fed[rid][0], sim.fed[rid][-2])
    assert "r3" not in st.requests and st.store.finished["r3"] == 2


def test_add_then_condense_resolves_the_final_row():
    """An added request moved in the same update (added at the end, then condensed down) is identified
    at the row it ends in."""
    sim = Sim()
    sim.add("x", 0, MoIConfig())
    sim.rows[1] = "new"
    sim.info["new"] = {"prompt_len": 3, "computed": 0, "owner": object(), "cfg": None}
    sim.rows[0] = None  # x finished; new added at 1 then moved to 0
    sim.state.finish("x")
    sim.rows[0], sim.rows[1] = "new", None
    sim.state.apply_update([], [(1, MoIConfig("moi", 2.0, 7))], [(1, 0, "unidirectional")], sim.identify)
    assert (
        sim.state.rows.req[0].req_id == "new"
        and sim.state.rows.req[0].config.top_k == 7
        and not sim.state.rows.mixes[1]
    )


def test_history_is_paged_k_plus_one_columns_per_token_and_freed_at_finish():
    sim = Sim(rows=2)
    sim.add("a", 0, MoIConfig("moi", 1.0, 20))
    sim.add("b", 1, MoIConfig("moi", 1.0, 3))
    steps = 2 * PAGE + 5
    for _ in range(steps):
        sim.step()
    st = sim.state
    mem = st.stats()["memory"]
    assert mem["history_tokens"] == 2 * steps
    assert mem["history_bytes"] == steps * (8 * 21 + 4) + steps * (8 * 4 + 4)  # ids + weights, and H
    assert len(st.requests["a"].pages) == 3
    hist = st.history(st.requests["a"])
    assert len(hist) == steps and all(len(ids) in (20, 21) and len(w) == len(ids) for ids, w in hist)
    assert all(abs(sum(w) - 1) < 1e-6 and len(set(ids)) == len(ids) for ids, w in hist)
    # The history rebuilds exactly the mixed inputs that were fed.
    rebuilt = st.store.mixed(st.rows.req[0], np.arange(steps), embed, torch.float64)
    torch.testing.assert_close(rebuilt, torch.stack(sim.fed["a"]), atol=1e-6, rtol=0)
    pool = st.store.pools[21]
    st.finish("a")
    assert len(pool.free) == pool.capacity and "a" not in st.requests


def test_rewind_cuts_the_history_to_the_tokens_that_stand():
    sim = Sim(rows=1)
    sim.add("a", 0, MoIConfig("moi", 1.0, 4), prompt_len=5)
    for _ in range(PAGE + 3):
        sim.step()
    st = sim.state
    assert st.rows.length[0] == PAGE + 3
    # The engine drops the last 6 outputs (a stale output, a reset cache): it schedules position 5 + PAGE - 3,
    # i.e. generated token PAGE - 3 is fed again and the next sample is token PAGE - 2.
    sim.info["a"]["computed"] = 5 + PAGE - 3
    sim.info["a"]["generated"] = PAGE - 2
    fed = sim.step({"a": 1})
    torch.testing.assert_close(fed["a"][0], sim.fed["a"][PAGE - 3], atol=1e-6, rtol=0)  # from history, not the buffer
    assert st.rows.length[0] == PAGE - 1 and len(st.requests["a"].pages) == 1
    assert st.store.pools[5].capacity - len(st.store.pools[5].free) == 1


def test_missing_history_is_an_error_not_a_silent_standard_input():
    sim = Sim(rows=1)
    sim.add("a", 0, MoIConfig(), prompt_len=5)
    sim.step()
    sim.info["a"]["computed"] = 9  # claims generated tokens 0..3 exist
    sim.info["a"]["generated"] = 5
    with pytest.raises(RuntimeError, match="request a has no mixed input for generated token 1"):
        sim.step({"a": 1})


@pytest.mark.parametrize("case", ["resubmit", "session"])
def test_same_id_new_request_or_resumed_session_starts_a_fresh_history(case):
    sim = Sim(rows=1)
    owner = object()
    sim.add("a", 0, MoIConfig("moi", 0.5, 4), prompt_len=5, owner=owner)
    for _ in range(4):
        sim.step()
    st = sim.state
    if case == "resubmit":  # abort, then a new request with the same id and another beta
        st.finish("a")
        sim.add("a", 0, MoIConfig("moi", 3.0, 6), prompt_len=5)
        assert st.rows.beta[0] == 3.0 and st.rows.top_k[0] == 6
    else:  # a streaming session: the same request, its output now part of a longer prompt
        st.apply_update([], [(0, MoIConfig("moi", 0.5, 4))], [], lambda row: ("a", 9, owner))
        sim.info["a"].update(prompt_len=9, computed=0, generated=0)
    assert st.rows.length[0] == 0 and st.requests["a"].pages == []
    sim.step()
    assert st.rows.length[0] == 1


def test_steady_steps_take_the_fast_plan_and_reuse_the_config():
    """Widths and indices come from the host; a batch that only decodes plans from cached settings."""
    sim = Sim(rows=4)
    for row in range(3):
        sim.add(f"r{row}", row, MoIConfig("moi", 1.0, 4 + row))
    sim.step()
    sim.step()
    first = sim.state.planner.cached[0]
    assert sim.state.planner.steady is not None and first.k_max == 6 and not first.uniform_k
    for _ in range(PAGE + 2):  # across a page boundary (the general plan takes that step)
        fed = sim.step()
        assert sim.state.planner.cached[0] is first
        for rid in ("r0", "r1", "r2"):
            torch.testing.assert_close(fed[rid][0], sim.fed[rid][-2])
    assert sim.state.counts.applied_steps == 3 * (PAGE + 3)
    hist = sim.state.history(sim.state.requests["r2"])
    rebuilt = sim.state.store.mixed(sim.state.rows.req[2], np.arange(len(hist)), embed, torch.float64)
    torch.testing.assert_close(rebuilt, torch.stack(sim.fed["r2"]), atol=1e-6, rtol=0)


def test_stats_are_plain_json():
    """moi_stats crosses process boundaries (msgspec): no numpy scalars, whatever path the steps took."""
    import json

    sim = Sim(rows=2)
    sim.add("a", 0, MoIConfig())
    for _ in range(5):
        sim.step()
    stats = sim.state.stats(records=True)

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or type(x) in (int, float, bool, str)

    def listed(x):  # JSON's view of Python containers: tuples become lists
        if isinstance(x, dict):
            return {k: listed(v) for k, v in x.items()}
        return [listed(v) for v in x] if isinstance(x, (list, tuple)) else x

    assert plain(stats) and json.loads(json.dumps(stats)) == listed(stats)  # nothing lost or changed on the way
    assert stats["requests"] == {"a": 4} and len(stats["records"]["a"]) == 5  # 5 sampled, the first 4 fed back


def test_recompute_of_10k_tokens_keeps_its_temporaries_under_the_bound(monkeypatch):
    """A 10k-token recompute (vLLM may schedule a whole max_num_batched_tokens of one) is rebuilt in chunks: no
    embedding call holds more than RECOMPUTE_BYTES of temporaries (recompute_bytes_per_token each), and the inputs
    equal the unchunked rebuild."""
    from moi_demo.vllm import history, records

    n, k, hidden = 10_000, 20, 256
    monkeypatch.setattr(records, "RECOMPUTE_BYTES", 1 << 20)
    per_token = history.recompute_bytes_per_token(k + 1, hidden, torch.float32)
    assert per_token == 21 * (16 + hidden * 4) + hidden * 8
    table = torch.randn(VOCAB, hidden)
    calls: list[tuple[int, ...]] = []

    def recording_embed(ids: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(ids.shape))
        return table[ids]

    st = BatchState(2)
    st.apply_update([], [(0, MoIConfig("moi", 1.0, k))], [], lambda r: ("long", 4, None))
    gen = torch.Generator().manual_seed(0)
    for j in range(n):  # n decode steps: record (k + 1) candidates and weights per token
        st.plan(1, np.array([4 + j - 1 if j else 0]), np.array([1 if j else 4]), np.array([True]))
        plan = st.take_plan()
        cand = torch.randint(0, VOCAB, (1, k + 1), generator=gen)
        w = torch.softmax(torch.randn(1, k + 1, generator=gen), dim=-1)
        st.record(plan, cand, w, torch.zeros(1, hidden))
    assert st.rows.length[0] == n
    # The engine preempted it: it recomputes the prompt and all n generated tokens in one step.
    fast, _, slow = st.plan(1, np.array([0]), np.array([4 + n]), np.array([False]))
    ((row, js, offsets),) = slow
    assert fast.size == 0 and js.size == n
    out = torch.zeros(4 + n, hidden)
    st.write_from_history(row, js, recording_embed, out, offsets)
    chunk = (1 << 20) // per_token
    assert calls and max(c[0] for c in calls) == chunk and sum(c[0] for c in calls) == n
    assert all(c[0] * per_token <= 1 << 20 and c[1] == k + 1 for c in calls)
    assert len(calls) == -(-n // chunk)
    whole = st.store.mixed(st.rows.req[row], js, lambda ids: table[ids], torch.float32)
    torch.testing.assert_close(out[4:], whole, rtol=0, atol=0)
    assert out[:4].abs().sum() == 0  # the prompt's rows untouched


def test_the_protocol_order_is_enforced():
    """plan -> take_plan -> mix_target -> record, batch changes between steps: anything else raises, as vLLM's
    BatchUpdateBuilder does, and a step with no MoI row to sample stays idle."""
    from moi_demo.vllm.batch_state import HookOrderError

    st = BatchState(2)
    assert st.take_plan() is None and st.plan(1, np.array([0]), np.array([4]), np.array([True])).empty  # no request
    st.apply_update([], [(0, MoIConfig("moi", 1.0, 3))], [], lambda r: ("a", 4, None))
    feed = st.plan(1, np.array([0]), np.array([4]), np.array([True]))  # the prefill: samples token 0
    assert feed.empty and st.phase == "planned"
    with pytest.raises(HookOrderError, match=r"plan\(\) in phase 'planned'"):
        st.plan(1, np.array([0]), np.array([4]), np.array([True]))  # the last plan was never sampled
    with pytest.raises(HookOrderError, match=r"apply_update\(\) in phase 'planned'"):
        st.apply_update([0], [], [], lambda r: ("a", 4, None))
    with pytest.raises(HookOrderError, match="finish"):
        st.finish("a")
    with pytest.raises(HookOrderError, match="mix_target"):
        st.mix_target(None, HIDDEN, torch.float32, torch.device("cpu"))
    plan = st.take_plan()
    assert st.phase == "sampling" and plan.rows.tolist() == [0]
    with pytest.raises(HookOrderError, match="take_plan"):
        st.take_plan()
    other = BatchState(2)
    cand, w = torch.tensor([[1, 2, 3, 1]]), torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    with pytest.raises(HookOrderError, match="a plan other than the one taken"):
        st.record(other.planner._step_plan(np.array([0]), 1, np.array([0])), cand, w, torch.zeros(1, HIDDEN))
    mixed = st.mix_target(plan, HIDDEN, torch.float32, torch.device("cpu"))
    st.record(plan, cand, w, mixed)
    assert st.phase == "idle" and st.rows.length[0] == 1
    with pytest.raises(HookOrderError, match=r"record\(\) in phase 'idle'"):
        st.record(plan, cand, w, mixed)
    # A step whose MoI row does not sample (mid-prefill) plans no sampling: the state stays idle.
    st.finish("a")
    st.apply_update([], [(1, MoIConfig("moi", 1.0, 3))], [], lambda r: ("b", 8, None))
    assert st.plan(2, np.array([0, 0]), np.array([1, 4]), np.array([True, False])).empty and st.phase == "idle"


def test_records_of_hand_out_what_was_fed_and_keep_only_what_was_asked_for():
    """records_of: a live request's candidates, weights and H per token, by vLLM's internal id (the request's own,
    then "-" and a suffix); at finish only a request that asked (moi_record) and was not read yet is kept, and
    handed out once. A switched row (noise) mixes beside a paper row in the same steps."""
    import dataclasses

    sim = Sim(rows=3)
    noised = dataclasses.replace(MoIConfig("moi", 1.0, 4, noise=0.5, context=SamplingContext(seed=3)), keep_record=True)
    sim.add("a-1234", 0, noised)
    sim.add("b-5678", 1, MoIConfig("moi", 1.0, 4))
    sim.add("c-9abc", 2, noised)  # asks too, never read while it runs
    for _ in range(3):
        sim.step()
    assert sim.state.rows.switched[:3].tolist() == [True, False, True]
    live = sim.state.records_of(["a", "b"])  # read: a is handed out, so not kept at its finish
    assert set(live) == {"a-1234", "b-5678"} and sim.state.records_of(["a-12"]) == {}
    for rid, rec in live.items():
        assert rec["entropy"] == pytest.approx(sim.entropy[rid]) and len(rec["weights"]) == 3
        assert all(sum(w) == pytest.approx(1.0) for w in rec["weights"])
        fed = [
            mixing.mix_embeddings(torch.tensor([w], dtype=torch.float64), torch.tensor([c]), embed)[0]
            for c, w in zip(rec["candidates"], rec["weights"], strict=True)
        ]
        assert torch.allclose(torch.stack(fed), torch.stack(sim.fed[rid]), atol=1e-6)  # what was fed, exactly
    for rid in ("a-1234", "b-5678", "c-9abc"):
        sim.state.finish(rid)
    kept = sim.state.records_of(["a", "b", "c"])
    assert set(kept) == {"c-9abc"} and len(kept["c-9abc"]["weights"]) == 3  # asked, and not read yet
    assert sim.state.records_of(["c"]) == {}  # handed out once


def test_records_of_reads_the_device_once_per_call_whatever_the_requests():
    """The records RPC packs every record into one tensor and reads it once (one `tolist`), not three reads per
    request; what it hands out is what `history` reads row by row."""
    from moi_demo.vllm.host_reads import HostReadCounter

    sim = Sim(rows=3)
    for i, k in enumerate((4, 6, 4)):
        sim.add(f"r{i}", i, MoIConfig("moi", 1.0, k))
    for _ in range(5):
        sim.step()
    expected = {f"r{i}": sim.state.history(sim.state.requests[f"r{i}"]) for i in range(3)}
    with HostReadCounter() as counter:
        got = sim.state.records_of(["r0", "r1", "r2"])
    assert counter.counts == {"tolist": 1}
    assert {rid: list(zip(rec["candidates"], rec["weights"], strict=True)) for rid, rec in got.items()} == expected
