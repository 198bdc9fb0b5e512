"""The pure-torch parts on every device present (the CPU, and CUDA where there is one): the golden vectors through the
serving step, the hooks' sequence through BatchState and StepRunner (batch changes, a recompute, the switches, only some
rows mixing, the step from graphs) against the CPU's own run, every CUDA step under
torch.cuda.set_sync_debug_mode("error"), and a CUDA graph's replay against the eager step bit for bit.

Part of the torch tier (`python scripts/torch_tier.py`: torch, numpy and pytest alone); CI runs its CPU part."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from moi_demo.core import mixing
from moi_demo.core.batch_config import BatchConfig
from moi_demo.core.config import MoIConfig
from moi_demo.vllm import step as step_mod
from tests.step_driver import SWITCHED, Driver

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GOLDEN = Path(__file__).resolve().parent / "data" / "moi_weights.json"


@contextlib.contextmanager
def sync_checked(device: torch.device):
    """On CUDA, a device sync inside raises (what vLLM's VLLM_GPU_SYNC_CHECK=error and the doctor set)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


def test_devices_present_are_all_tested():
    """Says what ran where: the tier's header prints the same list."""
    assert DEVICES[0] == "cpu" and (("cuda" in DEVICES) == torch.cuda.is_available())


def test_golden_vectors_through_the_serving_step(device):
    """Every golden case (54, computed apart from the project) through fed_step on the device: the weights and the
    mixed embedding, in float64."""
    cases = json.loads(GOLDEN.read_text())["cases"]
    for case in cases:
        k = case["top_k"]
        cfg = BatchConfig.from_configs([MoIConfig(case["mode"], case["beta"], k)], device)
        ids = torch.tensor([case["topk_ids"]], device=device)
        top = torch.tensor([case["topk_logits"]], dtype=torch.float64, device=device)
        table = torch.tensor(case["embedding_matrix"], dtype=torch.float64, device=device)
        out = torch.empty(1, table.shape[1], dtype=torch.float64, device=device)
        sampled = torch.tensor([case["sampled_id"]], device=device)
        with sync_checked(device):
            fed = mixing.fed_step(ids, top, sampled, cfg, lambda i, t=table: t[i], out)
        merged: dict[int, float] = {}
        for c, w in zip(fed.candidate_ids[0].tolist(), fed.weights[0].tolist(), strict=True):
            merged[c] = merged.get(c, 0.0) + w
        assert list(merged) == case["candidate_ids"]
        assert list(merged.values()) == pytest.approx(case["weights"], abs=1e-12)
        assert out[0].tolist() == pytest.approx(case["mixed_embedding"], abs=1e-9)


def drive(device: torch.device, graphs: bool, steps: int = 2 * step_mod.CAPTURE_AFTER + 8) -> Driver:
    """The paper's MoI, direct mixture, a switched lane and a standard row; a swap, a removal (rows no longer a run),
    a preemption (recompute from history), a new request, then a steady stretch long enough to capture graphs."""
    drv = Driver(rows=5, device=device, graphs=graphs, hooks=lambda: sync_checked(device))
    drv.add("moi", 0, MoIConfig("moi", 1.0, 8))
    drv.add("direct", 1, MoIConfig("direct", 1.0, 8))
    drv.add("sw", 2, dataclasses.replace(SWITCHED))
    drv.add("std", 3, None)
    for _ in range(3):
        drv.step()
    drv.swap(0, 2)
    drv.step()
    drv.remove(1)
    drv.preempt("moi")
    for _ in range(2):
        drv.step()
    drv.add("late", 1, MoIConfig("moi", 0.5, 8))
    drv.remove(3)
    for _ in range(steps):
        drv.step()
    return drv


def test_the_hooks_sequence_on_the_device_equals_the_cpu_run(device):
    """The same requests, batch changes and logits on the device as on the CPU (eager): the same mixed inputs, with
    the step from graphs where the device has them (CUDA graphs on CUDA, EagerGraph on the CPU)."""
    cpu = drive(torch.device("cpu"), graphs=False)
    here = drive(device, graphs=True)
    assert here.steps.replays > 0 and here.state.counts.recomputed_steps > 0 and here.state.counts.swaps == 1
    assert cpu.fed.keys() == here.fed.keys()
    for rid in cpu.fed:
        torch.testing.assert_close(torch.stack(here.fed[rid]).cpu(), torch.stack(cpu.fed[rid]), atol=1e-5, rtol=1e-5)


def test_graph_replay_equals_the_eager_step_bit_for_bit(device):
    """On CUDA: real CUDA graphs, captured and replayed; on the CPU: EagerGraph (the same static tensors). The fed
    inputs and the histories equal the eager step's on the same device, bit for bit."""
    eager = drive(device, graphs=False)
    graphed = drive(device, graphs=True)
    kind = type(graphed.steps.captured.tap).__name__ if graphed.steps.captured else None
    assert kind == ("CudaGraph" if device.type == "cuda" else "EagerGraph")
    assert graphed.steps.replays > step_mod.CAPTURE_AFTER
    for rid in eager.fed:
        assert torch.equal(torch.stack(eager.fed[rid]), torch.stack(graphed.fed[rid])), rid
    for rid, hist in eager.state.requests.items():
        assert graphed.state.history(graphed.state.requests[rid]) == eager.state.history(hist)
