"""The MoI settings and progress of each row of a persistent batch, as host arrays, and the next step's mixed inputs
per row on the device. Pure torch + numpy."""

from __future__ import annotations

import numpy as np
import torch

from moi_demo.core.config import MODE_CODES
from moi_demo.vllm.history import PAGE, RequestHistory


class RowTable:
    """Per batch row r < max_rows (numpy arrays, the hooks' index source): the MoI request in it, its settings, and
    how far it is. A request's own counters (`RequestHistory.length`, `.fed`) are current only while it is out of
    the batch: `sync(row)` writes them back before a row changes hands or is read.

    `buffer` [max_rows, D] holds each row's next mixed input (`buffer_valid`: that of its token length - 1); it is
    allocated at the first step (`ensure_buffer`) and moves with its row."""

    ARRAYS = (
        "mixes", "mode", "beta", "top_k", "switched", "forced", "prompt_len", "length", "fed", "page", "buffer_valid",
    )  # fmt: skip

    def __init__(self, max_rows: int):
        r = max_rows
        self.req: list[RequestHistory | None] = [None] * r
        self.mixes = np.zeros(r, dtype=bool)  # a MoI request is in the row
        self.mode = np.zeros(r, dtype=np.int64)  # MODE_CODES
        self.beta = np.zeros(r, dtype=np.float32)
        self.top_k = np.ones(r, dtype=np.int64)
        self.switched = np.zeros(r, dtype=bool)  # a switch away from the paper's MoI (MoIConfig.switched)
        self.forced = np.zeros(r, dtype=bool)  # samples given tokens (MoIConfig.force)
        self.prompt_len = np.zeros(r, dtype=np.int64)
        self.length = np.zeros(r, dtype=np.int64)  # generated tokens held
        self.fed = np.zeros(r, dtype=np.int64)  # generated tokens fed back at least once
        self.page = np.zeros(r, dtype=np.int64)  # the page that holds token `length` (when length % PAGE)
        self.buffer_valid = np.zeros(r, dtype=bool)
        self.buffer: torch.Tensor | None = None

    def ensure_buffer(self, hidden: int, dtype: torch.dtype, device: torch.device) -> None:
        if self.buffer is None or self.buffer.shape[1] != hidden or self.buffer.dtype != dtype:
            self.buffer = torch.zeros(len(self.req), hidden, dtype=dtype, device=device)
            self.buffer_valid[:] = False

    def attach(self, row: int, hist: RequestHistory) -> None:
        self.req[row], hist.row = hist, row
        self.mixes[row] = True
        self.mode[row] = MODE_CODES[hist.config.mode]
        self.beta[row] = max(hist.config.beta, 0.0)
        self.top_k[row] = hist.config.top_k
        self.switched[row] = hist.config.switched
        self.forced[row] = hist.config.force is not None
        self.prompt_len[row] = hist.prompt_len
        self.reload(row)

    def reload(self, row: int) -> None:
        """The row's progress from its request's counters (after `attach` or a cut); its buffer no longer holds it."""
        hist = self.req[row]
        self.length[row], self.fed[row] = hist.length, hist.fed
        self.page[row] = hist.pages[hist.length // PAGE] if hist.length % PAGE else -1
        self.buffer_valid[row] = False

    def sync(self, row: int) -> None:
        """The row's progress -> its request's counters."""
        hist = self.req[row]
        if hist is not None:
            hist.length, hist.fed = int(self.length[row]), int(self.fed[row])

    def detach(self, row: int) -> None:
        self.sync(row)
        if self.req[row] is not None:
            self.req[row].row = -1
        self.req[row] = None
        self.mixes[row] = self.buffer_valid[row] = False

    def move(self, a: int, b: int) -> None:
        """Row a's request to row b (whatever b held is gone: detach it first)."""
        self.req[b], self.req[a] = self.req[a], None
        if self.req[b] is not None:
            self.req[b].row = b
        for name in self.ARRAYS:
            arr = getattr(self, name)
            arr[b] = arr[a]
        if self.buffer_valid[b] and self.buffer is not None:
            self.buffer[b].copy_(self.buffer[a])  # int indices: views, a device copy (no host index tensor)
        self.mixes[a] = self.buffer_valid[a] = False

    def swap(self, a: int, b: int) -> None:
        self.req[a], self.req[b] = self.req[b], self.req[a]
        for row in (a, b):
            if self.req[row] is not None:
                self.req[row].row = row
        for name in self.ARRAYS:
            arr = getattr(self, name)  # host numpy: fancy indexing is free here
            arr[[a, b]] = arr[[b, a]]
        if (self.buffer_valid[a] or self.buffer_valid[b]) and self.buffer is not None:
            # Never `buffer[[a, b]] = buffer[[b, a]]`: a list index becomes a pageable host tensor copied to the
            # device (a stream sync on CUDA). Row views and device copies only.
            row_a = self.buffer[a].clone()
            self.buffer[a].copy_(self.buffer[b])
            self.buffer[b].copy_(row_a)
