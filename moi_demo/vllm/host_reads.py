"""What syncs the host with the device in the hooks' own code, counted (MOI_DEMO_HOST_READS=1: tests, the doctor)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__index__", "__float__", "cpu", "numpy")
INDEXING = ("__getitem__", "__setitem__")


class HostReadCounter(torch.overrides.TorchFunctionMode):
    """Counts what syncs the host with the device under it: reads of tensor values by the host (`.item()`,
    `.tolist()`, `bool(t)`, `int(t)`, `.cpu()`...) and indexing of a tensor with a Python list, a bool or a numpy
    array (torch copies such an index from pageable host memory to the device: a stream sync on CUDA, counted as
    "index:list" / "index:bool" / "index:ndarray"). The plugin runs its own hook code under this when
    MOI_DEMO_HOST_READS=1, and reports the counts in moi_stats."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (name == "to" and _to_host(args, kwargs or {})):
            self.counts[name] = self.counts.get(name, 0) + 1
        elif name in INDEXING and len(args) > 1 and (kind := _host_index(args[1])):
            key = f"index:{kind}"
            self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


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
    return (isinstance(src, torch.Tensor) and src.device.type != "cpu"
            and isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu")
