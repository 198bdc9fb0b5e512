"""Shared fixtures: the embedded default model, and tiny random models built on the spot."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

logging.basicConfig(level=logging.INFO)
# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_model() -> str:
    from moi_demo.serving.models import materialize_default_model

    return str(materialize_default_model())


@pytest.fixture(scope="session")
def tiny_models(default_model, tmp_path_factory) -> dict[str, str]:
    """Random tiny llama and gemma3 checkpoints (float32) with the default model's tokenizer."""
    from tests.tiny_models import build_tiny_models

    return build_tiny_models(Path(default_model), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def oracle(tiny_models):
    """The reference decoder (plain transformers, the paper's formula) on the tiny llama: what engines must match."""
    from moi_demo.evaluation.reference import ReferenceDecoder

    return ReferenceDecoder(tiny_models["llama"])


@pytest.fixture(scope="session")
def app(default_model):
    """The real app on the default model, served on a free port: (url, engine). Shared by the
    gradio_client and the Chromium tests."""
    from moi_demo.app.layout import build_demo
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.settings import EngineOptions
    from tests.vllm_util import free_port

    engine = MoIEngine(default_model, EngineOptions(max_model_len=1024, kv_cache_memory_bytes=512 << 20)).start()
    demo = build_demo(engine, max_new_tokens=400)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", engine
    demo.close()
    engine.shutdown()
