"""pass@k (evaluation/evaluate.py): the unbiased estimator by hand, its interval, and an evaluation's pass@k table from
several samples per example (a stub engine: the evaluation's bookkeeping alone)."""

from __future__ import annotations

import math

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from moi_demo.evaluation.evaluate import evaluate, ks_for, paired_difference, pass_at, pass_at_k, table, vs_standard
from moi_demo.evaluation.tasks import Example


def test_pass_at_k_by_hand():
    """n = 5 samples, c = 2 correct: pass@1 = 2/5, pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10, pass@4 = 1 (only 3 wrong)."""
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 0, 3) == 0.0 and pass_at_k(8, 8, 8) == 1.0
    assert ks_for(8) == [1, 2, 4, 8] and ks_for(6) == [1, 2, 4, 6] and ks_for(1) == [1]


def test_pass_at_over_examples_with_its_interval():
    hits = [[True, False, False, False], [False, False, False, False], [True, True, False, True]]
    mean, low, high = pass_at(hits, 2)
    per = [1 - math.comb(3, 2) / math.comb(4, 2), 0.0, 1.0]
    assert mean == pytest.approx(sum(per) / 3)
    sd = math.sqrt(sum((x - mean) ** 2 for x in per) / 2)
    assert (low, high) == pytest.approx(
        (max(0.0, mean - 1.96 * sd / math.sqrt(3)), min(1.0, mean + 1.96 * sd / 3**0.5)), abs=1e-3
    )


class Stub:
    """generate_many's contract: texts in job order. Job t of a mode is right where its seed is even."""

    def __init__(self):
        self.jobs = []

    def generate_many(self, jobs, settings, on_done=None, run_id=None):
        self.jobs = jobs
        return ["\\boxed{4}" if seed % 2 == 0 else "\\boxed{5}" for _, _, seed in jobs]


def test_an_evaluation_with_several_samples_per_example_reports_pass_at_k():
    examples = [Example("t", f"q{i}", "4") for i in range(3)]
    checker = lambda ex, text: ("4" if "4" in text else "5", "4" in text)  # noqa: E731
    stub = Stub()
    configs = [("standard", MoIConfig("standard")), ("moi (beta=1)", MoIConfig("moi", 1.0, 20))]
    results, samples = evaluate(stub, examples, checker, configs, SamplingSettings(seed=10), samples=4)
    assert [seed for _, _, seed in stub.jobs[:12]] == list(range(10, 22))  # example i, draw j: 10 + 4 i + j
    assert stub.jobs[:12] == [
        (ex.prompt, MoIConfig("standard"), 10 + 4 * i + j) for i, ex in enumerate(examples) for j in range(4)
    ]
    assert [(s.index, s.draw) for s in samples[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    std = results[0]
    assert std.accuracy == 0.5 and std.pass_k[1][0] == pytest.approx(0.5) and std.pass_k[2][0] == pytest.approx(5 / 6)
    assert std.pass_k[4] == (1.0, 1.0, 1.0)
    text = table(results)
    assert "pass@2 (95% CI)" in text and "pass@4 (95% CI)" in text and "| standard | 50.0% |" in text


def test_paired_difference_by_hand():
    """diffs 0.5, 0, -0.25, 0.25: mean 0.125, sample variance 0.3125 / 3, se = sqrt(0.3125 / 12) = 0.16137;
    z = 0.125 / se = sqrt(0.6), p = erfc(sqrt(0.3)) = 0.43858."""
    mean, low, high, p = paired_difference([0.5, 0.0, -0.25, 0.25])
    assert mean == 0.125 and p == pytest.approx(0.438578, abs=1e-6)
    assert (low, high) == pytest.approx((0.125 - 1.96 * 0.161374, 0.125 + 1.96 * 0.161374), abs=1e-4)
    assert paired_difference([0.0, 0.0]) == (0.0, 0.0, 0.0, 1.0) and paired_difference([0.5, 0.5])[3] == 0.0


def test_with_several_samples_the_comparison_is_over_examples():
    """Standard right on every draw of examples 0 and 1, none of 2; MoI right on draw 0 of each. Per example MoI -
    standard = -0.75, -0.75, +0.25 (mean -41.7%); pass@4: MoI alone on example 2 (+1/-0, McNemar p = 1). One sample
    per example: the draw-for-draw McNemar."""
    base = [True] * 8 + [False] * 4
    moi = [True, False, False, False] * 3
    mean, low, high, p = paired_difference([-0.75, -0.75, 0.25])
    assert vs_standard(moi, base, 4) == (
        f"{mean:+.1%} (95% {low:+.1%} to {high:+.1%}, p = {p:.3g} over 3 examples); pass@4 +1/-0, McNemar p = 1"
    )
    assert f"{mean:+.1%}" == "-41.7%"
    assert vs_standard([True, False, True], [True, True, False], 1) == "+0.0% (+1/-1, McNemar p = 1)"
