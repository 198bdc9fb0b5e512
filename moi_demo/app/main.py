"""Arguments and engine start-up of the app (`python app.py [--model M] [--host H] [--port P]`)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from moi_demo.serving.models import resolve_model

logger = logging.getLogger("moi_demo")
GPU_DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"  # the Space default on a GPU (any HF id works: --model)


def default_model() -> str | None:
    """$MOI_DEMO_MODEL; else on a GPU a small instruct model from the hub; else the embedded model."""
    if os.environ.get("MOI_DEMO_MODEL"):
        return os.environ["MOI_DEMO_MODEL"]
    import torch

    return GPU_DEFAULT_MODEL if torch.cuda.is_available() else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--model",
        default=None,
        help="HF directory or hub id (default: $MOI_DEMO_MODEL, else the "
        "embedded SmolLM2-135M-Instruct on CPU, Qwen/Qwen2.5-1.5B-Instruct on a GPU)",
    )
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument(
        "--layout",
        choices=["shared", "split"],
        default=os.environ.get("MOI_DEMO_LAYOUT", "shared"),
        help="both lanes in one engine (default) or one engine per lane",
    )
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--compile", action="store_true", help="torch.compile / CUDA graphs instead of eager")
    p.add_argument("--share", action="store_true")
    return p.parse_args(argv)


def engine_options(args: argparse.Namespace):
    import torch

    from moi_demo.serving.settings import EngineOptions

    gpu = torch.cuda.is_available()
    return EngineOptions(
        dtype=None,
        enforce_eager=not (args.compile or gpu),
        max_model_len=args.max_model_len,
        # CPU: a fixed KV budget (vLLM's CPU default reserves most of RAM); GPU: vLLM's default utilisation
        kv_cache_memory_bytes=None if gpu else 1 << 30,
    )


def start_engine(args: argparse.Namespace):
    """The one engine of the app, started once (not at import)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from moi_demo.serving import lifecycle
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.gpu_check import check_gpu

    check_gpu()  # a GPU that torch cannot use stops the app here, saying why (never a silent CPU fallback)
    lifecycle.install_signal_handlers()  # SIGTERM/SIGINT: no engine process outlives the app, even mid-start
    engine = MoIEngine(resolve_model(args.model or default_model()), engine_options(args), layout=args.layout)
    lifecycle.on_shutdown(engine.shutdown)
    return engine.start()


def launch(demo, args: argparse.Namespace) -> None:
    """Serve the app (queued: the Generate stream and Stop run side by side). How many runs go at once is set
    per event in build_demo from the engine's sequence budget (max_num_seqs / 2 lanes)."""
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share)
