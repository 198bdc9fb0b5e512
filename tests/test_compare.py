"""serving/compare.py's per-step delta by hand (no engine): KL over the union of two top-k, the overlap, the bound."""

from __future__ import annotations

import math

import pytest

from moi_demo.serving.compare import union_kl


def test_union_kl_by_hand():
    """Standard top-2 {1, 2}, MoI top-2 {2, 3}: U = {1, 2, 3}, each lane renormalised over U."""
    s = [(1, math.log(0.5)), (2, math.log(0.3)), (3, math.log(0.1))]
    m = [(2, math.log(0.6)), (3, math.log(0.3)), (1, math.log(0.05))]
    d = union_kl(s, m, [1, 2], [2, 3])
    ps = [0.5 / 0.9, 0.3 / 0.9, 0.1 / 0.9]
    pm = [0.05 / 0.95, 0.6 / 0.95, 0.3 / 0.95]
    assert d.kl == pytest.approx(sum(a * math.log(a / b) for a, b in zip(ps, pm, strict=True)), abs=1e-12)
    assert d.overlap == 0.5 and not d.bounded


def test_same_distributions_have_zero_kl_and_a_missing_entry_is_a_bound():
    s = [(1, math.log(0.7)), (2, math.log(0.2))]
    assert union_kl(s, s, [1, 2], [1, 2]).kl == pytest.approx(0.0, abs=1e-15)
    d = union_kl(s, [(3, math.log(0.9)), (1, math.log(0.05))], [1, 2], [3, 1])
    assert d.bounded and d.overlap == 0.5 and d.kl > 0  # id 3 outside the standard's returned, id 2 outside MoI's


def test_a_lanes_ranked_entries_are_its_top_wide_without_the_sampled_tokens_own():
    """vLLM returns the top-`wide` log-probs and, when the sampled token ranks lower, its entry too: `ranked` keeps
    the top-`wide` (the floor a missing union entry is bounded with must be the `wide`-th, as in the oracle's)."""
    from types import SimpleNamespace

    from moi_demo.serving.lanes import steps_from_output

    def lp(value: float, rank: int) -> SimpleNamespace:
        return SimpleNamespace(logprob=value, rank=rank, decoded_token=str(rank))

    out = SimpleNamespace(token_ids=[9], logprobs=[{5: lp(-1.0, 1), 6: lp(-2.0, 2), 7: lp(-3.0, 3), 9: lp(-8.0, 40)}])
    (step,) = steps_from_output(out, 0, top_k=2, wide=3)
    assert step.ranked == [(5, -1.0), (6, -2.0), (7, -3.0)]
    assert step.topk_ids == [5, 6] and step.token_id == 9 and step.logprob == -8.0
    (plain,) = steps_from_output(out, 0, top_k=2)
    assert plain.ranked is None
