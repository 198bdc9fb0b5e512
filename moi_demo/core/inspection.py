"""What the model reads back, measured: the fed input embedding against the sampled token's, and the vocabulary
tokens nearest to it. Pure torch; the engine runs it where the embedding matrix lives (vllm/hooks.py, a worker
RPC), the reference decoder on its own model.

Shapes: n steps, C candidates, D hidden, V the vocabulary (a shard of it under tensor parallelism).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moi_demo.core.mixing import mix_embeddings

NEAREST = 5  # vocabulary tokens listed per inspected step
CHUNK_STEPS = 64  # steps whose candidates are embedded at once ([CHUNK_STEPS, C, D] temporaries)


def fed_inputs(
    candidate_ids: torch.Tensor, weights: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The fed input of each step [n, D] float32: sum_i w_i * embed(candidate_i), as the plugin feeds it (a standard
    step: its sampled id with weight 1), in chunks of CHUNK_STEPS."""
    out = [
        mix_embeddings(weights[i : i + CHUNK_STEPS], candidate_ids[i : i + CHUNK_STEPS], embed, torch.float32)
        for i in range(0, candidate_ids.shape[0], CHUNK_STEPS)
    ]
    return torch.cat(out) if out else torch.zeros(0, 0)


def cosine_to(fed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cos(fed[i], target[i]) [n] for fed, target [n, D] (0 where either is zero)."""
    fed, target = fed.float(), target.float()
    num = (fed * target).sum(-1)
    den = fed.norm(dim=-1) * target.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


NORM_ROWS = 4096  # vocabulary rows whose float32 norms are taken at once (never a float32 copy of the whole matrix)


def row_norms(matrix: torch.Tensor, chunk: int = NORM_ROWS) -> torch.Tensor:
    """matrix.norm(dim=-1) in float32 [V] for `matrix` [V, D] in any dtype, in chunks of `chunk` rows: the
    temporaries stay [chunk, D] (a float32 copy of a 32B model's embedding matrix would be 3.1 GB)."""
    out = torch.empty(matrix.shape[0], dtype=torch.float32, device=matrix.device)
    for lo in range(0, matrix.shape[0], chunk):
        out[lo : lo + chunk] = matrix[lo : lo + chunk].float().norm(dim=-1)
    return out


def nearest(
    vector: torch.Tensor, matrix: torch.Tensor, row_norms: torch.Tensor, k: int = NEAREST, offset: int = 0
) -> tuple[list[int], list[float]]:
    """The k rows of `matrix` [V, D] nearest to `vector` [D] by cosine (`row_norms` [V]: matrix.norm(dim=-1),
    computed once per model), as (ids + offset, similarities), most similar first."""
    v = vector.to(matrix.dtype)
    sims = (matrix @ v).float() / (row_norms * vector.float().norm()).clamp_min(1e-30)  # [V]
    top = torch.topk(sims, min(k, sims.numel()))
    return [int(i) + offset for i in top.indices.tolist()], [float(s) for s in top.values.tolist()]
