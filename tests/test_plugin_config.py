"""Engine configurations where MoI cannot be applied are refused per request, naming the flag.

The V2 model runner (vllm 0.33's CUDA default) needs Triton and cannot start on this CPU, and pipeline
parallelism / speculative decoding are out of scope here: the refusal logic is checked on a stand-in config
(the real path, request validation inside a running engine, is covered by test_vllm_plugin.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moi_demo import vllm_plugin


def config(v2=False, embeds=True, pp=1, spec=None, vocab=100):
    return SimpleNamespace(
        use_v2_model_runner=v2, speculative_config=spec,
        model_config=SimpleNamespace(enable_prompt_embeds=embeds, get_vocab_size=lambda: vocab),
        parallel_config=SimpleNamespace(pipeline_parallel_size=pp),
    )


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"v2": True}, "VLLM_USE_V2_MODEL_RUNNER=0"),
        ({"embeds": False}, "--enable-prompt-embeds"),
        ({"pp": 2}, "--pipeline-parallel-size 1"),
        ({"spec": object()}, "--speculative-config"),
    ],
)
def test_moi_requests_refused_with_the_flag(kwargs, flag):
    from vllm.exceptions import VLLMValidationError

    params = SimpleNamespace(extra_args={"moi_beta": 1.0})
    with pytest.raises(VLLMValidationError, match=flag.replace("-", r"\-")) as err:
        vllm_plugin.validate_request(params, config(**kwargs))
    assert err.value.parameter == "moi_mode"
    vllm_plugin.validate_request(SimpleNamespace(extra_args=None), config(**kwargs))  # standard: served


def test_plugin_registers_idempotently_and_pins_v1_runner(monkeypatch):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    vllm_plugin.register()
    first = GPUModelRunner._sample
    vllm_plugin.register()
    monkeypatch.setattr(vllm_plugin, "_registered", False)
    vllm_plugin.register()  # even when called afresh, hooks are not stacked twice
    assert GPUModelRunner._sample is first
    assert GPUModelRunner.__dict__["_moi_demo_patched"] is True
    import os

    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"
