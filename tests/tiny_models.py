"""Tiny random checkpoints for fast tests: a llama and a gemma3 (whose embedding scales by
sqrt(hidden), so a mixture must be of the scaled embeddings), with the default model's tokenizer.
CPU attention in vLLM needs head_dim in {32, 64, 80, ...}; 2 heads so that TP=2 splits them."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

COMMON = dict(
    vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
    pad_token_id=2, tie_word_embeddings=True,
    # a wide init gives peaked, well-separated logits: greedy ties between engines become unlikely
    initializer_range=0.25,
)


def build_tiny_models(tokenizer_dir: Path, out: Path) -> dict[str, str]:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    configs = {
        "llama": (LlamaForCausalLM, LlamaConfig(**COMMON)),
        "gemma3": (
            Gemma3ForCausalLM,
            Gemma3TextConfig(**{**COMMON, "initializer_range": 0.1}, sliding_window=512, query_pre_attn_scalar=32,
                             layer_types=["sliding_attention", "full_attention"]),
        ),
    }
    paths = {}
    for name, (cls, config) in configs.items():
        torch.manual_seed(0)
        config.dtype = "float32"
        model = cls(config).to(torch.float32)
        path = out / name
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        paths[name] = str(path)
    return paths
