"""What would sync the host with the device in the hooks' own code, counted (MOI_DEMO_HOST_READS=1: tests, the doctor).

Counted by the form of the call, so that a CPU run flags what would sync on CUDA: a read of a tensor's values by the
host, an index copied from host memory, and a tensor created on the device from host data or copied to it from
pageable memory. Host-only buffers (pinned staging, or CPU tensors while the state lives on another device) are not
counted: reading them never waits for the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__index__", "__float__", "cpu", "numpy")
INDEXING = ("__getitem__", "__setitem__")
CREATION = ("tensor", "as_tensor")  # torch.tensor(host data, device=...) copies from pageable memory


class HostReadCounter(torch.overrides.TorchFunctionMode):
    """Counts, under it, what syncs the host with the device on CUDA (the key in `counts`):

    - reads of tensor values by the host: `.item()`, `.tolist()`, `bool(t)`, `int(t)`, `.cpu()`, `.numpy()`... (the
      method's name), except of host-only tensors (pinned, or on the CPU while `device` is not);
    - indexing with a Python list, a bool or a numpy array: torch copies the index from pageable host memory to the
      device ("index:list", "index:bool", "index:ndarray");
    - a device tensor made from host data, `torch.tensor(data, device=d)` or `torch.as_tensor(data, device=d)`
      ("h2d:tensor", "h2d:as_tensor"), and a copy of an unpinned CPU tensor to a device, `.to(d)` or `.to(device=d)`
      without non_blocking from pinned memory ("h2d:to"). The target device counts by the form of the call: `d` names
      `device` (the state's device, also the CPU), or any device that is not the CPU.

    `device`: the device the state's tensors live on (None: the CPU). The plugin runs its own hook code under this
    when MOI_DEMO_HOST_READS=1 and reports the counts in moi_stats."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.device = torch.device(device or "cpu")
        self.counts: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            if not (args and isinstance(args[0], torch.Tensor) and self._host_only(args[0])):
                self._count(name)
        elif name == "to":
            if _to_host(args, kwargs):
                self._count("to")
            elif self._to_device_pageable(args, kwargs):
                self._count("h2d:to")
        elif name in CREATION:
            if self._creates_on_device(args, kwargs):
                self._count(f"h2d:{name}")
        elif name in INDEXING and len(args) > 1 and (kind := _host_index(args[1])):
            self._count(f"index:{kind}")
        return func(*args, **kwargs)

    def _host_only(self, t: torch.Tensor) -> bool:
        """A tensor the host reads without waiting for the device: pinned staging, or any CPU tensor while the state
        lives elsewhere."""
        if t.device.type != "cpu":
            return False
        return self.device.type != "cpu" or t.is_pinned()

    def _targets_device(self, target: Any) -> bool:
        if isinstance(target, torch.Tensor):
            target = target.device
        if not isinstance(target, str | torch.device):
            return False
        target = torch.device(target)
        return target.type != "cpu" or target == self.device

    def _creates_on_device(self, args: tuple, kwargs: dict) -> bool:
        """torch.tensor / torch.as_tensor of host data (not a device tensor) with a device named."""
        if not self._targets_device(kwargs.get("device")):
            return False
        data = args[0] if args else kwargs.get("data")
        return not isinstance(data, torch.Tensor) or (data.device.type == "cpu" and not data.is_pinned())

    def _to_device_pageable(self, args: tuple, kwargs: dict) -> bool:
        """`t.to(d)` / `t.to(device=d)` of an unpinned CPU tensor (pageable memory), or of a pinned one without
        non_blocking (the host waits for the copy)."""
        src = args[0] if args else None
        if not isinstance(src, torch.Tensor) or src.device.type != "cpu":
            return False
        target = kwargs.get("device", args[1] if len(args) > 1 else None)
        if not self._targets_device(target):
            return False
        return not (src.is_pinned() and kwargs.get("non_blocking", False))


def _host_index(index: Any) -> str | None:
    """The kind of a host-side index that torch must copy to the device: a list, bool or numpy array (alone or
    inside a tuple of indices); None for ints, slices, None, Ellipsis and tensors."""
    for part in index if isinstance(index, tuple) else (index,):
        if isinstance(part, bool):
            return "bool"
        if isinstance(part, list):
            return "list"
        if isinstance(part, np.ndarray | np.bool_):
            return "ndarray"
    return None


def _to_host(args: tuple, kwargs: dict) -> bool:
    """`t.to("cpu")` / `t.to(device=cpu)` of a tensor that is not on the CPU."""
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    src = args[0] if args else None
    return (
        isinstance(src, torch.Tensor)
        and src.device.type != "cpu"
        and isinstance(target, str | torch.device)
        and torch.device(target).type == "cpu"
    )
