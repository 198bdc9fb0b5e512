"""bench/hook_math.py at smoke size on the CPU (what CI runs; on a GPU it runs at the paper's scale): pure torch, no
vLLM; it checks every generated token's fed input against the formula afresh, so a wrong step fails it, and it runs
the step from graphs (replayed eagerly on a CPU) beside the eager step."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_VLLM = (
    "import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('vllm', 'gradio', 'transformers')]; "
    "sys.argv = ['hook_math.py', '--smoke']; runpy.run_path('bench/hook_math.py', run_name='__main__')"
)


def test_hook_math_smoke_runs_with_torch_alone_and_checks_its_steps():
    out = subprocess.run([sys.executable, "-c", NO_VLLM], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    num = r"([\d.]+)"
    pattern = (
        rf"^\| (\d+) \| {num} \| {num} \| {num} \| {num} \| (\d+) / (\d+) \| {num} \| {num} \| {num} "
        rf"\| {num} \| (\d+) \| ([\d.e+-]+) \| (\d+) captured, (\d+) replayed \|$"
    )
    rows = re.findall(pattern, out.stdout, flags=re.M)
    assert [r[0] for r in rows] == ["1", "4"], out.stdout
    for row in rows:  # the paper's MoI from graphs, every switch on, the eager paper's MoI
        paper, switched, _, eager, calls, eager_calls, plan, around, ops, argmax, checked, err, captured, replayed = (
            row[1:]
        )
        assert all(float(x) > 0 for x in (paper, switched, eager, plan, around, ops, argmax))
        assert int(calls) > 0 and int(eager_calls) > 0
        assert int(checked) > 24  # decode steps, the prompt step after a batch change, and a recompute
        assert float(err) <= 1e-5
        assert int(captured) >= 2 and int(replayed) >= 1  # both parts captured and replayed, their steps checked
    assert "Profile of one steady step" in out.stdout and "aten::" in out.stdout
