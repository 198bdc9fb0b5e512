"""The Hugging Face Space installs: requirements.txt resolves against PyPI with the Gradio pinned in the README
front matter (pip --dry-run in a scratch environment; needs the package registry). The control: the vLLM release
that cannot live beside that Gradio is caught."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.vllm_util import ROOT

pytestmark = pytest.mark.network

SCRIPT = ROOT / "scripts" / "check_space_install.py"


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=1800)


def test_requirements_resolve_with_the_pinned_gradio():
    out = check()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gradio==6.31.0" in out.stdout and "vllm==0.32.0" in out.stdout
    assert "+cpu" not in out.stdout  # resolved as a Space does, from PyPI (CUDA torch), not this machine's wheels


def test_an_unresolvable_pin_is_caught(tmp_path):
    bad = tmp_path / "requirements.txt"
    bad.write_text("gradio==6.31.0\nvllm==0.33.0\n")
    out = check("--requirements", str(bad))
    assert out.returncode == 1 and "does not resolve" in out.stderr
    assert "ResolutionImpossible" in out.stderr or "conflicting dependencies" in out.stderr  # not a network error
