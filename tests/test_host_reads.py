"""HostReadCounter, what the doctor and the engine tests count in the hooks: what would sync the host with a CUDA
device, flagged by the form of the call so that a CPU run sees it (pure torch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from moi_demo.core.batch_config import Switches
from moi_demo.core.config import GREEDY_EPS, MoIConfig, SamplingContext
from moi_demo.core.transfer import columns_to_device
from moi_demo.vllm.host_reads import HostReadCounter
from tests.step_driver import SWITCHED, Driver


def test_counter_sees_host_reads():
    """The control for the engine test below: the counter does count what it must."""
    import torch

    t = torch.arange(4)
    with HostReadCounter() as counter:
        t[0].item(), t.tolist(), bool(t[1]), int(t[2]), [0, 1, 2][t[1]], t.cpu(), (t + 1).sum()
    assert counter.counts == {"item": 1, "tolist": 1, "__bool__": 1, "__int__": 1, "__index__": 1, "cpu": 1}


def test_counter_sees_indexing_with_host_indices():
    """A list, bool or numpy index is copied to the device from pageable memory (a sync on CUDA): counted, alone or
    in a tuple; ints, slices and tensor indices are not."""
    import numpy as np
    import torch

    t = torch.zeros(4, 3)
    with HostReadCounter() as counter:
        t[[0, 1]] = t[[1, 0]]
        t[np.array([0, 2])]
        t[True]
        t[:, [0, 2]]
        t[1], t[1:3], t[None, 0], t[torch.tensor([0, 1])], t[..., 0]
        t[2].copy_(t[3])
    assert counter.counts == {"index:list": 3, "index:ndarray": 1, "index:bool": 1}


def test_batch_state_swaps_and_moves_without_host_indices():
    """The rows' buffered mixed inputs follow a swap and a move, with no host index (the CPU stand-in for CUDA's
    pageable copies: the engine test below runs the same through vLLM's reorder)."""
    import torch

    from moi_demo.core.config import MoIConfig
    from moi_demo.vllm.batch_state import BatchState

    st = BatchState(4)
    st.apply_update([], [(r, MoIConfig()) for r in range(3)], [], lambda r: (f"r{r}", 4, None))
    st.rows.buffer = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    st.rows.buffer_valid[:3] = True
    with HostReadCounter() as counter:
        st.apply_update([], [], [(0, 2, "swap")], lambda r: (f"r{r}", 4, None))
        st.apply_update([1], [], [(2, 3, "unidirectional")], lambda r: (f"r{r}", 4, None))
    assert counter.counts == {}
    assert [h.req_id if h else None for h in st.rows.req] == ["r2", None, None, "r0"]
    assert st.rows.buffer[0].tolist() == [6.0, 7.0, 8.0] and st.rows.buffer[3].tolist() == [0.0, 1.0, 2.0]
    assert st.rows.buffer_valid.tolist() == [True, False, False, True]


def test_counter_flags_device_tensors_made_from_host_data_by_the_form_of_the_call():
    """torch.tensor / as_tensor with a device named, and an unpinned .to(device), copy from pageable memory on CUDA:
    counted on a CPU too (the state's device is the CPU here). Host-only tensors and dtype casts are not."""
    host = torch.from_numpy(np.arange(3))
    with HostReadCounter("cpu") as counter:
        torch.tensor([1, 2], device="cpu")
        torch.as_tensor(np.zeros(2), device=torch.device("cpu"))
        host.to("cpu")
        host.to(device="cpu", non_blocking=True)  # unpinned: non_blocking does not help
        torch.tensor([1, 2])  # host only: no device named
        host.to(torch.float32)
        torch.zeros(3, device="cpu")  # no host data
    assert counter.counts == {"h2d:tensor": 1, "h2d:as_tensor": 1, "h2d:to": 2}


def test_counter_state_on_another_device_skips_host_only_buffers():
    """With the state on a device (meta stands in for CUDA here), reading CPU tensors (the pinned staging buffer,
    numpy scratch) waits for nothing: not counted; making a tensor on that device from host data is."""
    host = torch.arange(4)
    with HostReadCounter("meta") as counter:
        host.numpy()
        host.tolist()
        torch.tensor([1.0], device="meta")
        torch.tensor([1.0], device="cpu")  # another host tensor
        host.to("meta")
    assert counter.counts == {"h2d:tensor": 1, "h2d:to": 1}


def test_packed_columns_equal_torch_tensor_per_column_and_make_no_pageable_copy():
    cols = [[True, False, True], [0.8, 1.0 / 3.0, 1e-7], [2**32 - 1, 0, 123456789], [3, 20, 1]]
    dtypes = (torch.bool, torch.float32, torch.long, torch.long)
    with HostReadCounter("cpu") as counter:
        got = columns_to_device(cols, dtypes, "cpu")
    assert counter.counts == {}
    for g, c, d in zip(got, cols, dtypes, strict=True):
        assert g.dtype == d and torch.equal(g, torch.tensor(c, dtype=d))


def _switches_as_it_was(configs, device="cpu", seeds=None):
    """Switches.from_configs before the packed copy: a torch.tensor(list, device=...) call per column, each a pageable
    host-to-device copy (the H200 run found it syncing). The mutant the counter must catch."""
    if not any(c.switched for c in configs):
        return None
    ctx = [c.context or SamplingContext() for c in configs]
    seeds = seeds or [0] * len(configs)
    greedy = [x.temperature < GREEDY_EPS for x in ctx]

    def t(values, dtype):
        return torch.tensor(values, dtype=dtype, device=device)

    return Switches(
        full=t([c.entropy == "full" for c in configs], torch.bool),
        processed=t([c.prior == "processed" for c in configs], torch.bool),
        greedy=t(greedy, torch.bool),
        inv_temp=t([1.0 if g else 1.0 / x.temperature for x, g in zip(ctx, greedy, strict=True)], torch.float32),
        top_p=t([x.top_p for x in ctx], torch.float32),
        noise=t([c.noise for c in configs], torch.float32),
        seed=t(
            [(x.seed if x.seed is not None else s) & 0xFFFFFFFF for x, s in zip(ctx, seeds, strict=True)], torch.long
        ),
        gumbel=t([c.mode == "gumbel" for c in configs], torch.bool),
        multiplex=t([c.mode == "multiplex" for c in configs], torch.bool),
        tau=t([c.tau for c in configs], torch.float32),
        samples=t([c.samples if c.mode == "multiplex" else 0 for c in configs], torch.long),
        gate_high=t([c.gate == "high" for c in configs], torch.bool),
        gate_low=t([c.gate == "low" for c in configs], torch.bool),
        gate_h=t([c.gate_h for c in configs], torch.float32),
        any_full=any(c.entropy == "full" for c in configs),
        any_processed=any(c.prior == "processed" for c in configs),
        any_noise=any(c.noise > 0 for c in configs),
    )


def _switched_run(steps: int = 4) -> dict[str, int]:
    """A switched lane joins a paper lane: the batch-change path builds the switches, then steady steps."""
    counter = HostReadCounter("cpu")
    drv = Driver(rows=3, hooks=lambda: counter)
    drv.add("paper", 0, MoIConfig("moi", 1.0, 8))
    drv.step()
    assert counter.counts == {}
    drv.add("switched", 1, SWITCHED)
    for _ in range(steps):
        drv.step()
    return counter.counts


def test_mutation_check_the_counter_flags_switches_built_as_they_were(monkeypatch):
    assert _switched_run() == {}
    monkeypatch.setattr(Switches, "from_configs", staticmethod(_switches_as_it_was))
    counts = _switched_run()
    assert counts.get("h2d:tensor", 0) >= 7, counts  # seven pageable copies at the batch change


@pytest.mark.parametrize("graphs", [False, True])
def test_hooks_count_nothing_with_a_switched_lane_a_partial_batch_and_a_reordered_batch(graphs):
    """The hooks' sequence (plan, feed, tap, mix, record) under the counter: a switched lane beside the paper's MoI,
    a standard row between MoI rows (only some rows mix), a swap and a removal (a reordered batch), a recompute after
    a preemption, and (graphs) the step from graphs, captured and replayed. Nothing would sync on CUDA."""
    counter = HostReadCounter("cpu")
    drv = Driver(rows=5, graphs=graphs, hooks=lambda: counter)
    drv.add("moi", 0, MoIConfig("moi", 1.0, 8))
    drv.add("std", 1, None)
    drv.add("sw", 2, dataclasses.replace(SWITCHED, top_k=8))
    drv.add("direct", 3, MoIConfig("direct", 1.0, 8))
    for _ in range(3):
        drv.step()
    drv.swap(0, 3)
    drv.step()
    drv.remove(1)  # the MoI rows 0, 2, 3 are no longer a run: the step gathers
    drv.preempt("sw")
    for _ in range(3):
        drv.step()
    drv.remove(3)
    drv.add("moi2", 1, MoIConfig("moi", 0.5, 8))  # rows 0..2: a run again, graphs may capture
    for _ in range(12):
        drv.step()
    assert counter.counts == {}
    assert drv.state.counts.swaps == 1 and drv.state.counts.recomputed_steps > 0
    assert (drv.steps.replays > 0) == graphs
