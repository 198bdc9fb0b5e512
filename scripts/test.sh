#!/usr/bin/env bash
# The README's test command: set up .venv (with the dev tools and chromium), then run the tests.
#   bash scripts/test.sh [pytest args...]          every test (what CI runs)
#   bash scripts/test.sh --fast [pytest args...]   the fast tier: no engine, no browser, no network (~1-2 min)
# Both run the torch tier first (scripts/torch_tier.py), then the rest of the suite without its files.
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=()
if [[ "${1:-}" == "--fast" ]]; then shift; FAST=(-m "not engine and not browser and not network"); fi
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The torch tier first (torch, numpy and pytest alone; the CPU here, CUDA too where there is one), then the rest.
.venv/bin/python scripts/torch_tier.py -q
read -r -a TIER_FILES <<< "$(.venv/bin/python scripts/torch_tier.py --ignore-args)"
exec .venv/bin/python -m pytest "${FAST[@]}" "${TIER_FILES[@]}" "$@"
