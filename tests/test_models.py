"""The embedded default model: materialised once from the PyPI GGUF, sha256 checked, reused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moi_demo.serving import models
from moi_demo.serving.models import ModelError


def test_default_model_directory_is_complete(default_model):
    d = Path(default_model)
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 49152
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert (d / "model.safetensors").stat().st_size > 200e6
    assert "<|im_start|>assistant" in (d / "chat_template.jinja").read_text()
    assert (d / "tokenizer.json").is_file()


def test_second_call_is_cached(default_model, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: calls.append(a))
    monkeypatch.setattr(models, "sha256_file", lambda p: calls.append(p))
    assert str(models.materialize_default_model()) == default_model
    assert calls == []  # neither hashed nor converted again


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_corrupt_gguf_is_refused_and_not_used(tmp_path):
    bad = tmp_path / models.GGUF_FILENAME
    shutil.copyfile(models.shipped_gguf(), bad)
    with open(bad, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\x00corrupt\x00")
    target = tmp_path / "model"
    with pytest.raises(ModelError, match=r"is corrupt: sha256 .*expected b179c952.*Reinstall"):
        models.materialize_default_model(gguf_path=bad, target=target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == [models.GGUF_FILENAME]  # no half-written folder


def test_unmarked_directory_is_not_used(tmp_path, monkeypatch):
    """A folder left by an interrupted conversion (no marker file) is rebuilt, not trusted."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(models, "_convert_gguf", lambda src, out: (out / "config.json").write_text('{"ok": 1}'))
    monkeypatch.setattr(models, "sha256_file", lambda p: models.GGUF_SHA256)
    assert models.materialize_default_model(target=target) == target
    assert json.loads((target / "config.json").read_text()) == {"ok": 1}


def test_resolve_model(default_model, tmp_path, monkeypatch):
    monkeypatch.delenv(models.MODEL_ENV, raising=False)
    assert models.resolve_model(None) == default_model
    assert models.resolve_model("default") == default_model
    assert models.resolve_model(default_model) == default_model
    assert models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve_model(str(tmp_path))
    monkeypatch.setenv(models.MODEL_ENV, default_model)
    assert models.resolve_model(None) == default_model
