"""Run cards: what produced a result, carried by every export (the page's download and /export, `moi-demo generate
--json`, eval outputs), so that a shared comparison can be checked and re-run (`moi-demo replay FILE`).

A card holds the moi-demo version and git commit where known; the vLLM, torch and transformers versions; platform
and device name; the model id or path and its revision (a Hugging Face snapshot's commit) or a fingerprint of its
weights; dtype; the model runner; the engine options. Each lane's own settings and seed are in its trace.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
FINGERPRINT_BYTES = 1 << 20  # of each weight file: its first and last MiB, with its name and size
# What must be equal for token-identical replays; the rest (versions of moi-demo, uptime...) is informative.
REPLAY_KEYS = ("platform", "device", "vllm", "torch", "transformers", "dtype", "runner", "model_revision")


def _version(dist: str) -> str | None:
    for name in (dist, f"{dist}-cpu"):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


@functools.cache
def git_commit() -> str | None:
    """This checkout's commit (and "+dirty" with local changes), None outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name() -> str:
    """The accelerator torch runs on (its name), else the CPU's model name."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA: describe the CPU
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine())


@functools.cache
def model_revision(model: str) -> str:
    """A Hugging Face snapshot's commit ("hf:<sha>" for .../snapshots/<sha>/), else a fingerprint of the weights
    ("sha256:<hex>" over each weight file's name, size, first and last MiB: fast on a 64 GB checkpoint), else the
    id as given (a hub id not downloaded here)."""
    path = Path(model)
    if not path.is_dir():
        return f"id:{model}"
    if path.parent.name == "snapshots":
        return f"hf:{path.name}"
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path)}:{size}".encode())
        with f.open("rb") as fh:
            digest.update(fh.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                fh.seek(-FINGERPRINT_BYTES, 2)
                digest.update(fh.read(FINGERPRINT_BYTES))
    return f"sha256:{digest.hexdigest()[:32]}" if files else f"path:{path.name}"


@functools.cache
def _environment() -> tuple[tuple[str, Any], ...]:
    return tuple(
        {
            "moi_demo": _version("moi-demo"),
            "git_commit": git_commit(),
            "vllm": _version("vllm"),
            "torch": _version("torch"),
            "transformers": _version("transformers"),
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
            "device": device_name(),
        }.items()
    )


def environment() -> dict[str, Any]:
    """The software and hardware of this process (read once: they do not change while it runs): what a replay
    compares first."""
    return dict(_environment())


def run_card(engine: Any) -> dict[str, Any]:
    """The card of a MoIEngine's results: its environment, model, dtype, runner and engine options."""
    kwargs = engine.options.engine_kwargs(engine.model)
    runner = getattr(engine, "runner_name", None)
    return {
        **environment(),
        "model": engine.model,
        "model_revision": model_revision(engine.model),
        "dtype": getattr(engine, "dtype_name", None) or str(kwargs.get("dtype")),
        "runner": runner,
        "layout": engine.layout,
        "engine_options": _plain(asdict(engine.options)),
        "engine_kwargs": _plain(kwargs),
    }


def differences(card: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """What differs between a recorded card and this machine's, of what a token-identical replay needs."""
    return [
        f"{key}: recorded {card.get(key)!r}, here {here.get(key)!r}"
        for key in REPLAY_KEYS
        if key in card and key in here and card.get(key) != here.get(key)
    ]


def _plain(value: Any) -> Any:
    """JSON-safe: dicts, lists, numbers, strings, None; anything else as its str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)
