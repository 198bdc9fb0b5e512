"""vllm/step.py: the step's device work eager and from graphs (EagerGraph on a CPU: the same static inputs, outputs
and invalidation as a CUDA graph; the GPU tier captures real ones), pure torch."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from moi_demo.core.config import MoIConfig, SamplingContext
from moi_demo.vllm import step as step_mod
from moi_demo.vllm.history import PAGE
from tests.step_driver import SWITCHED, VOCAB, Driver


def run(graphs: bool, cfgs: list[MoIConfig | None], steps: int, graph_type: type | None = None) -> Driver:
    """One request per config in rows 0..; `steps` steps, a batch change (a removal and a new request) halfway,
    long enough to cross history pages (a pool that grows moves the graph's writes)."""
    drv = Driver(rows=len(cfgs) + 1, graphs=graphs)
    if graph_type is not None:
        drv.steps.graph_type = graph_type
    for i, cfg in enumerate(cfgs):
        drv.add(f"r{i}", i, cfg)
    for t in range(steps):
        if t == steps // 2:
            drv.remove(len(cfgs) - 1)
            drv.add("late", len(cfgs) - 1, cfgs[0])
        drv.step()
    return drv


@pytest.mark.parametrize(
    "cfg", [MoIConfig("moi", 1.0, 8), SWITCHED, MoIConfig("direct", 1.0, 8)], ids=["paper", "switched", "direct"]
)
def test_graphed_steps_feed_and_record_exactly_what_eager_steps_do(cfg):
    eager = run(False, [cfg, cfg, cfg], steps=3 * PAGE)
    graphed = run(True, [cfg, cfg, cfg], steps=3 * PAGE)
    assert graphed.steps.captures >= 4 and graphed.steps.replays > PAGE  # captured again after the batch change
    assert eager.steps.replays == 0
    assert eager.fed.keys() == graphed.fed.keys()
    for rid in eager.fed:
        assert torch.equal(torch.stack(eager.fed[rid]), torch.stack(graphed.fed[rid])), rid
    for rid, hist in eager.state.requests.items():
        assert graphed.state.history(graphed.state.requests[rid]) == eager.state.history(hist)


def test_a_batch_change_drops_the_graph_and_a_steady_stretch_captures_again():
    drv = run(True, [MoIConfig("moi", 1.0, 8)] * 2, steps=2 * step_mod.CAPTURE_AFTER + 6)
    assert drv.steps.captures == 4  # tap and mix, before and after the change
    assert drv.steps.captured is not None and drv.steps.captured.plan.config is drv.state.planner.cached[0]


def test_steps_that_allow_no_graph_stay_eager():
    """Rows that are not a run (a standard row between MoI rows) and mixed k (two history widths) never capture."""
    drv = Driver(rows=4, graphs=True)
    drv.add("a", 0, MoIConfig("moi", 1.0, 8))
    drv.add("std", 1, None)
    drv.add("b", 2, MoIConfig("moi", 1.0, 8))
    for _ in range(step_mod.CAPTURE_AFTER + 4):
        drv.step()
    assert drv.steps.captures == 0
    drv2 = run(True, [MoIConfig("moi", 1.0, 8), MoIConfig("moi", 1.0, 6)], steps=step_mod.CAPTURE_AFTER + 4)
    assert drv2.steps.captures == 0


class FailingGraph(step_mod.EagerGraph):
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_logs_once_and_the_step_runs_eager(caplog):
    cfg = MoIConfig("moi", 1.0, 8)
    eager = run(False, [cfg, cfg], steps=2 * step_mod.CAPTURE_AFTER)
    with caplog.at_level(logging.WARNING, logger="moi_demo.vllm.step"):
        failing = run(True, [cfg, cfg], steps=2 * step_mod.CAPTURE_AFTER, graph_type=FailingGraph)
    warnings = [r for r in caplog.records if r.name == "moi_demo.vllm.step"]
    assert len(warnings) == 1 and "runs eager from now on" in warnings[0].getMessage()
    assert failing.steps.graphs is False and failing.steps.captures == 0
    for rid in eager.fed:
        assert torch.equal(torch.stack(eager.fed[rid]), torch.stack(failing.fed[rid]))


class ShapeLog(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.shapes.append((getattr(func, "__name__", ""), tuple(out.shape)))
        return out


def test_a_partial_batch_copies_no_logits_rows():
    """Only rows 0 and 2 of 3 mix: the tap takes the top-k over the batch and selects [M, K]; no [M, V] tensor is
    made (a gather of the logits rows would be one). The prior equals the top-k of those rows' own logits."""
    drv = Driver(rows=4)
    drv.add("a", 0, MoIConfig("moi", 1.0, 8))
    drv.add("std", 1, None)
    drv.add("b", 2, MoIConfig("moi", 1.0, 5))
    drv.step()
    logits = torch.randn(3, VOCAB)
    drv.state.plan(3, np.array([5, 5, 5]), np.array([1, 1, 1]), np.ones(3, dtype=bool))
    plan = drv.state.take_plan()
    assert plan.span is None and plan.rows.tolist() == [0, 2]
    with ShapeLog() as log:
        tapped = drv.steps.tap(plan, logits)
    assert all(shape != (2, VOCAB) for _, shape in log.shapes), log.shapes
    want = torch.topk(logits[[0, 2]], 8, dim=-1)
    assert torch.equal(tapped.ids[0], want.indices[0]) and torch.equal(tapped.ids[1, :5], want.indices[1, :5])
    assert torch.isinf(tapped.top_logits[1, 5:]).all()  # row b's k is 5


def test_a_partial_switched_batch_takes_its_extras_from_its_own_rows():
    """The switched extras (full entropy, log Z_T) of rows [0, 2] equal those taken from the gathered rows."""
    from moi_demo.core import mixing
    from moi_demo.core.batch_config import BatchConfig

    cfgs = [dataclasses.replace(SWITCHED), dataclasses.replace(SWITCHED, context=SamplingContext(0.5, 0.6, 9))]
    config = BatchConfig.from_configs(cfgs)
    logits = torch.randn(3, VOCAB)
    rows = torch.tensor([0, 2])
    got = mixing.prior_extras(logits, config.switches, torch.tensor([3, 4]), rows=rows)
    want = mixing.prior_extras(logits[rows], config.switches, torch.tensor([3, 4]))
    assert torch.equal(got.full_entropy, want.full_entropy) and torch.equal(got.log_z, want.log_z)


def test_teacher_forcing_takes_the_prior_first_then_leaves_the_forced_row_one_token():
    """A forced row (moi_force) samples its given tokens in order: the tap takes its prior's top-k from the logits as
    they were, then leaves the row one finite logit, its forced token's; other rows are untouched; past the list the
    row samples its own."""
    from moi_demo.vllm.batch_state import BatchState
    from moi_demo.vllm.step import StepRunner

    st = BatchState(2)
    runner = StepRunner(st, graphs=False)
    forced = MoIConfig("moi", 1.0, 4, force=(7, 9))
    st.apply_update([], [(0, forced), (1, MoIConfig("moi", 1.0, 4))], [], lambda r: (f"r{r}", 3, None))
    table = torch.randn(50, 8)
    seen = []
    for step in range(3):
        computed = np.array([0, 0]) if step == 0 else np.array([3 + step - 1] * 2)
        scheduled = np.array([3, 3]) if step == 0 else np.array([1, 1])
        st.plan(2, computed, scheduled, np.array([True, True]))
        plan = st.take_plan()
        seen.append(plan.forced.tolist())
        logits = torch.randn(2, 50)
        before = logits.clone()
        tapped = runner.tap(plan, logits)
        assert tapped.ids[0].tolist() == torch.topk(before[0], 4).indices.tolist()  # the prior: before forcing
        if step < 2:
            assert int(torch.isfinite(logits[0]).sum()) == 1 and float(logits[0, plan.forced[0]]) == 0.0
        else:
            assert torch.equal(logits[0], before[0])
        assert torch.equal(logits[1], before[1])
        sampled = torch.stack([logits[0].argmax(), torch.tensor(3)])[:, None]
        runner.mix(plan, tapped, sampled, lambda i: table[i], torch.empty(0, 8))
    assert seen == [[7, -1], [9, -1], [-1, -1]]
