"""Host index arrays to the device in one copy per call: through a pinned staging buffer, non_blocking. Pure torch."""

from __future__ import annotations

import numpy as np
import torch


class Staging:
    """Copies host int64 arrays to `device`. On a CPU device: a tensor per array, no copy to wait for. Otherwise the
    arrays are packed into one pinned buffer and copied once, non_blocking.

    The buffer is reused from its start at every `reset()`. The engine resets at a step's `plan()`, and vLLM calls it
    only after the previous step's input copies are done (`synchronize_input_prep`), so no copy still reads it. Calls
    from outside a step (introspection) pass staged=False: a fresh pinned tensor, which torch's host allocator keeps
    until its copy is done."""

    def __init__(self, device: torch.device, min_size: int):
        self.device, self.min_size = device, min_size
        self._pinned: torch.Tensor | None = None
        self._off = 0

    def reset(self) -> None:
        self._off = 0

    def to_device(self, *arrays: np.ndarray, staged: bool = True) -> list[torch.Tensor]:
        """Each array [n_i] -> an int64 tensor [n_i] on the device."""
        arrays = tuple(np.asarray(a, dtype=np.int64) for a in arrays)
        if self.device.type == "cpu":
            return [torch.from_numpy(a.copy()) for a in arrays]
        sizes = [a.size for a in arrays]
        total = sum(sizes)
        flat = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if not staged:
            pinned = torch.from_numpy(flat.copy()).pin_memory()
            return list(torch.split(pinned.to(self.device, non_blocking=True), sizes))
        if self._pinned is None or self._pinned.numel() < self._off + total:
            size = max(2 * (self._off + total), self.min_size)
            self._pinned = torch.empty(size, dtype=torch.int64, pin_memory=True)
            self._off = 0
        host = self._pinned[self._off : self._off + total]
        self._off += total
        host.numpy()[:] = flat
        return list(torch.split(host.to(self.device, non_blocking=True), sizes))
