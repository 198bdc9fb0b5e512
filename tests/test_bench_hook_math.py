"""bench/hook_math.py at smoke size on the CPU (what CI runs; on a GPU it runs at the paper's scale): pure torch, no
vLLM; it checks every generated token's fed input against the formula afresh, so a wrong step fails it."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.vllm_util import ROOT

NO_VLLM = ("import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('vllm', 'gradio', 'transformers')]; "
           "sys.argv = ['hook_math.py', '--smoke']; runpy.run_path('bench/hook_math.py', run_name='__main__')")


def test_hook_math_smoke_runs_with_torch_alone_and_checks_its_steps():
    out = subprocess.run([sys.executable, "-c", NO_VLLM], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \| [\d.]+ \| (\d+) \| ([\d.e+-]+) "
                      r"\| (.+?) \|$", out.stdout, flags=re.M)
    assert [r[0] for r in rows] == ["1", "4"], out.stdout
    for _, hook_ms, switched_ms, argmax_ms, checked, err, graph in rows:  # the paper's MoI, then every switch on
        assert float(hook_ms) > 0 and float(switched_ms) > 0 and float(argmax_ms) > 0
        assert int(checked) > 8  # decode steps, the prompt step after a batch change, and a recompute
        assert float(err) <= 1e-5
        assert graph == "n/a (CPU)"
