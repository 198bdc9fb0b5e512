"""Where the MoI requests' histories are kept: the page pools (one per width), the step's writes into them, reads for
a recompute and for the records the API returns, and what is kept of a request once it ends. Pure torch + numpy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from moi_demo.core import mixing
from moi_demo.vllm.history import PAGE, RECOMPUTE_BYTES, PagePool, RequestHistory, merged, recompute_bytes_per_token
from moi_demo.vllm.staging import Staging

MAX_KEPT_RECORDS = 256  # finished requests (moi_record) whose records wait to be read (records_of)
MAX_FINISHED = 4096  # finished requests whose fed counts (and, with record_all, histories) stats report

Held = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (candidate ids [n, C] int32, weights [n, C], H [n])


class HistoryStore:
    """The page pools of every MoI request's history, on `device`, and the records of ended requests.

    `record_all` keeps every finished request's history (tests, debugging). A request that asked for its record
    (`moi_record`: a switched lane's weights cannot be rebuilt from returned log-probs) and was not read while live
    keeps it at its end until `records_of` hands it out; the oldest are dropped past MAX_KEPT_RECORDS."""

    def __init__(self, device: torch.device, staging: Staging, record_all: bool = False):
        self.device, self.staging, self.record_all = device, staging, record_all
        self.pools: dict[int, PagePool] = {}
        self.finished: dict[str, int] = {}  # req_id -> tokens fed (bounded)
        self.finished_records: dict[str, Held] = {}  # record_all
        self.kept_records: dict[str, Held] = {}  # moi_record, until read
        self.tokens_total = self.bytes_total = 0  # history held by finished requests, summed

    # -- pages ---------------------------------------------------------------------------------------------

    def new_page(self, hist: RequestHistory) -> int:
        """Give `hist` one more page (its next token starts one); returns the page."""
        pool = self.pools.get(hist.width) or self.pools.setdefault(hist.width, PagePool(hist.width, self.device))
        hist.pages.append(pool.alloc())
        return hist.pages[-1]

    def cut(self, hist: RequestHistory, keep: int) -> None:
        """Keep the first `keep` generated tokens of `hist`, returning the pages past them."""
        n_pages = -(-keep // PAGE)
        self.pools[hist.width].release(hist.pages[n_pages:])
        del hist.pages[n_pages:]
        hist.length, hist.fed = keep, min(hist.fed, keep)

    def release(self, hist: RequestHistory) -> None:
        if hist.pages:
            self.pools[hist.width].release(hist.pages)
        hist.pages, hist.length = [], 0

    def retire(self, hist: RequestHistory) -> None:
        """`hist` ended: keep its fed count, its size in the totals, and its record where asked; free its pages."""
        self.finished[hist.req_id] = hist.fed
        if hist.length:
            self.tokens_total += hist.length
            self.bytes_total += hist.length * self.pools[hist.width].bytes_per_token
        if self.record_all:
            self.finished_records[hist.req_id] = self.held(hist)  # read on the host only when asked (stats)
        if hist.config.keep_record and not hist.read:
            self.kept_records[hist.req_id] = self.held(hist)
        self.release(hist)
        for store, most in (
            (self.finished, MAX_FINISHED),
            (self.finished_records, MAX_FINISHED),
            (self.kept_records, MAX_KEPT_RECORDS),
        ):
            while len(store) > most:
                store.pop(next(iter(store)))

    # -- device writes and reads -----------------------------------------------------------------------------

    def write(
        self,
        write_t: dict[int, tuple[torch.Tensor | None, torch.Tensor]],
        candidate_ids: torch.Tensor,
        weights: torch.Tensor,
        entropy: torch.Tensor | None,
    ) -> None:
        """One step's candidates [M, C], weights [M, C] and H [M] into the pool rows of a plan's `write_t` (width ->
        (positions in the M rows or None for all, pool rows)). Device ops only: a CUDA graph of the step replays it."""
        for width, (sel, flat) in write_t.items():
            pool = self.pools[width]
            ids = candidate_ids if candidate_ids.shape[1] == width else candidate_ids[:, :width]
            w = weights if weights.shape[1] == width else weights[:, :width]
            h = entropy
            if sel is not None:
                ids, w = ids.index_select(0, sel), w.index_select(0, sel)
                h = h.index_select(0, sel) if h is not None else None
            pool.ids_flat.index_copy_(0, flat, ids if ids.dtype == torch.int32 else ids.to(torch.int32))
            pool.weights_flat.index_copy_(0, flat, w if w.dtype == torch.float32 else w.float())
            if h is not None:
                pool.entropy_flat.index_copy_(0, flat, h if h.dtype == torch.float32 else h.float())

    def read(self, hist: RequestHistory, js: np.ndarray, staged: bool = True) -> Held:
        """(ids [n, C] int32, weights [n, C], H [n]) of generated tokens js [n] of `hist`."""
        pool = self.pools[hist.width]
        (flat,) = self.staging.to_device(pool.flat(hist.pages, js), staged=staged)
        return (
            pool.ids_flat.index_select(0, flat),
            pool.weights_flat.index_select(0, flat),
            pool.entropy_flat.index_select(0, flat),
        )

    def held(self, hist: RequestHistory) -> Held:
        """A copy of everything `hist` holds, on the device (no host read). Its length must be current."""
        if hist.length == 0:
            empty = torch.zeros(0, hist.width)
            return empty.int(), empty, torch.zeros(0)
        return self.read(hist, np.arange(hist.length), staged=False)

    def rebuild(
        self,
        hist: RequestHistory,
        js: np.ndarray,
        embed: Callable[[torch.Tensor], torch.Tensor],
        out: torch.Tensor,
        targets: np.ndarray,
        reduce: mixing.Reduce | None = None,
    ) -> None:
        """Rebuild the mixed inputs of generated tokens js [n] of `hist` through the model's own embedding, into rows
        `targets` [n] of `out` [N, D] (recompute after preemption, chunked prefill over outputs). In chunks: the
        temporaries never exceed max(RECOMPUTE_BYTES, one token's), whatever n is (vLLM may schedule a whole
        max_num_batched_tokens of it). `embed` and `reduce` as in mixing.fed_step: the same sum as the step that first
        fed them."""
        step = max(1, RECOMPUTE_BYTES // recompute_bytes_per_token(hist.width, out.shape[1], out.dtype))
        for lo in range(0, js.size, step):
            ids, w, _ = self.read(hist, js[lo : lo + step])  # [c, C] int32, [c, C] float32
            mixed = mixing.mix_embeddings(w, ids.long(), embed, out_dtype=out.dtype, reduce=reduce)  # [c, D]
            (targets_t,) = self.staging.to_device(targets[lo : lo + step])
            out.index_copy_(0, targets_t, mixed)

    def mixed(
        self, hist: RequestHistory, js: np.ndarray, embed: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype
    ) -> torch.Tensor:
        """Mixed inputs [len(js), D] of generated tokens js of `hist`, in one piece (tests, introspection)."""
        ids, w, _ = self.read(hist, js, staged=False)
        return mixing.mix_embeddings(w, ids.long(), embed, out_dtype=dtype)

    # -- records and sizes -------------------------------------------------------------------------------------

    def records_of(self, asked: Callable[[str], bool], live: Iterable[RequestHistory]) -> dict[str, dict[str, list]]:
        """The records of the kept requests and the `live` ones (lengths current) whose ids are `asked`: {req_id:
        {"candidates": [n][..], "weights": [n][..], "entropy": [n]}}, one weight per distinct id. A kept record is
        handed out once; a live one read is marked so that it is not kept at its end. One device read in all: every
        record's ids, weights and H packed into one float64 tensor (exact for int32 ids and float32 values)."""
        found: dict[str, Held] = {}
        for req_id in [r for r in self.kept_records if asked(r)]:
            found[req_id] = self.kept_records.pop(req_id)
        for hist in live:
            if asked(hist.req_id):
                found[hist.req_id] = self.held(hist)
                hist.read = True
        parts = [t.reshape(-1).to(torch.float64) for held in found.values() for t in held]
        flat = torch.cat(parts).tolist() if parts else []
        out, at = {}, 0
        for req_id, (ids, _, _) in found.items():
            n, width = ids.shape
            ids_h = [[int(x) for x in flat[at + i * width : at + (i + 1) * width]] for i in range(n)]
            at += n * width
            weights_h = [flat[at + i * width : at + (i + 1) * width] for i in range(n)]
            at += n * width
            rows = merged(ids_h, weights_h)
            out[req_id] = {
                "candidates": [c for c, _ in rows],
                "weights": [w for _, w in rows],
                "entropy": flat[at : at + n],
            }
            at += n
        return out

    def memory(self, live: Sequence[RequestHistory], buffer: torch.Tensor | None) -> dict[str, Any]:
        """What MoI holds now (`live` requests, lengths current; the next-input `buffer`), and bytes per token over
        every request so far."""
        tokens = sum(h.length for h in live)
        history_bytes = sum(h.length * self.pools[h.width].bytes_per_token for h in live if h.length)
        pool_bytes = sum(p.capacity * PAGE * p.bytes_per_token for p in self.pools.values())
        buffer_bytes = 0 if buffer is None else buffer.numel() * buffer.element_size()
        all_tokens, all_bytes = tokens + self.tokens_total, history_bytes + self.bytes_total
        return {
            "history_tokens": tokens,
            "history_bytes": history_bytes,
            "pool_bytes": pool_bytes,
            "buffer_bytes": buffer_bytes,
            "total_bytes": pool_bytes + buffer_bytes,
            "bytes_per_token": all_bytes / all_tokens if all_tokens else 0.0,
        }
