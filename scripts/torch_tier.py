"""The torch tier: the pure-torch tests on every device present, with torch, numpy and pytest alone (no vLLM, Gradio
or transformers: they are blocked, so a test that reaches for one fails here instead of passing by luck).

    python scripts/torch_tier.py [pytest args...]
    python scripts/torch_tier.py --ignore-args      # pytest's --ignore for each of its files (scripts/test.sh)

Runs the mixing's exact values and the golden vectors, BatchState's protocol, batch changes, recompute and records,
the switches, the host-read counter, the step eager and from graphs, the hook bench at smoke size, and
tests/test_on_device.py on the CPU and on CUDA where there is one (every CUDA step under
set_sync_debug_mode("error"), a CUDA graph's replay against eager). Prints which devices ran; pytest's -rs lists
anything skipped, with its reason. CI runs it first (scripts/test.sh), on the CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("vllm", "gradio", "transformers", "plotly", "lm_eval", "playwright", "openai")
FILES = [
    "tests/test_config.py",
    "tests/test_mixing.py",
    "tests/test_rivals.py",
    "tests/test_batch_state.py",
    "tests/test_host_reads.py",
    "tests/test_step.py",
    "tests/test_inspection.py",
    "tests/test_on_device.py",
    "tests/test_bench_hook_math.py",
]


def main(argv: list[str]) -> int:
    if argv == ["--ignore-args"]:  # for scripts/test.sh: the rest of the suite leaves the tier's files out
        print(" ".join(f"--ignore={f}" for f in FILES))  # noqa: T201
        return 0
    for name in BLOCKED:
        sys.modules[name] = None  # type: ignore[assignment]  # import fails: the tier needs torch alone
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import pytest
    import torch

    devices = ["cpu"] + ([f"cuda ({torch.cuda.get_device_name()})"] if torch.cuda.is_available() else [])
    print(
        f"torch tier: torch {torch.__version__}; devices: {', '.join(devices)}"  # noqa: T201 - the header
        + ("" if torch.cuda.is_available() else "; no CUDA device here: the CUDA part did not run"),
        flush=True,
    )
    return pytest.main(["-rs", "-p", "no:cacheprovider", *FILES, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
