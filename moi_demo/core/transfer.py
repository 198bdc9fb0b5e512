"""Host values to device tensors without a device sync: one packed, pinned, non_blocking copy. Pure torch.

`torch.tensor(values, device="cuda")` copies from pageable host memory, which makes the host wait for the stream (a
sync: `torch.cuda.set_sync_debug_mode("error")` and vLLM's `VLLM_GPU_SYNC_CHECK=error` raise on it). Per-batch
settings change whenever a request joins or leaves, inside the engine's step, so they go this way instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# float64 holds every value packed here exactly: bools, ints below 2^53 (ids, k, seeds < 2^32) and float32 values
# (cast on the device with the rounding `torch.tensor(x, dtype=torch.float32)` applies to a Python float).
_PACK = torch.float64


def columns_to_device(
    columns: Sequence[Sequence[float]], dtypes: Sequence[torch.dtype], device: torch.device | str
) -> list[torch.Tensor]:
    """Columns of host values (each [B], the same B) -> one device tensor [B] per column, in `dtypes`.

    Packed into one float64 host tensor [n, B]; where the device is not the CPU it is pinned and copied once with
    non_blocking=True (torch's host allocator keeps the pinned block until the copy is done), then each column is
    cast on the device. Equal to `torch.tensor(column, dtype=dtype, device=device)` for bools, ints below 2^53 and
    float32 values.
    """
    device = torch.device(device)
    host = torch.tensor(columns, dtype=_PACK).reshape(len(columns), -1)  # [n, B] host only: no copy to a device yet
    if device.type != "cpu":
        host = host.pin_memory().to(device, non_blocking=True)
    return [row.to(dtype) if dtype != _PACK else row.clone() for row, dtype in zip(host, dtypes, strict=True)]
