"""What "What the model reads" costs: `python bench/inspect_cost.py [--model M] [--tokens 128] [--repeats 10]`.

Starts the app's engine on the model (default: the embedded default model), generates one standard + MoI pair, then
times `MoIEngine.inspect` (the worker RPC `moi_inspect`: every step's cosine for both lanes and the 5 nearest
vocabulary tokens at one step) at `--repeats` steps, and prints the median and the memory it holds and allocates."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys

logger = logging.getLogger("moi_demo.bench.inspect_cost")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from moi_demo.core import inspection
    from moi_demo.core.config import MoIConfig
    from moi_demo.core.trace import SamplingSettings
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.models import resolve_model
    from moi_demo.serving.settings import EngineOptions

    model = resolve_model(a.model)
    with MoIEngine(model, EngineOptions(max_model_len=1024)) as engine:
        pair = engine.generate_pair_sync(
            "Write a short story about a lighthouse keeper.",
            MoIConfig("moi", 1.0, 20),
            SamplingSettings(temperature=0.0, max_tokens=a.tokens),
        )
        engine.inspect(pair, 0)  # warm-up: the row norms are computed once per model
        n = min(len(t.steps) for t in pair)
        ms = [engine.inspect(pair, (i * 7) % n)[0]["ms"] for i in range(a.repeats)]
        config = engine._engines[0].vllm_config.model_config
    vocab, hidden = config.get_vocab_size(), config.get_hidden_size()
    width = 21  # k 20 + the sampled id
    chunk = min(inspection.CHUNK_STEPS, n)
    print(
        f"| measure | value |\n|---|---|\n"  # noqa: T201
        f"| model | {model.rstrip('/').split('/')[-1]} (vocabulary {vocab}, hidden {hidden}) |\n"
        f"| steps per lane | {len(pair[0].steps)} + {len(pair[1].steps)} |\n"
        f"| ms per inspected step (median of {a.repeats}; min-max) | {statistics.median(ms):.1f} "
        f"({min(ms):.1f}-{max(ms):.1f}) |\n"
        f"| held per model: the embedding's row norms (float32) | {vocab * 4 / 1024:.0f} KiB |\n"
        f"| temporaries per lane: [{chunk}, {width}, {hidden}] float32 candidate embeddings, [{vocab}] cosines | "
        f"{(chunk * width * hidden * 4 + vocab * 4) / 2**20:.1f} MiB |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
