"""core/inspection.py on hand-built tensors: the fed input, its cosine to E[sampled], the nearest rows."""

from __future__ import annotations

import math

import pytest
import torch

from moi_demo.core import inspection

E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 0.0]])  # V = 5, D = 2


def embed(ids: torch.Tensor) -> torch.Tensor:
    return E[ids]


def test_fed_input_is_the_weighted_sum_and_a_standard_step_is_its_token():
    ids = torch.tensor([[0, 1], [2, 0]])
    w = torch.tensor([[0.75, 0.25], [1.0, 0.0]])
    fed = inspection.fed_inputs(ids, w, embed)
    assert fed.tolist() == [[0.75, 0.25], [1.0, 1.0]]
    assert inspection.fed_inputs(ids, w, embed).dtype == torch.float32 and ids.tolist() == [[0, 1], [2, 0]]


def test_fed_inputs_in_chunks_equal_one_pass(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (10, 3), generator=gen)
    w = torch.softmax(torch.randn(10, 3, generator=gen), -1)
    whole = inspection.fed_inputs(ids, w, embed)
    monkeypatch.setattr(inspection, "CHUNK_STEPS", 3)
    torch.testing.assert_close(inspection.fed_inputs(ids, w, embed), whole, rtol=0, atol=0)


def test_cosine_to_the_sampled_token():
    fed = torch.tensor([[0.75, 0.25], [1.0, 1.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    cos = inspection.cosine_to(fed, target)
    assert cos[0].item() == pytest.approx(0.75 / math.sqrt(0.625))  # 0.9487
    assert cos[1].item() == pytest.approx(1.0) and cos[2].item() == 0.0  # a zero vector: 0, not NaN


def test_nearest_rows_by_cosine_with_an_offset():
    norms = E.norm(dim=-1)
    ids, sims = inspection.nearest(torch.tensor([0.75, 0.25]), E, norms, k=3, offset=100)
    # cos to rows 0..4: 0.949, 0.316, 0.894, 0 (zero row), -0.949
    assert ids == [100, 102, 101]
    assert sims == pytest.approx([0.75 / math.sqrt(0.625), 1.0 / math.sqrt(1.25), 0.25 / math.sqrt(0.625)])


def test_row_norms_in_chunks_equal_the_whole_matrix_norms_in_float32():
    gen = torch.Generator().manual_seed(1)
    matrix = torch.randn(37, 6, generator=gen).to(torch.bfloat16)
    got = inspection.row_norms(matrix, chunk=8)  # 5 chunks, the last one short
    assert got.dtype == torch.float32 and torch.equal(got, matrix.float().norm(dim=-1))


def test_an_inspection_merges_every_ranks_nearest_and_pads_the_request():
    """Under tensor parallelism each rank answers for its slice of the vocabulary: the lane's nearest are the NEAREST
    best over all ranks, best first; the request pads each step's candidates to one width (a standard step: its
    sampled token, weight 1) and clamps the step."""
    from moi_demo.core.config import MoIConfig
    from moi_demo.core.inspection import NEAREST
    from moi_demo.core.trace import Step, Trace
    from moi_demo.serving.lanes import inspect_answer, inspect_request

    trace = Trace("moi", "moi", 1.0, 3)
    trace.steps = [
        Step(0, 7, "a", -0.1, [7, 8], [-0.1, -2.0], 0.3, candidate_ids=[7, 8, 7], weights=[0.5, 0.2, 0.3]),
        Step(1, 9, "b", -0.2, [9], [-0.2], 0.0),
    ]
    lane = inspect_request(trace, 5)
    assert lane == {
        "ids": [[7, 8, 7], [9, 0, 0]],
        "weights": [[0.5, 0.2, 0.3], [1.0, 0.0, 0.0]],
        "sampled": [7, 9],
        "step": 1,
    }
    ranks = [
        {"cos": [0.9, 1.0], "nearest_ids": [1, 2, 3], "nearest_sims": [0.1, 0.5, 0.9]},
        {"cos": [0.9, 1.0], "nearest_ids": [4, 5, 6], "nearest_sims": [0.2, 0.6, 0.95]},
    ]
    answer = inspect_answer(trace, lane, ranks, lambda ids: f"t{ids[0]}", 2.0)
    assert [n["id"] for n in answer["nearest"]] == [6, 3, 5, 2, 4][:NEAREST]
    assert answer["nearest"][0] == {"token": "t6", "id": 6, "cos": 0.95}
    assert (answer["step"], answer["sampled"], answer["cos_at_step"], answer["ms"]) == (1, "b", 1.0, 2.0)
    assert answer["label"] == "Mixture of Inputs (beta = 1)" and MoIConfig("moi", 1.0, 3) == trace.config
