"""The gates and the rival modes (core/mixing.py, core/plain.py): hand-computed values, the batched serving path
against the plain one-row form, and the invariants (a gate that never opens feeds onehot(y), one always open feeds
today's MoI). Pure torch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from moi_demo.core import mixing
from moi_demo.core.batch_config import BatchConfig
from moi_demo.core.config import MoIConfig, SamplingContext
from moi_demo.core.plain import prior_from_weights, reference_prior, reference_weights


def seeded(cfg: MoIConfig, seed: int = 7) -> MoIConfig:
    return dataclasses.replace(cfg, context=SamplingContext(1.0, 1.0, seed))


def fed(logits: torch.Tensor, sampled: list[int], configs: list[MoIConfig], positions: list[int]) -> mixing.Fed:
    """The engine's step (fed_weights) on raw logits [B, V]."""
    cfg = BatchConfig.from_configs(configs)
    ids, top = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
    extras = mixing.prior_extras(logits, cfg.switches, torch.tensor(positions))
    return mixing.fed_weights(ids, top, torch.tensor(sampled), cfg, extras)


def by_id(f: mixing.Fed, b: int = 0) -> dict[int, float]:
    """Row b's weight per distinct candidate id (fed_weights puts y's share of 1 - a in its own last column)."""
    out: dict[int, float] = {}
    for i, w in zip(f.candidate_ids[b].tolist(), f.weights[b].tolist(), strict=True):
        out[i] = out.get(i, 0.0) + w
    return out


# p = softmax([log 0.5, log 0.3, log 0.2]) over k = 3: H = entropy / log 3
P = [0.5, 0.3, 0.2]
LOGITS = torch.tensor([[math.log(x) for x in P] + [-30.0]], dtype=torch.float64)
H = -sum(x * math.log(x) for x in P) / math.log(3)  # 0.9372...


@pytest.mark.parametrize(
    ("gate", "gate_h", "opens"),
    [("high", 0.9, True), ("high", 0.95, False), ("low", 0.95, True), ("low", 0.9, False)],
)
def test_a_gate_mixes_by_hand_where_open_and_feeds_onehot_where_shut(gate, gate_h, opens):
    """H = 0.937: "high" opens at or above gate_h, "low" at or below. Open: the paper's posterior (beta 1,
    y = token 1): w = (H p + (2 - H) onehot) / 2; shut: onehot(y)."""
    cfg = MoIConfig("moi", 1.0, 3, gate=gate, gate_h=gate_h)
    got = fed(LOGITS, [1], [cfg], [0])
    want = [H * P[0] / 2, (H * P[1] + 2 - H) / 2, H * P[2] / 2] if opens else [0.0, 1.0, 0.0]
    assert got.candidate_ids[0].tolist() == [0, 1, 2, 1]
    assert [by_id(got)[i] for i in range(3)] == pytest.approx(want, abs=1e-6)
    assert float(got.weights[0].sum()) == pytest.approx(1.0) and float(got.entropy[0]) == pytest.approx(H)


def test_gumbel_weights_by_hand():
    """w = softmax((log p + G) / tau) with G from the request's seed (the rival's own stream: seed ^ GUMBEL_SALT);
    the sampled token's own column gets nothing."""
    cfg = seeded(MoIConfig("gumbel", top_k=3, tau=0.5), seed=11)
    got = fed(LOGITS, [1], [cfg], [4])
    g = mixing.gumbel(torch.tensor([11 ^ mixing.GUMBEL_SALT]), torch.tensor([4]), torch.tensor([[0, 1, 2]]))[0]
    z = [(math.log(P[i]) + float(g[i])) / 0.5 for i in range(3)]
    want = [math.exp(x - max(z)) / sum(math.exp(y - max(z)) for y in z) for x in z]
    assert got.weights[0].tolist() == pytest.approx(want + [0.0], abs=1e-6)
    other = fed(LOGITS, [1], [seeded(MoIConfig("gumbel", top_k=3, tau=0.5), seed=12)], [4])
    assert not torch.allclose(other.weights, got.weights)  # another seed, another draw


def test_gumbel_tau_to_zero_is_the_argmax_and_large_tau_is_uniform():
    cold = fed(LOGITS, [0], [seeded(MoIConfig("gumbel", top_k=3, tau=1e-3))], [2]).weights[0, :3]
    assert sorted(cold.tolist()) == pytest.approx([0.0, 0.0, 1.0], abs=1e-9)
    hot = fed(LOGITS, [0], [seeded(MoIConfig("gumbel", top_k=3, tau=100.0))], [2]).weights[0, :3]
    assert hot.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)


def test_multiplex_counts_by_hand():
    """K = 4 draws by the inverse CDF of p: u_j from the seed (seed ^ MULTIPLEX_SALT, draw j); token i where the
    running sum of p first passes u_j. w = counts / 4."""
    cfg = seeded(MoIConfig("multiplex", top_k=3, samples=4), seed=5)
    got = fed(LOGITS, [2], [cfg], [9])
    u = mixing.uniforms(torch.tensor([5 ^ mixing.MULTIPLEX_SALT]), torch.tensor([9]), torch.tensor([[0, 1, 2, 3]]))[0]
    cdf = [0.5, 0.8, 1.0]
    counts = [0, 0, 0]
    for x in u.tolist():
        counts[next(i for i, c in enumerate(cdf) if c > x)] += 1
    assert got.weights[0].tolist() == pytest.approx([c / 4 for c in counts] + [0.0], abs=1e-6)
    assert all(float(w) * 4 == pytest.approx(round(float(w) * 4)) for w in got.weights[0])


def test_multiplex_of_a_sure_distribution_puts_every_draw_on_it():
    sure = torch.tensor([[0.0, -50.0, -60.0, -70.0]], dtype=torch.float64)
    got = fed(sure, [0], [seeded(MoIConfig("multiplex", top_k=3, samples=7))], [1])
    assert got.weights[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_a_gate_that_never_opens_feeds_onehot_and_one_always_open_feeds_todays_moi():
    torch.manual_seed(1)
    logits = torch.randn(4, 200, dtype=torch.float64) * 2
    sampled = [3, 0, 150, 7]
    paper = [MoIConfig("moi", b, 8) for b in (0.0, 0.5, 1.0, 3.0)]
    base = fed(logits, sampled, paper, [0, 1, 2, 3])
    never = fed(logits, sampled, [dataclasses.replace(c, gate="high", gate_h=1.0) for c in paper], [0, 1, 2, 3])
    always = fed(logits, sampled, [dataclasses.replace(c, gate="low", gate_h=1.0) for c in paper], [0, 1, 2, 3])
    assert torch.equal(always.weights, base.weights) and torch.equal(always.candidate_ids, base.candidate_ids)
    assert (never.weights[:, :-1] == 0).all() and (never.weights[:, -1] == 1).all()  # all on y's own column
    assert torch.equal(never.candidate_ids[:, -1], torch.tensor(sampled))


def test_batched_rival_and_gated_rows_equal_the_plain_form_per_row():
    """A batch of every new setting beside the paper's (per-row k, seeds, positions), through the serving path
    (fed_weights) and the plain one-row form (reference_prior + reference_weights): the same weights."""
    torch.manual_seed(2)
    logits = torch.randn(7, 300, dtype=torch.float64) * 2
    configs = [
        seeded(MoIConfig("moi", 1.0, 5)),
        seeded(MoIConfig("moi", 0.5, 8, gate="high", gate_h=0.6), 3),
        seeded(MoIConfig("direct", 1.0, 5, gate="low", gate_h=0.6), 4),
        seeded(MoIConfig("gumbel", 1.0, 8, tau=0.5), 5),
        seeded(MoIConfig("gumbel", 1.0, 5, tau=2.0, entropy="full", gate="high", gate_h=0.2), 6),
        seeded(MoIConfig("multiplex", 1.0, 8, samples=3), 7),
        seeded(MoIConfig("multiplex", 1.0, 5, samples=16, noise=0.5), 8),
    ]
    positions = [0, 3, 5, 7, 11, 13, 17]
    sampled = [0, 1, 299, 2, 3, 0, 4]
    cfg = BatchConfig.from_configs(configs)
    ids, _ = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
    got = fed(logits, sampled, configs, positions)
    gates = []  # (gated row: open?) the batch must hold both
    for b, c in enumerate(configs):
        k = c.top_k
        p, h = reference_prior(logits[b], ids[b, :k], c, c.context.seed, positions[b])
        want = reference_weights(p, h, ids[b, :k], sampled[b], c, c.context.seed, positions[b])
        row = by_id(got, b)
        plain = {int(i): float(w) for i, w in zip(ids[b, :k].tolist(), want[:k].tolist(), strict=True)}
        if sampled[b] not in plain:
            plain[sampled[b]] = float(want[k])
        assert [row.get(i, 0.0) for i in plain] == pytest.approx(list(plain.values()), abs=1e-5), c
        if c.gate != "none":
            gates.append(h >= c.gate_h if c.gate == "high" else h <= c.gate_h)
    assert sorted(gates) == [False, True, True], gates  # a shut gate and open ones, both paths checked


def test_mix_step_and_fed_weights_agree_on_the_new_settings():
    """The two batched paths (mix_from_topk's onehot form, fed_weights' serving form) give one mixture."""
    torch.manual_seed(3)
    logits = torch.randn(3, 120, dtype=torch.float64)
    configs = [
        seeded(MoIConfig("gumbel", 1.0, 6, tau=0.3)),
        seeded(MoIConfig("multiplex", 1.0, 6, samples=5)),
        seeded(MoIConfig("moi", 1.0, 6, gate="high", gate_h=0.95)),
    ]
    cfg = BatchConfig.from_configs(configs)
    step = mixing.mix_step(logits, torch.tensor([1, 2, 3]), cfg, torch.tensor([4, 5, 6]))
    serving = fed(logits, [1, 2, 3], configs, [4, 5, 6])
    for b in range(3):
        onehot_form = {}
        for i, w in zip(step.candidate_ids[b].tolist(), step.weights[b].tolist(), strict=True):
            onehot_form[i] = onehot_form.get(i, 0.0) + w
        assert by_id(serving, b) == pytest.approx(onehot_form, abs=1e-6)


def test_the_page_shows_no_prior_for_a_rival_mode_or_a_shut_step():
    ids = [0, 1, 2]
    assert prior_from_weights(ids, [0.2, 0.3, 0.5], ids, 1, 0.9, MoIConfig("gumbel", top_k=3)) is None
    shut = MoIConfig("moi", 1.0, 3, prior="processed", gate="high", gate_h=0.95)
    assert prior_from_weights(ids, [0.0, 1.0, 0.0], ids, 1, 0.9, shut) is None
    opened = dataclasses.replace(shut, gate_h=0.5)
    w = [0.9 * 0.5 / 2, (0.9 * 0.3 + 2 - 0.9) / 2, 0.9 * 0.2 / 2]
    assert prior_from_weights(ids, w, ids, 1, 0.9, opened) == pytest.approx([0.5, 0.3, 0.2])
