#!/usr/bin/env bash
# The README's test command: set up .venv (with the dev tools and chromium), then run the tests.
#   bash scripts/test.sh [pytest args...]          every test (what CI runs)
#   bash scripts/test.sh --fast [pytest args...]   the fast tier: no engine, no browser, no network (~1-2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=()
if [[ "${1:-}" == "--fast" ]]; then shift; FAST=(-m "not engine and not browser and not network"); fi
bash scripts/setup.sh --dev
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "${FAST[@]}" "$@"
