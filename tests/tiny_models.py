"""Tiny random checkpoints for fast tests: a llama and a gemma3 (whose embedding scales by
sqrt(hidden), so a mixture must be of the scaled embeddings), with the default model's tokenizer.
CPU attention in vLLM needs head_dim in {32, 64, 80, ...}; 2 heads so that TP=2 splits them."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

COMMON = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=1024,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    tie_word_embeddings=True,
    initializer_range=0.05,
)
# Wide embeddings (peaked, well-separated logits: no greedy ties between engines) over narrow layers:
# measured against a float64 replay, this keeps MoI/direct decoding stable (max |dlogprob| ~1e-5 over
# 40 steps), where a uniformly wide init is chaotic (float32 noise grows ~3x per step).
EMBED_STD = 0.15


def build_tiny_models(tokenizer_dir: Path, out: Path) -> dict[str, str]:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    configs = {
        "llama": (LlamaForCausalLM, LlamaConfig(**COMMON)),
        "gemma3": (
            Gemma3ForCausalLM,
            Gemma3TextConfig(
                **COMMON,
                sliding_window=512,
                query_pre_attn_scalar=32,
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
    }
    paths = {}
    for name, (cls, config) in configs.items():
        torch.manual_seed(0)
        config.dtype = "float32"
        model = cls(config).to(torch.float32)
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, EMBED_STD)
        path = out / name
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        paths[name] = str(path)
    return paths
