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
    from moi_demo.models import materialize_default_model

    return str(materialize_default_model())


@pytest.fixture(scope="session")
def tiny_models(default_model, tmp_path_factory) -> dict[str, str]:
    """Random tiny llama and gemma3 checkpoints (float32) with the default model's tokenizer."""
    from tests.tiny_models import build_tiny_models

    return build_tiny_models(Path(default_model), tmp_path_factory.mktemp("tiny"))
