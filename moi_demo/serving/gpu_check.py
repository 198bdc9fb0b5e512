"""Stop at start where an NVIDIA GPU is present but torch cannot use it, instead of silently taking the CPU path.

The pinned `vllm==0.32.0` (the `gpu` extra, what a Space installs from requirements.txt) pulls torch 2.13.0, whose
Linux wheels are built for the CUDA 13.0 runtime (its cuda-toolkit 13.0.3 wheels come with it from PyPI). CUDA 13.0
needs an NVIDIA driver >= 580.65.06 and a GPU of compute capability >= 7.5 (Turing or newer). On a machine with a
GPU, a CPU build of torch, an older driver or an unsupported GPU all make `torch.cuda.is_available()` False, and the
app would then serve a GPU Space's strangers on its CPU at a fraction of the speed.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger("moi_demo.serving.gpu_check")

CUDA_RUNTIME = "13.0"
MIN_DRIVER = "580.65.06"
MIN_COMPUTE_CAPABILITY = "7.5"
ENV_DEVICE = "MOI_DEMO_DEVICE"  # "cpu": run on the CPU even where a GPU is present


class GPUUnusableError(RuntimeError):
    """An NVIDIA GPU is present, and torch cannot use it."""


def nvidia_gpus(root: str = "/proc/driver/nvidia") -> list[str]:
    """The NVIDIA GPUs the kernel driver reports (their model names), else device nodes /dev/nvidia0.. ."""
    names = []
    for info in sorted(glob.glob(f"{root}/gpus/*/information")):
        model = next(
            (ln.split(":", 1)[1].strip() for ln in Path(info).read_text().splitlines() if ln.startswith("Model:")),
            "NVIDIA GPU",
        )
        names.append(model)
    return names or [f"NVIDIA GPU ({d})" for d in sorted(glob.glob("/dev/nvidia[0-9]*"))]


def driver_version(root: str = "/proc/driver/nvidia") -> str | None:
    try:
        text = Path(root, "version").read_text()
    except OSError:
        return None
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return None


def check_gpu(
    torch_module: Any = None,
    gpus: list[str] | None = None,
    driver: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """ "cuda" when torch can use the GPU, "cpu" when there is none (or MOI_DEMO_DEVICE=cpu); raises
    GPUUnusableError, saying why and what to do, when a GPU is present and torch cannot use it."""
    env = os.environ if env is None else env
    if env.get(ENV_DEVICE, "").lower() == "cpu":
        return "cpu"
    if torch_module is None:
        import torch as torch_module
    if torch_module.cuda.is_available():
        return "cuda"
    gpus = nvidia_gpus() if gpus is None else gpus
    if not gpus:
        return "cpu"
    driver = driver if driver is not None else driver_version()
    build = getattr(torch_module.version, "cuda", None)
    why = (
        f"torch {torch_module.__version__} is a CPU build"
        if not build
        else f"torch {torch_module.__version__} (CUDA {build}) cannot use it: driver "
        f"{driver or 'unknown'}; CUDA {CUDA_RUNTIME} needs a driver >= {MIN_DRIVER} and a GPU of compute "
        f"capability >= {MIN_COMPUTE_CAPABILITY}"
    )
    raise GPUUnusableError(
        f"moi-demo: found {', '.join(gpus)}, but {why}. Install the GPU requirements (pip install -r "
        f"requirements.txt: vllm==0.32.0 with torch 2.13.0 for CUDA {CUDA_RUNTIME}) on a driver >= {MIN_DRIVER}, "
        f"or set {ENV_DEVICE}=cpu to run on the CPU anyway."
    )
