"""A MoI request's compact history: per generated token its (k + 1) candidate ids (int32), mix weights (float32)
and H (float32), in pages of PAGE tokens drawn from a pool per width (like vLLM's KV blocks), and the bound on
what rebuilding mixed inputs from it may hold at once. Pure torch + numpy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from moi_demo.core.config import MoIConfig

PAGE = 32  # generated tokens per history page
RECOMPUTE_BYTES = 64 << 20  # bound on a recompute's temporaries (see recompute_bytes_per_token)


def recompute_bytes_per_token(width: int, hidden: int, dtype: torch.dtype) -> int:
    """Temporary bytes to rebuild one token's mixed input from its history, C = width = k + 1 candidates, D =
    hidden, e = the model dtype's bytes: C ids (int32 read + int64) and weights (float32), the C embeddings
    (e bytes each, plus a float32 copy where e < 4), the float32 sum and its cast:
    C * (16 + D * (e + 4 * (e < 4))) + D * (4 + e). k 20, D 8192, bf16: ~1.1 MB, so 64 MiB holds 62 tokens."""
    e = torch.empty(0, dtype=dtype).element_size()
    return width * (16 + hidden * (e + (4 if e < 4 else 0))) + hidden * (4 + e)


SWAP = "swap"  # a two-way move (vLLM's MoveDirectionality.SWAP); anything else is one-way a -> b


class PagePool:
    """Pages of PAGE tokens x `width` columns: candidate ids (int32) and weights (float32), and per token the H it
    was mixed with (float32), on `device`. Grows by doubling (a copy, rare: at most log2(peak pages) times); pages
    return to a free list."""

    def __init__(self, width: int, device: torch.device):
        self.width, self.device = width, device
        self.free: list[int] = []
        self._set(
            torch.zeros(0, PAGE, width, dtype=torch.int32, device=device),
            torch.zeros(0, PAGE, width, dtype=torch.float32, device=device),
            torch.zeros(0, PAGE, dtype=torch.float32, device=device),
        )

    def _set(self, ids: torch.Tensor, weights: torch.Tensor, entropy: torch.Tensor) -> None:
        self.ids, self.weights, self.entropy = ids, weights, entropy  # [P, PAGE, C] x 2, [P, PAGE]
        self.ids_flat, self.weights_flat = ids.view(-1, self.width), weights.view(-1, self.width)  # [P * PAGE, C]
        self.entropy_flat = entropy.view(-1)  # [P * PAGE]

    @property
    def capacity(self) -> int:
        return self.ids.shape[0]

    @property
    def bytes_per_token(self) -> int:
        return self.width * (self.ids.element_size() + self.weights.element_size()) + self.entropy.element_size()

    def alloc(self) -> int:
        if not self.free:
            old = self.capacity
            new = max(8, 2 * old)
            ids = torch.zeros(new, PAGE, self.width, dtype=torch.int32, device=self.device)
            weights = torch.zeros(new, PAGE, self.width, dtype=torch.float32, device=self.device)
            entropy = torch.zeros(new, PAGE, dtype=torch.float32, device=self.device)
            ids[:old], weights[:old], entropy[:old] = self.ids, self.weights, self.entropy
            self._set(ids, weights, entropy)
            self.free = list(range(new - 1, old - 1, -1))
        return self.free.pop()

    def release(self, pages: Iterable[int]) -> None:
        self.free.extend(pages)

    def flat(self, pages: Sequence[int], js: np.ndarray) -> np.ndarray:
        """Flat row indices (into ids.view(-1, C)) of tokens js of a request holding `pages`."""
        return np.asarray(pages, dtype=np.int64)[js // PAGE] * PAGE + js % PAGE


@dataclass
class RequestHistory:
    """One MoI request: its settings and compact history (generated token j -> page j // PAGE)."""

    req_id: str
    config: MoIConfig
    prompt_len: int
    owner: Any = None  # identity of the engine's request object: a new object with the same id is a new request
    pages: list[int] = field(default_factory=list)
    length: int = 0  # generated tokens whose (candidates, weights) are held
    fed: int = 0  # generated tokens fed back as mixed inputs at least once
    row: int = -1  # its batch row, -1 while out of the batch (preempted)
    read: bool = False  # its record was handed out (records_of): not kept at its finish

    @property
    def width(self) -> int:
        return self.config.top_k + 1


def merged(
    ids: torch.Tensor | list[list[int]], weights: torch.Tensor | list[list[float]]
) -> list[tuple[list[int], list[float]]]:
    """Per token: the distinct candidate ids and their summed weights (the sampled id may appear twice). Tensors
    [n, C] are read to the host; lists are taken as they are."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    weights = weights.tolist() if isinstance(weights, torch.Tensor) else weights
    out = []
    for row_ids, row_w in zip(ids, weights, strict=True):
        merged: dict[int, float] = {}
        for i, x in zip(row_ids, row_w, strict=True):
            merged[i] = merged.get(i, 0.0) + x
        out.append((list(merged), list(merged.values())))
    return out
