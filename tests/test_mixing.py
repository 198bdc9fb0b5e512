"""The MoI math on hand-built tensors with hand-computed values, and the golden vectors
(tests/data/, a copy of shared/golden/)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from moi_demo.core import mixing
from moi_demo.core.batch_config import BatchConfig
from moi_demo.core.config import MODE_CODES, MoIConfig, SamplingContext
from moi_demo.core.inputs import InputError
from moi_demo.core.plain import prior_from_weights, reference_prior, step_weights

# A copy of shared/golden/moi_weights.json (computed apart from the project): the tests run from a clone alone.
GOLDEN = Path(__file__).resolve().parent / "data" / "moi_weights.json"


def batch(*configs: MoIConfig) -> BatchConfig:
    return BatchConfig.from_configs(list(configs))


def weights_for(logits: list[float], sampled: int, cfg: MoIConfig) -> mixing.MixStep:
    return mixing.mix_step(torch.tensor([logits], dtype=torch.float64), torch.tensor([sampled]), batch(cfg))


# --- config validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"beta": -0.5}, "beta", ">= 0"),
        ({"beta": float("nan")}, "beta", "finite"),
        ({"beta": float("inf")}, "beta", "finite"),
        ({"beta": "1"}, "beta", "number"),
        ({"top_k": 0}, "top_k", "from 1"),
        ({"top_k": 2.5}, "top_k", "integer"),
        ({"mode": "mixed"}, "mode", "standard, moi, direct"),
    ],
)
def test_config_errors_name_field_and_range(kwargs, field, fragment):
    with pytest.raises(InputError) as err:
        MoIConfig(**kwargs)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert fragment in str(err.value)


def test_config_top_k_checked_against_vocab():
    MoIConfig(top_k=10).check_vocab(10)
    with pytest.raises(InputError, match=r"top_k: must be from 1 to the vocabulary size 9; got 10"):
        MoIConfig(top_k=10).check_vocab(9)


def test_beta_minus_100_means_direct_mixture():
    assert MoIConfig(beta=-100).mode == "direct"
    assert MoIConfig.from_env_beta("-100").mode == "direct"
    assert MoIConfig.from_env_beta("2.5") == MoIConfig("moi", 2.5, 20)
    assert MoIConfig.from_env_beta("") is None and MoIConfig.from_env_beta(None) is None
    with pytest.raises(InputError, match="MIXINPUTS_BETA"):
        MoIConfig.from_env_beta("-3")


def test_from_extra_args():
    assert MoIConfig.from_extra_args(None) is None
    assert MoIConfig.from_extra_args({"other": 1}) is None
    assert MoIConfig.from_extra_args({"moi_beta": 2.0}) == MoIConfig("moi", 2.0, 20)
    assert MoIConfig.from_extra_args({"moi_mode": "direct", "moi_top_k": 5.0}) == MoIConfig("direct", 1.0, 5)
    default = MoIConfig("moi", 0.5, 20)
    assert MoIConfig.from_extra_args({}, default) is default
    assert MoIConfig.from_extra_args({"moi_mode": "standard"}, default).mode == "standard"
    with pytest.raises(InputError, match=r"^moi_beta: must be a finite number >= 0") as err:
        MoIConfig.from_extra_args({"moi_beta": -1})
    assert err.value.field == "moi_beta"
    with pytest.raises(InputError, match=r"^moi_top_k: "):
        MoIConfig.from_extra_args({"moi_top_k": 2.5})
    with pytest.raises(InputError, match=r"^moi_mode: must be one of standard, moi, direct"):
        MoIConfig.from_extra_args({"moi_mode": "soft"})


# --- hand-computed values ---------------------------------------------------------------------------


def test_entropy_zero_gives_the_one_hot():
    # one logit dominates completely: p = [1, 0, 0] to float precision, H = 0
    step = weights_for([0.0, -1e4, -1e4, -2e4], 0, MoIConfig(beta=0.0, top_k=3))
    assert step.entropy.item() == pytest.approx(0.0, abs=1e-12)
    assert step.weights[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-12)


def test_uniform_with_beta_zero_gives_p():
    # equal logits: p = 1/4 each, H = 1, beta = 0 -> w = (p + (1 - 1) y) / 1 = p
    step = weights_for([2.0, 2.0, 2.0, 2.0, -5.0], 1, MoIConfig(beta=0.0, top_k=4))
    assert step.entropy.item() == pytest.approx(1.0, abs=1e-12)
    assert step.weights[0, :4].tolist() == pytest.approx([0.25] * 4, abs=1e-12)
    assert step.weights[0, 4].item() == 0.0


def test_hand_computed_two_candidates():
    # logits [log 3, 0] -> p = [0.75, 0.25]; H = -(0.75 ln .75 + .25 ln .25)/ln 2 = 0.8112781244591328
    # y = 1, beta = 1: w = (H p + (2 - H) onehot) / 2
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    step = weights_for([math.log(3.0), 0.0, -9.0], 1, MoIConfig(beta=1.0, top_k=2))
    assert step.entropy.item() == pytest.approx(0.8112781244591328, abs=1e-12)
    expected = [h * 0.75 / 2, (h * 0.25 + 2 - h) / 2, 0.0]
    assert step.weights[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([0.30422929667217, 0.69577070332783, 0.0], abs=1e-12)


def test_large_beta_gives_the_one_hot():
    step = weights_for([1.0, 0.5, 0.2, -1.0], 2, MoIConfig(beta=1e9, top_k=4))
    assert step.weights[0].tolist() == pytest.approx([0, 0, 1, 0, 0], abs=1e-8)


def test_sampled_outside_top_k_sums_to_one():
    # y = 4 is not in the top-2 ids {0, 1}: it becomes an extra candidate
    step = weights_for([3.0, 2.0, 1.0, 0.0, -1.0], 4, MoIConfig(beta=0.5, top_k=2))
    assert step.candidate_ids[0].tolist() == [0, 1, 4]
    w = step.weights[0]
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
    h = step.entropy.item()
    p = torch.softmax(torch.tensor([3.0, 2.0], dtype=torch.float64), 0)
    assert w[:2].tolist() == pytest.approx((h * p / 1.5).tolist(), abs=1e-12)
    assert w[2].item() == pytest.approx((1.5 - h) / 1.5, abs=1e-12)


def test_k_equals_one():
    step = weights_for([0.3, 1.7, -2.0], 1, MoIConfig(beta=0.0, top_k=1))
    assert step.entropy.item() == 0.0
    assert step.candidate_ids[0, 0].item() == 1
    assert step.weights[0].tolist() == [1.0, 0.0]
    # sampled outside the top-1: all weight on the sampled token
    step = weights_for([0.3, 1.7, -2.0], 2, MoIConfig(beta=0.0, top_k=1))
    assert step.weights[0].tolist() == [0.0, 1.0]


def test_direct_and_standard_modes():
    logits = [1.0, 0.0, -1.0]
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).tolist()
    direct = weights_for(logits, 2, MoIConfig(mode="direct", top_k=3))
    assert direct.weights[0].tolist() == pytest.approx(p + [0.0], abs=1e-12)
    standard = weights_for(logits, 2, MoIConfig(mode="standard", top_k=3))
    assert standard.weights[0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_batch_rows_use_their_own_settings():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 3, dtype=torch.float64)
    cfg = batch(MoIConfig("moi", 0.0, 4), MoIConfig("moi", 3.0, 2), MoIConfig("direct", 1.0, 3))
    step = mixing.mix_step(logits, torch.tensor([0, 1, 3]), cfg)
    for row, single in enumerate([MoIConfig("moi", 0.0, 4), MoIConfig("moi", 3.0, 2), MoIConfig("direct", 1.0, 3)]):
        alone = weights_for(logits[row].tolist(), [0, 1, 3][row], single)
        c = single.top_k + 1  # a row's own candidates: its top-k, then the sampled id in column k
        assert step.candidate_ids[row, :c].tolist() == alone.candidate_ids[0].tolist()
        assert step.weights[row, :c].tolist() == pytest.approx(alone.weights[0].tolist(), abs=1e-12)
        assert step.weights[row].sum().item() == pytest.approx(1.0, abs=1e-12)
    assert step.weights[1, 3:].tolist() == [0.0, 0.0]  # padding past the row's k + 1 carries no weight
    assert step.candidate_ids[1, 2].item() == 1 and step.candidate_ids[2, 3].item() == 3  # y in column k


def test_reference_form_when_sampled_in_top_k():
    # reference: H * sum_i((p_i + beta*y_i)/(1 + beta)) E_i + (1 - H) E_y
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    logits = torch.randn(4, 10, generator=gen, dtype=torch.float64) * 2
    sampled = torch.topk(logits, 5).indices[:, 2]  # third-best token of each row: inside the top-5
    for beta in (0.0, 0.5, 2.0, 7.0):
        cfg = batch(*[MoIConfig(beta=beta, top_k=5)] * 4)
        step = mixing.mix_step(logits, sampled, cfg)
        ours = mixing.mix_embeddings(step.weights, step.candidate_ids, lambda ids: emb[ids])
        y = torch.nn.functional.one_hot(sampled, 10).double()[torch.arange(4)[:, None], step.topk_ids]
        h = step.entropy[:, None]
        ref = h * torch.einsum("bk,bkd->bd", (step.p + beta * y) / (1 + beta), emb[step.topk_ids])
        ref = ref + (1 - h) * emb[sampled]
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_mix_embeddings_uses_the_embed_function_and_casts():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    scale = 8.0  # like Gemma's sqrt(hidden): the mix is of what embed() returns
    weights = torch.tensor([[0.25, 0.75, 0.0]])
    ids = torch.tensor([[0, 2, 1]])
    out = mixing.mix_embeddings(weights, ids, lambda i: (emb[i] * scale).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert out.float().tolist() == [[(0.25 * 1 + 0.75 * 2) * scale, 0.75 * 2 * scale]]
    out32 = mixing.mix_embeddings(weights, ids, lambda i: emb[i], out_dtype=torch.float32)
    assert out32.tolist() == [[1.75, 1.5]]


def test_inputs_not_modified_in_place():
    logits = torch.randn(3, 12, generator=torch.Generator().manual_seed(1))
    sampled = torch.tensor([0, 5, 11])
    cfg = batch(MoIConfig("moi", 1.0, 4), MoIConfig("direct", 0.0, 12), MoIConfig("moi", 0.0, 1))
    before = (logits.clone(), sampled.clone(), cfg.beta.clone(), cfg.top_k.clone(), cfg.mode.clone())
    step = mixing.mix_step(logits, sampled, cfg)
    emb = torch.randn(12, 4)
    emb_before = emb.clone()
    w_before, ids_before = step.weights.clone(), step.candidate_ids.clone()
    mixing.mix_embeddings(step.weights, step.candidate_ids, lambda i: emb[i])
    for a, b in zip(before, (logits, sampled, cfg.beta, cfg.top_k, cfg.mode), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(emb, emb_before)
    assert torch.equal(w_before, step.weights) and torch.equal(ids_before, step.candidate_ids)


def test_step_weights_from_logprobs_equals_from_logits():
    logits = [2.0, 1.5, 0.3, -0.2, -4.0]
    logprobs = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 0)
    top = torch.topk(logprobs, 3)
    cfg = MoIConfig("moi", 0.7, 3)
    for sampled in (1, 4):
        cand, w, h = step_weights(top.values.tolist(), top.indices.tolist(), sampled, cfg)
        full = weights_for(logits, sampled, cfg)
        assert h == pytest.approx(full.entropy.item(), abs=1e-12)
        if sampled == 1:
            assert cand == [0, 1, 2]
            assert w == pytest.approx(full.weights[0, :3].tolist(), abs=1e-12)
        else:
            assert cand == [0, 1, 2, 4]
            assert w == pytest.approx(full.weights[0].tolist(), abs=1e-12)


# --- golden vectors computed apart from the project -------------------------------------------------


def golden_cases() -> list[dict]:
    return json.loads(GOLDEN.read_text())["cases"]


@pytest.mark.parametrize("case", golden_cases(), ids=lambda c: f"{c['mode']}-b{c['beta']}-k{c['top_k']}")
def test_golden(case):
    k = case["top_k"]
    top_logits = torch.tensor([case["topk_logits"]], dtype=torch.float64)
    top_ids = torch.tensor([case["topk_ids"]])
    cfg = batch(MoIConfig(case["mode"], case["beta"], k))
    p = mixing.renormalized_probs(top_logits)
    entropy = mixing.normalized_entropy(p, cfg.top_k)
    assert entropy.item() == pytest.approx(case["normalized_entropy"], abs=1e-12)
    cand, onehot = mixing.candidates(top_ids, torch.tensor([case["sampled_id"]]), cfg.top_k)
    w = mixing.mix_weights(p, entropy, onehot, cfg.beta, cfg.mode)
    keep = slice(None) if not case["sampled_in_topk"] else slice(0, k)
    assert cand[0, keep].tolist() == case["candidate_ids"]
    assert w[0, keep].tolist() == pytest.approx(case["weights"], abs=1e-12)
    assert w[0].sum().item() == pytest.approx(1.0, abs=1e-12)
    table = torch.tensor(case["embedding_matrix"], dtype=torch.float64)
    mixed = mixing.mix_embeddings(w, cand, lambda ids: table[ids])
    assert mixed[0].tolist() == pytest.approx(case["mixed_embedding"], abs=1e-9)
    # and the same weights from the public one-step helper (as used for traces)
    cand_list, w_list, h = step_weights(
        case["topk_logits"], case["topk_ids"], case["sampled_id"], MoIConfig(case["mode"], case["beta"], k)
    )
    assert cand_list == case["candidate_ids"] and w_list == pytest.approx(case["weights"], abs=1e-12)


def test_golden_cases_cover_every_mode_beta_k_and_both_sides_of_the_top_k():
    """The golden file holds what its tests need: MoI at every beta (0 to 10^6) and direct mixture, k from 1 to 20,
    the sampled token inside and outside the top-k, each case distinct; and its weights sum to 1."""
    cases = golden_cases()
    assert len(cases) == 54
    assert {c["mode"] for c in cases} == {"moi", "direct"}
    assert {c["beta"] for c in cases if c["mode"] == "moi"} == {0.0, 0.5, 1.0, 2.0, 1e6}
    assert {c["top_k"] for c in cases} == {1, 2, 5, 20}
    assert {c["sampled_in_topk"] for c in cases} == {True, False}
    keys = {(c["mode"], c["beta"], c["top_k"], c["sampled_id"], tuple(c["topk_logits"])) for c in cases}
    assert len(keys) == len(cases)
    assert all(abs(sum(c["weights"]) - 1.0) < 1e-12 for c in cases)


def _merged(cand: torch.Tensor, w: torch.Tensor) -> dict[int, float]:
    out: dict[int, float] = {}
    for c, x in zip(cand.tolist(), w.tolist(), strict=True):
        if x:
            out[c] = out.get(c, 0.0) + x
    return out


@pytest.mark.parametrize("uniform", [True, False])
def test_fed_weights_are_the_posterior(uniform):
    """The engine's fast form (a*p, then 1 - a on y) is the posterior of mix_weights, id for id, and mixes
    the same embedding; with y inside and outside the top-k, MoI and direct rows in one batch."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 30, generator=gen, dtype=torch.float64) * 2
    configs = [
        MoIConfig("moi", 0.0, 5),
        MoIConfig("moi", 1.5, 5 if uniform else 3),
        MoIConfig("direct", 1.0, 5),
        MoIConfig("moi", 4.0, 5 if uniform else 1),
        MoIConfig("moi", 0.5, 5),
        MoIConfig("direct", 1.0, 5),
    ]
    cfg = batch(*configs)
    ids, top = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
    sampled = torch.tensor([ids[0, 0].item(), 29, ids[2, 1].item(), 7, ids[4, 2].item(), 3])
    exact = mixing.mix_from_topk(ids, top, sampled, cfg)
    cand, w, _ = mixing.fed_weights(ids, top, sampled, cfg)
    for row, c in enumerate(configs):
        got, want = _merged(cand[row], w[row]), _merged(exact.candidate_ids[row], exact.weights[row])
        assert got.keys() == want.keys(), (row, c)
        assert all(abs(got[k] - want[k]) < 1e-12 for k in want), (row, c)
        assert cand[row, c.top_k].item() == sampled[row].item()  # y in column k
    emb = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        mixing.mix_embeddings(w, cand, lambda i: emb[i]),
        mixing.mix_embeddings(exact.weights, exact.candidate_ids, lambda i: emb[i]),
    )


@pytest.mark.parametrize(("rows", "vocab", "k"), [(3, 5000, 20), (2, 49152, 20), (4, 4099, 7), (1, 3000, 50)])
def test_two_stage_topk_equals_topk(rows, vocab, k):
    x = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(vocab))
    ids, values = mixing.topk_logits(x, torch.full((rows,), k), k, True)
    ref_values, ref_ids = torch.topk(x, k)
    assert torch.equal(values, ref_values) and torch.equal(ids, ref_ids)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize(
    ("table_dtype", "out_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
)
def test_fed_step_writes_the_same_mixed_inputs_bit_for_bit(uniform, table_dtype, out_dtype):
    """The engine's fused step (weights, then the sum written into the next-input buffer) == fed_weights then
    mix_embeddings, exactly, in float32 and bf16 models; inputs are not modified; rows outside `out` untouched."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 300, generator=gen) * 2
    configs = [
        MoIConfig("moi", 0.0, 8),
        MoIConfig("direct", 1.0, 8),
        MoIConfig("moi", 2.0, 8 if uniform else 3),
        MoIConfig("moi", 1.0, 8 if uniform else 1),
    ]
    cfg = batch(*configs)
    ids, top = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
    sampled = torch.tensor([5, 7, ids[2, 0].item(), 299])
    table = torch.randn(300, 16, generator=gen).to(table_dtype)
    before = (ids.clone(), top.clone(), sampled.clone())
    buffer = torch.full((6, 16), 7.0, dtype=out_dtype)
    cand, w, _ = mixing.fed_step(ids, top, sampled, cfg, lambda i: table[i], buffer[1:5])
    want_c, want_w, _ = mixing.fed_weights(ids, top, sampled, cfg)
    want = mixing.mix_embeddings(want_w, want_c, lambda i: table[i], out_dtype=out_dtype)
    assert torch.equal(cand, want_c) and torch.equal(w, want_w)
    assert torch.equal(buffer[1:5], want)
    assert (buffer[0] == 7).all() and (buffer[5] == 7).all()
    assert all(torch.equal(a, b) for a, b in zip(before, (ids, top, sampled), strict=True))


def test_tensor_parallel_shards_mixed_then_all_reduced_equal_the_mixture_of_whole_embeddings():
    """Two ranks, each holding half the vocabulary: each mixes its shard of the embeddings (zero for the other's
    tokens, scaled as the model scales) and the [B, D] results are summed (the all-reduce): the mixture of the whole
    embeddings, and the reduce sees [B, D], never [B, C, D]. Recompute through mix_embeddings gives the same."""
    gen = torch.Generator().manual_seed(4)
    vocab, hidden, scale = 300, 16, 3.0
    table = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
    cfg = batch(MoIConfig("moi", 1.0, 8), MoIConfig("direct", 1.0, 8), MoIConfig("moi", 0.5, 8))
    logits = torch.randn(3, vocab, generator=gen, dtype=torch.float64) * 2
    ids, top = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
    sampled = torch.tensor([4, int(ids[1, 0]), 299])

    def shard(rank: int):
        def embed(i):  # vLLM's VocabParallelEmbedding without its all-reduce, then the model's scale
            own = (i >= rank * vocab // 2) & (i < (rank + 1) * vocab // 2)
            return torch.where(own[..., None], table[i], torch.zeros(())) * scale

        return embed

    seen = []

    def reduce(x):
        seen.append(tuple(x.shape))
        return x

    parts = []
    for rank in (0, 1):
        out = torch.empty(3, hidden, dtype=torch.float64)
        mixing.fed_step(ids, top, sampled, cfg, shard(rank), out, reduce=reduce)
        parts.append(out)
    whole = torch.empty(3, hidden, dtype=torch.float64)
    fed = mixing.fed_step(ids, top, sampled, cfg, lambda i: table[i] * scale, whole)
    torch.testing.assert_close(parts[0] + parts[1], whole, rtol=0, atol=1e-12)
    assert seen == [(3, hidden), (3, hidden)]
    again = sum(mixing.mix_embeddings(fed.weights, fed.candidate_ids, shard(r), reduce=reduce) for r in (0, 1))
    torch.testing.assert_close(again, whole, rtol=0, atol=1e-12)


# --- the switches: moi_entropy, moi_prior, moi_noise ------------------------------------------------


def switched(cfg: MoIConfig, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = 7) -> MoIConfig:
    """A config with the request's sampling attached (what the plugin does for a switched request)."""
    import dataclasses

    return dataclasses.replace(cfg, context=SamplingContext(temperature, top_p, seed))


def test_switches_default_to_the_paper_and_parse_from_extra_args():
    plain = MoIConfig.from_extra_args({"moi_beta": 1.0})
    assert (plain.entropy, plain.prior, plain.noise, plain.switched) == ("top_k", "raw", 0.0, False)
    assert BatchConfig.from_configs([plain]).switches is None  # the default path: nothing more to compute
    cfg = MoIConfig.from_extra_args({"moi_entropy": "full", "moi_prior": "processed", "moi_noise": "0.5"})
    assert (cfg.mode, cfg.entropy, cfg.prior, cfg.noise, cfg.switched) == ("moi", "full", "processed", 0.5, True)
    assert cfg.switches() == {"moi_entropy": "full", "moi_prior": "processed", "moi_noise": 0.5}
    assert MoIConfig(noise=0.0, entropy="top_k").switches() == {}
    assert MoIConfig.from_extra_args({"moi_record": True}) is None  # keeping records asks for no MoI by itself
    assert MoIConfig.from_extra_args({"moi_beta": 1, "moi_record": True}).keep_record


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"moi_entropy": "vocab"}, "moi_entropy: must be one of top_k, full; got 'vocab'"),
        ({"moi_prior": "tempered"}, "moi_prior: must be one of raw, processed; got 'tempered'"),
        ({"moi_noise": -1}, "moi_noise: must be a finite number >= 0; got -1"),
        ({"moi_noise": float("inf")}, "moi_noise: must be a finite number >= 0; got inf"),
        ({"moi_noise": "lots"}, "moi_noise: must be a finite number >= 0; got 'lots'"),
        ({"moi_beta": 1, "moi_record": "yes"}, "moi_record: must be true or false; got 'yes'"),
    ],
)
def test_switch_errors_name_the_key_and_the_allowed_values(extra, message):
    with pytest.raises(InputError) as e:
        MoIConfig.from_extra_args(extra)
    assert str(e.value) == message


def test_full_entropy_by_hand():
    """probs (1/4, 1/4, 1/2): entropy 1.5 ln 2, over ln 3; uniform: 1."""
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [3.0, 3.0, 3.0]], dtype=torch.float64)
    h = mixing.full_entropy(logits)
    assert h.tolist() == pytest.approx([1.5 * math.log(2) / math.log(3), 1.0], abs=1e-12)


def test_entropy_full_replaces_h_and_nothing_else():
    """moi_entropy=full: the top-k prior as before, H from the whole vocabulary (here V = 4, k = 2)."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    cfg = MoIConfig("moi", 1.0, 2, entropy="full")
    step = mixing.mix_step(logits, torch.tensor([0]), BatchConfig.from_configs([cfg]))
    q = [math.exp(x) for x in (2.0, 1.0, 0.0, -1.0)]
    h = -sum(x / sum(q) * math.log(x / sum(q)) for x in q) / math.log(4)
    p = [q[0] / (q[0] + q[1]), q[1] / (q[0] + q[1])]
    assert float(step.entropy[0]) == pytest.approx(h, abs=1e-12)
    assert step.p[0].tolist() == pytest.approx(p, abs=1e-12)
    # w = (H p + (beta + 1 - H) onehot) / (beta + 1), y = token 0 (in the top-k)
    assert step.weights[0].tolist() == pytest.approx([(h * p[0] + 2 - h) / 2, h * p[1] / 2, 0.0], abs=1e-12)


def test_processed_prior_by_hand():
    """moi_prior=processed, T = 0.5, top-p 0.9, k = 3 over V = 4: tempered logits (4, 2, 0, -2); the request's
    probabilities q = e^z / sum e^z; top-p keeps a token while the mass above it is < 0.9: q0 = 0.865 and q0 + q1 =
    0.982, so tokens 0 and 1 stay, token 2 (in the top-3) gets p = 0."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    cfg = switched(MoIConfig("moi", 1.0, 3, prior="processed"), temperature=0.5, top_p=0.9)
    step = mixing.mix_step(logits, torch.tensor([1]), BatchConfig.from_configs([cfg]))
    e4, e2 = math.exp(4.0), math.exp(2.0)
    p = [e4 / (e4 + e2), e2 / (e4 + e2), 0.0]
    h = -(p[0] * math.log(p[0]) + p[1] * math.log(p[1])) / math.log(3)
    assert step.p[0].tolist() == pytest.approx(p, abs=1e-12)
    assert float(step.entropy[0]) == pytest.approx(h, abs=1e-12)
    assert step.weights[0].tolist() == pytest.approx([h * p[0] / 2, (h * p[1] + 2 - h) / 2, 0.0, 0.0], abs=1e-12)
    # top-p 0.99 keeps the third as well (mass above it 0.982 < 0.99); top-p 1: softmax(logits / T) over the top-3
    loose = mixing.mix_step(
        logits,
        torch.tensor([1]),
        BatchConfig.from_configs([switched(MoIConfig("moi", 1.0, 3, prior="processed"), temperature=0.5, top_p=0.99)]),
    )
    z = [math.exp(x) for x in (4.0, 2.0, 0.0)]
    assert loose.p[0].tolist() == pytest.approx([x / sum(z) for x in z], abs=1e-12)


def test_processed_prior_when_greedy_is_the_top_1():
    """Temperature 0 (greedy): the request's distribution is onehot(argmax); H = 0, so MoI feeds E[y] alone."""
    logits = torch.tensor([[0.5, 0.4, 0.3, 0.2]])
    cfg = switched(MoIConfig("moi", 0.0, 3, prior="processed"), temperature=0.0)
    step = mixing.mix_step(logits, torch.tensor([0]), BatchConfig.from_configs([cfg]))
    assert step.p[0].tolist() == [1.0, 0.0, 0.0] and float(step.entropy[0]) == 0.0
    assert step.weights[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def _hash32(x: int) -> int:  # the hash of mixing.gumbel, in Python integers
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def test_gumbel_noise_is_a_pure_function_of_seed_position_and_token():
    ids = torch.tensor([[5, 9, 2], [5, 9, 2]])
    g = mixing.gumbel(torch.tensor([3, 3]), torch.tensor([0, 1]), ids)
    x = _hash32(
        ((_hash32(((_hash32((9 + 0x9E3779B9) & 0xFFFFFFFF) ^ 1) + 0x7F4A7C15) & 0xFFFFFFFF)) ^ 3) + 0x2545F491
        & 0xFFFFFFFF
    )
    assert float(g[1, 1]) == pytest.approx(-math.log(-math.log((x + 0.5) / 2**32)), abs=1e-12)
    # the same (seed, position, id) anywhere in any batch: the same noise; another seed, position or id: not
    alone = mixing.gumbel(torch.tensor([3]), torch.tensor([1]), torch.tensor([[2, 9]]))
    assert alone[0].tolist() == [float(g[1, 2]), float(g[1, 1])]
    assert len({float(v) for v in g.flatten()}) == 6
    assert mixing.gumbel(torch.tensor([4]), torch.tensor([1]), torch.tensor([[9]]))[0, 0] != g[1, 1]
    # Gumbel(0, 1): mean the Euler-Mascheroni constant, variance pi^2 / 6
    many = mixing.gumbel(torch.arange(4000), torch.zeros(4000, dtype=torch.long), torch.arange(50).expand(4000, 50))
    assert float(many.mean()) == pytest.approx(0.5772, abs=0.01)
    assert float(many.var()) == pytest.approx(math.pi**2 / 6, abs=0.03)


def test_noise_is_added_to_the_prior_logits_before_the_softmax():
    """moi_noise = g: p = softmax(logits + g * G(seed, position, id)); g = 0 is the unswitched prior."""
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5]], dtype=torch.float64)
    cfg = switched(MoIConfig("moi", 1.0, 3, noise=0.75), seed=11)  # 0.75: exact in float32 (the scale's dtype)
    step = mixing.mix_step(logits, torch.tensor([0]), BatchConfig.from_configs([cfg]), positions=torch.tensor([4]))
    g = mixing.gumbel(torch.tensor([11]), torch.tensor([4]), torch.tensor([[0, 1, 2]]))[0].tolist()
    z = [math.exp(x + 0.75 * n) for x, n in zip((1.0, 0.5, 0.0), g, strict=True)]
    assert step.p[0].tolist() == pytest.approx([x / sum(z) for x in z], abs=1e-12)
    zero = mixing.mix_step(
        logits,
        torch.tensor([0]),
        BatchConfig.from_configs([switched(MoIConfig("moi", 1.0, 3, entropy="full", noise=0.0))]),
    )
    assert zero.p[0].tolist() == pytest.approx(
        weights_for([1.0, 0.5, 0.0, -0.5], 0, MoIConfig("moi", 1.0, 3)).p[0].tolist(), abs=1e-12
    )


def test_switched_batch_fast_path_equals_the_plain_reference_per_row():
    """The engine's fed_weights on a batch mixing every switch (per-row k, greedy and sampled, noise), against
    reference_prior (the whole vocabulary, sorted, one row at a time) and mix_weights: the same p, H and weights.
    And nothing modified in place."""
    torch.manual_seed(0)
    logits = torch.randn(6, 300, dtype=torch.float64) * 2
    configs = [
        MoIConfig("moi", 0.5, 5),
        MoIConfig("moi", 1.0, 8, entropy="full"),
        switched(MoIConfig("moi", 2.0, 5, prior="processed"), temperature=0.7, top_p=0.8),
        switched(MoIConfig("direct", 1.0, 8, prior="processed", entropy="full"), temperature=0.0),
        switched(MoIConfig("moi", 0.0, 5, noise=0.5), seed=3),
        switched(MoIConfig("moi", 1.0, 8, prior="processed", noise=1.0), temperature=1.3, top_p=0.5, seed=None),
    ]
    seeds = [0, 0, 0, 0, 0, 99]  # the engine's seed where a request has none
    positions = torch.tensor([0, 1, 2, 3, 17, 5])
    cfg = BatchConfig.from_configs(configs, seeds=seeds)
    sampled = torch.tensor([0, 3, 1, 0, 250, 2])
    ids, top = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)
    before = (logits.clone(), top.clone())
    extras = mixing.prior_extras(logits, cfg.switches, positions)
    cand, w, h = mixing.fed_weights(ids, top, sampled, cfg, extras)
    assert torch.equal(logits, before[0]) and torch.equal(top, before[1])
    for b, c in enumerate(configs):
        k = c.top_k
        c = (
            c
            if c.context is None or c.context.seed is not None
            else switched(c, c.context.temperature, c.context.top_p, seeds[b])
        )
        p, want_h = reference_prior(logits[b], ids[b, :k], c, c.context.seed if c.context else 0, int(positions[b]))
        assert float(h[b]) == pytest.approx(want_h, abs=1e-6), c  # the settings are float32 (as on an engine)
        y = int(sampled[b])
        onehot = torch.tensor([float(i == y) for i in ids[b, :k].tolist()] + [0.0], dtype=torch.float64)
        if onehot.sum() == 0:
            onehot[-1] = 1.0
        want = mixing.mix_weights(
            p[None],
            torch.tensor([want_h], dtype=torch.float64),
            onehot[None],
            torch.tensor([c.beta], dtype=torch.float64),
            torch.tensor([MODE_CODES[c.mode]]),
        )[0]
        got = {}
        for i, x in zip(cand[b, : k + 1].tolist(), w[b, : k + 1].tolist(), strict=True):
            got[i] = got.get(i, 0.0) + x
        expect = {}
        for i, x in zip(ids[b, :k].tolist() + [y], want.tolist(), strict=True):
            expect[i] = expect.get(i, 0.0) + x
        assert got == pytest.approx(expect, abs=1e-6), c


@pytest.mark.parametrize("cfg", [MoIConfig("moi", 0.5, 4), MoIConfig("moi", 2.0, 4), MoIConfig("direct", 1.0, 4)])
@pytest.mark.parametrize("sampled", [1, 9])  # inside the top-k, and outside it
def test_prior_from_weights_inverts_the_posterior(cfg, sampled):
    p = [0.5, 0.3, 0.15, 0.05]
    ids = [3, 1, 4, 7]
    cands, w, h_used = step_weights([math.log(x) for x in p], ids, sampled, cfg)
    # with the H the weights were mixed with, the prior comes back
    assert prior_from_weights(cands, w, ids, sampled, h_used, cfg) == pytest.approx(p, abs=1e-9)
    assert prior_from_weights([sampled], [1.0], ids, sampled, 0.0, MoIConfig("moi", 1.0, 4)) is None
