"""Owns the vLLM engine(s) for side-by-side generation: standard vs MoI, streamed as Steps.

One background event loop thread runs vLLM's AsyncLLM; callers use plain (sync) iterators, so the same
engine serves the Gradio app, the CLI and the benchmarks. Both lanes get the same prompt token ids
(chat template applied once) and the same seed; they can share one engine (default) or run on two
(`layout="split"`, on CPU one core each). Closing a stream aborts its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from moi_demo.core import inputs, mixing
from moi_demo.core.inputs import InputError
from moi_demo.core.mixing import MoIConfig
from moi_demo.core.trace import SamplingSettings, Step, Trace
from moi_demo.serving.settings import (  # noqa: F401 - the engine's options, also imported from here
    KV_BLOCK_TOKENS,
    EngineOptions,
    batch_job_options,
    chat_ids,
    is_cpu,
    throughput_options,
)

logger = logging.getLogger(__name__)

LANES_PER_RUN = 2  # a side-by-side run holds two engine sequences (standard + MoI)
MAX_RESTART_ATTEMPTS = 5  # per death; backoff 2, 4, 8, 16 s between attempts
WATCH_INTERVAL_S = 1.0  # how often the supervisor looks at an idle engine




class EngineUnavailableError(RuntimeError):
    """The engine died (or is restarting): the message says so and when to try again."""


class RunStopped(RuntimeError):
    """The run was stopped (`cancel(run_id)`) before it completed."""


class MoINotAppliedError(RuntimeError):
    """The engine serves MoI requests as standard: the plugin's hooks are not active."""


def steps_from_output(completion: Any, first_index: int, top_k: int) -> list[Step]:
    """Steps from a vLLM CompletionOutput delta: the sampled ids and their top-k raw log-probs."""
    steps = []
    for i, (token, logprobs) in enumerate(zip(completion.token_ids, completion.logprobs or [], strict=False)):
        ranked = sorted(((lp.rank, tid, lp) for tid, lp in logprobs.items() if lp.rank is not None),
                        key=lambda r: (r[0], r[1]))
        top = [(tid, lp) for rank, tid, lp in ranked if rank <= top_k][:top_k]
        sampled = logprobs[token]
        steps.append(Step(
            index=first_index + i, token_id=int(token), token=sampled.decoded_token or "",
            logprob=float(sampled.logprob), topk_ids=[t for t, _ in top],
            topk_logprobs=[float(lp.logprob) for _, lp in top], entropy=0.0,
            topk_tokens=[lp.decoded_token or "" for _, lp in top],
        ))
    return steps


def complete_step(trace: Trace, step: Step) -> Step:
    """Fill H and, in a mixing lane, the weights the plugin fed back (recomputed with mixing.py)."""
    candidates, weights, entropy = trace.recompute(step)
    step.entropy = entropy
    if trace.config.mixes:
        step.candidate_ids, step.weights = candidates, weights
    return step


class RunRegistry:
    """Runs in flight: run id -> its (engine, request id) pairs. Callers add and end runs from their threads, Stop
    takes a session's runs, the restart thread clears them all: every change under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, list[tuple[Any, str]]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def add(self, run_id: str | None, requests: list[tuple[Any, str]]) -> None:
        if run_id is not None:
            with self._lock:
                self._runs[run_id] = requests

    def end(self, run_id: str | None) -> None:
        if run_id is not None:
            with self._lock:
                self._runs.pop(run_id, None)

    def take(self, run_id: str) -> list[tuple[Any, str]]:
        """The requests of a run and of its sub-runs (ids `run_id/...`), which end here."""
        with self._lock:
            ids = [r for r in self._runs if r == run_id or r.startswith(run_id + "/")]
            return [req for rid in ids for req in self._runs.pop(rid)]

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()


class MoIEngine:
    """vLLM with the MoI plugin, ready for side-by-side streaming: its lifecycle (start, self-check, supervision and
    restart, shutdown), then its requests (lanes, streams, batch jobs, cancel). ~300 lines, over the house's ~250:
    both halves share the event loop thread, the engines and the state that says whether a request may start; the
    pure parts live apart (settings.py: options and sizing; RunRegistry: runs in flight)."""

    def __init__(self, model: str, options: EngineOptions | None = None, layout: str = "shared"):
        if layout not in ("shared", "split"):
            raise ValueError(f"layout must be 'shared' or 'split', got {layout!r}")
        self.model = model
        self.options = options or EngineOptions()
        self.layout = layout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moi-engine-loop", daemon=True)
        self._engines: list[Any] = []
        self.tokenizer: Any = None
        self.start_seconds = 0.0
        self.state = "starting"  # starting | ready | restarting | failed | stopped (see health())
        self.created_at = time.time()
        self.restarts = 0
        self.last_error = ""
        self._restart_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._runs = RunRegistry()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, self_check: bool = True) -> MoIEngine:
        from moi_demo.vllm import plugin as vllm_plugin

        vllm_plugin.register()  # in this process too (vLLM does it on engine creation; idempotent)
        t0 = time.perf_counter()
        self._thread.start()
        self._create_engines()
        self.tokenizer = self._engines[0].get_tokenizer()
        self.start_seconds = time.perf_counter() - t0
        logger.info("moi-demo: %d vLLM engine(s) on %s ready in %.1f s", len(self._engines), self.model,
                    self.start_seconds)
        if self_check:
            self.self_check()
        self.state = "ready"
        self._watcher = threading.Thread(target=self._watch, name="moi-engine-supervisor", daemon=True)
        self._watcher.start()
        return self

    # -- supervision: an engine that dies is restarted, and every caller hears it by name -----------------

    def unavailable(self) -> EngineUnavailableError:
        eta = max(5, round(self.start_seconds) + 5)
        if self.state == "failed":
            return EngineUnavailableError(f"engine: stopped ({self.last_error}); restarting failed "
                                          f"{MAX_RESTART_ATTEMPTS} times, the app needs attention")
        return EngineUnavailableError(f"engine: stopped ({self.last_error or self.state}); restarting, "
                                      f"try again in ~{eta} s")

    def _watch(self) -> None:
        """Notices an engine that died while idle (a killed process, an out-of-memory kill)."""
        while self.state not in ("stopped",):
            time.sleep(WATCH_INTERVAL_S)
            if self.state == "ready" and any(getattr(e, "errored", False) for e in self._engines):
                self._on_dead(_death_reason(self._engines))

    def _on_dead(self, reason: str) -> None:
        """Start a restart in the background, once per death."""
        with self._restart_lock:
            if self.state != "ready":
                return
            self.state, self.last_error = "restarting", reason
        logger.error("moi-demo: engine stopped (%s); restarting", reason)
        threading.Thread(target=self._restart, name="moi-engine-restart", daemon=True).start()

    def _restart(self) -> None:
        dead, self._engines = self._engines, []
        self._runs.clear()
        for engine in dead:
            with contextlib.suppress(Exception):
                engine.shutdown()
        for attempt in range(1, MAX_RESTART_ATTEMPTS + 1):
            try:
                t0 = time.perf_counter()
                self._create_engines(timeout=600)
                self.self_check()
                self.restarts += 1
                self.state = "ready"
                logger.warning("moi-demo: engine restarted (attempt %d, %.1f s; %d restart(s) so far)", attempt,
                               time.perf_counter() - t0, self.restarts)
                return
            except Exception as e:  # logged, retried with backoff
                logger.error("moi-demo: engine restart attempt %d of %d failed: %r", attempt, MAX_RESTART_ATTEMPTS, e)
                for engine in self._engines:
                    with contextlib.suppress(Exception):
                        engine.shutdown()
                self._engines = []
                if attempt < MAX_RESTART_ATTEMPTS:
                    time.sleep(2 ** attempt)
        self.state = "failed"
        logger.critical("moi-demo: the engine could not be restarted (%s)", self.last_error)

    def _check_available(self) -> None:
        if self.state != "ready":
            raise self.unavailable()

    @property
    def max_concurrent_runs(self) -> int:
        """Side-by-side runs the engine serves at once: its sequence budget over the lanes of a run. The app's
        queue lets this many runs in; the rest wait in Gradio's queue (so vLLM never preempts for them)."""
        return max(1, self.options.max_num_seqs // LANES_PER_RUN)

    def health(self) -> dict[str, Any]:
        """Engine state, runs in flight, model, uptime and restarts so far: for /health and the status line."""
        return {"engine": self.state, "model": self.model, "uptime_s": round(time.time() - self.created_at, 1),
                "restarts": self.restarts, "runs_in_flight": len(self._runs),
                "max_concurrent_runs": self.max_concurrent_runs}

    def _create_engines(self, timeout: float | None = None) -> None:
        """One engine (shared layout) or one per lane (split; on a CPU, each bound to its own core)."""
        count = 2 if self.layout == "split" else 1
        for lane in range(count):
            bind = str(lane) if count == 2 else self.options.cpu_threads_bind
            env = {"VLLM_CPU_OMP_THREADS_BIND": bind} if bind and is_cpu() else {}
            self._engines.append(self._call(self._create(env), timeout=timeout))

    async def _create(self, env: dict[str, str]) -> Any:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from moi_demo.serving.lifecycle import temporary_env

        with temporary_env(env):  # read by the engine processes spawned now
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**self.options.engine_kwargs(self.model)))

    def shutdown(self) -> None:
        self.state = "stopped"  # also ends the supervisor
        for engine in self._engines:
            engine.shutdown()
        self._engines.clear()
        if self._thread.is_alive():
            self._call(_cancel_pending(), timeout=10)  # vLLM's output handlers: end them before the loop
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> MoIEngine:
        return self.start() if not self._engines else self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _submit(self, coro: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def engine_for(self, lane: str) -> Any:
        return self._engines[-1] if lane == "moi" else self._engines[0]

    # -- introspection ------------------------------------------------------------------------------

    def stats(self, records: bool = False) -> dict[str, Any]:
        """The plugin's counters summed over every engine (first worker of each: ranks agree). With
        `records`, also the weights fed per request (only kept when MOI_DEMO_RECORD=1 at engine start)."""
        total: dict[str, Any] = {"hooked": True, "applied_steps": 0, "recomputed_steps": 0, "requests": {},
                                 "records": {}}
        for engine in self._engines:
            worker = self._call(engine.collective_rpc("moi_stats", args=(records,)), timeout=60)[0]
            total["hooked"] &= worker["hooked"]
            total["applied_steps"] += worker["applied_steps"]
            total["recomputed_steps"] += worker["recomputed_steps"]
            total["requests"].update(worker["requests"])
            total["records"].update(worker.get("records", {}))
        return total

    def num_unfinished_requests(self) -> int:
        return sum(engine.get_num_unfinished_requests() for engine in self._engines)

    def self_check(self) -> None:
        """Generate 3 greedy MoI tokens and check that the plugin fed 2 mixed inputs per engine."""
        try:
            before = self.stats()["applied_steps"]
        except Exception as e:  # the workers have no moi_stats: the plugin did not load there
            raise MoINotAppliedError(
                f"MoI is not available in this engine's workers ({e!r}): is the moi-demo plugin excluded by "
                "VLLM_PLUGINS?"
            ) from e
        for engine in self._engines:
            for _ in self._stream(engine, [1, 2, 3], MoIConfig("moi", 0.5, 5), SamplingSettings(max_tokens=3),
                                  ignore_eos=True):
                pass
        applied = self.stats()["applied_steps"] - before
        expected = 2 * len(self._engines)
        if applied != expected:
            raise MoINotAppliedError(
                f"MoI is not applied by this engine ({applied} mixed steps, expected {expected}): is the "
                "moi-demo plugin excluded by VLLM_PLUGINS, or the V2 model runner forced?"
            )
        logger.info("moi-demo: self-check passed (MoI applied on %d engine(s))", len(self._engines))

    # -- requests ---------------------------------------------------------------------------------------

    def prompt_ids(self, prompt: str, max_tokens: int, chat: bool = True) -> list[int]:
        ids = chat_ids(self.tokenizer, inputs.check_prompt(prompt), chat)
        limit = self.options.max_model_len - max_tokens
        if len(ids) > limit:
            raise InputError(
                "prompt", f"is {len(ids)} tokens; at most {limit} fit ({self.options.max_model_len}-token context "
                f"minus {max_tokens} new tokens)"
            )
        return list(ids)

    def validate(self, moi: MoIConfig, settings: SamplingSettings) -> None:
        """A lane's settings within what this engine serves (the bounds of `core.inputs`)."""
        inputs.APP_TOP_K.check(moi.top_k)
        inputs.TEMPERATURE.check(settings.temperature)
        inputs.TOP_P.check(settings.top_p)
        inputs.MAX_TOKENS.with_hi(self.options.max_model_len - 1).check(settings.max_tokens)
        if settings.seed is not None:
            inputs.SEED.check(settings.seed)

    def sampling_params(self, moi: MoIConfig, settings: SamplingSettings, ignore_eos: bool = False,
                        logprobs: bool = True, stream: bool = True) -> Any:
        """Streamed (delta) params, or with `stream=False` the final output only (a batch job: no per-step
        output objects for hundreds of sequences); `logprobs` returns the top-k raw log-probs the traces are
        built from."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
            seed=settings.seed, logprobs=moi.top_k if logprobs else None,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            ignore_eos=ignore_eos,
            extra_args={mixing.KEY_MODE: moi.mode, mixing.KEY_BETA: moi.beta, mixing.KEY_TOP_K: moi.top_k},
        )

    def _stream(
        self, engine: Any, ids: list[int], moi: MoIConfig, settings: SamplingSettings, *, ignore_eos: bool = False
    ) -> Iterator[Trace]:
        """One lane alone (used by the self-check)."""
        lane = "moi" if moi.mixes else "standard"
        yield from (pair[0] for pair in self._stream_lanes([(lane, engine, moi)], ids, settings, "", ignore_eos))

    def stream_pair(
        self, prompt: str, moi: MoIConfig, settings: SamplingSettings, chat: bool = True, run_id: str | None = None
    ) -> Iterator[tuple[Trace, Trace]]:
        """Standard and MoI lanes of one prompt, streamed together: yields (standard, moi) traces as tokens
        arrive. Closing the iterator, or `cancel(run_id)` (Stop in the UI), aborts both requests."""
        standard = MoIConfig("standard", moi.beta, moi.top_k)
        yield from self.stream_lanes(prompt, [standard, moi], settings, chat, run_id)  # type: ignore[misc]

    def stream_lanes(
        self, prompt: str, configs: list[MoIConfig], settings: SamplingSettings, chat: bool = True,
        run_id: str | None = None,
    ) -> Iterator[tuple[Trace, ...]]:
        """Any lanes of one prompt (a standard lane is `MoIConfig("standard", ...)`), submitted together so vLLM
        decodes them in one batch, same prompt ids and seed: a beta sweep, or a MoI lane alone when the standard
        lane is reused. Yields one trace per config, in order, as tokens arrive."""
        if not configs:
            raise InputError("lanes", "must name at least one lane")
        for cfg in configs:
            self.validate(cfg, settings)
        self._check_available()
        ids = self.prompt_ids(prompt, settings.max_tokens, chat)
        lanes = [("moi" if cfg.mixes else "standard", self.engine_for("moi" if cfg.mixes else "standard"), cfg)
                 for cfg in configs]
        yield from self._stream_lanes(lanes, ids, settings, prompt, run_id=run_id)

    def cancel(self, run_id: str) -> int:
        """Abort the requests of a run (all its lanes), and of its sub-runs (ids `run_id/...`: a session's live
        re-runs and sweeps); returns how many were still in flight."""
        requests = self._runs.take(run_id)
        by_engine: dict[int, tuple[Any, list[str]]] = {}
        for engine, rid in requests:
            by_engine.setdefault(id(engine), (engine, []))[1].append(rid)
        for engine, rids in by_engine.values():  # one abort per engine, whatever the number of requests
            self._call(engine.abort(rids), timeout=30)
        return len(requests)

    def generate_many(
        self, jobs: list[tuple[str, MoIConfig, int | None]], settings: SamplingSettings,
        on_done: Any = None, run_id: str | None = None,
    ) -> list[str]:
        """Complete many (prompt, config, seed) jobs concurrently (vLLM batches them); texts in job order.
        `on_done(count)` is called as requests finish (progress bars). `cancel(run_id)` aborts them all:
        then RunStopped is raised."""
        for _, cfg, _ in jobs:
            self.validate(cfg, settings)
        self._check_available()
        prompts = [self.prompt_ids(p, settings.max_tokens) for p, _, _ in jobs]
        engine = self.engine_for("moi")
        tag = uuid.uuid4().hex[:12]
        texts: list[str] = [""] * len(jobs)
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            _, cfg, seed = jobs[i]
            params = self.sampling_params(cfg, SamplingSettings(settings.temperature, settings.top_p,
                                                                settings.max_tokens, seed), logprobs=False,
                                          stream=False)
            async for out in engine.generate({"prompt_token_ids": prompts[i]}, params, f"eval-{tag}-{i}"):
                texts[i] = out.outputs[0].text
            done += 1
            if on_done is not None:
                on_done(done)

        async def run_all() -> None:
            await asyncio.gather(*(one(i) for i in range(len(jobs))))

        self._runs.add(run_id, [(engine, f"eval-{tag}-{i}") for i in range(len(jobs))])
        try:
            self._call(run_all())
        except Exception as e:
            if _is_engine_dead(e):
                self._on_dead(_death_reason(self._engines, e))
                raise self.unavailable() from None
            raise
        finally:
            stopped = run_id is not None and run_id not in self._runs
            self._runs.end(run_id)
        if stopped:
            raise RunStopped(f"stopped after {done} of {len(jobs)} generations")
        return texts

    def generate_pair_sync(self, prompt: str, moi: MoIConfig, settings: SamplingSettings) -> tuple[Trace, Trace]:
        *_, last = self.stream_pair(prompt, moi, settings)
        return last

    def _stream_lanes(
        self, lanes: list[tuple[str, Any, MoIConfig]], ids: list[int], settings: SamplingSettings, prompt: str,
        ignore_eos: bool = False, run_id: str | None = None,
    ) -> Iterator[tuple[Trace, ...]]:
        updates: queue.Queue = queue.Queue()
        tag = uuid.uuid4().hex[:12]
        traces = [
            Trace(lane=lane, mode=cfg.mode, beta=cfg.beta, top_k=cfg.top_k, prompt=prompt, model=self.model,
                  engine="vllm", temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
                  max_tokens=settings.max_tokens)
            for lane, _, cfg in lanes
        ]
        request_ids = [f"{lane}-{i}-{tag}" for i, (lane, _, _) in enumerate(lanes)]
        for trace, rid in zip(traces, request_ids, strict=True):
            trace.request_id = rid

        async def pump(i: int, engine: Any, cfg: MoIConfig) -> None:
            try:
                params = self.sampling_params(cfg, settings, ignore_eos)
                async for out in engine.generate({"prompt_token_ids": ids}, params, request_ids[i]):
                    updates.put((i, out.outputs[0], out.finished))
            except BaseException as e:  # surfaced to the consumer thread (aborts end the stream quietly)
                updates.put((i, e, True))
            finally:
                updates.put((i, None, True))  # the lane's stream has ended, however it ended

        self._runs.add(run_id, [(engine, rid) for (_, engine, _), rid in zip(lanes, request_ids, strict=True)])
        # An idle engine steps as soon as the first request reaches it: lanes submitted a moment later join one step
        # later (measured: on a shared engine the second of two lanes submitted back to back got its first token
        # a whole step after the first, every time). The mixing lanes go first: the lane the page is about
        # shows its first token a step sooner.
        order = sorted(range(len(lanes)), key=lambda i: not lanes[i][2].mixes)
        futures = [self._submit(pump(i, lanes[i][1], lanes[i][2])) for i in order]
        finished = [False] * len(lanes)
        try:
            while not all(finished):
                batch = [updates.get()]
                while not updates.empty():  # coalesce whatever else arrived: one yield per batch
                    batch.append(updates.get_nowait())
                for i, completion, done in batch:
                    trace = traces[i]
                    if completion is None or isinstance(completion, asyncio.CancelledError):
                        if not finished[i]:
                            trace.finish_reason = trace.finish_reason or "abort"
                            finished[i] = True
                        continue
                    if isinstance(completion, BaseException):
                        if _is_engine_dead(completion):
                            self._on_dead(_death_reason([engine for _, engine, _ in lanes], completion))
                            raise self.unavailable() from None
                        raise _user_error(completion)
                    for step in steps_from_output(completion, len(trace.steps), trace.top_k):
                        trace.steps.append(complete_step(trace, step))
                    trace.text += completion.text
                    if done:
                        trace.finish_reason = completion.finish_reason
                        finished[i] = True
                yield tuple(traces)
        finally:
            self._runs.end(run_id)
            if not all(finished) and self.state == "ready":
                for (_, engine, _), rid, done in zip(lanes, request_ids, finished, strict=True):
                    if not done:
                        with contextlib.suppress(Exception):  # a dead engine has nothing left to abort
                            self._call(engine.abort(rid), timeout=30)
            for f in futures:
                f.cancel()


async def _cancel_pending() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _user_error(error: BaseException) -> BaseException:
    """vLLM's validation errors name the parameter: keep them as InputError for the UI and API."""
    parameter = getattr(error, "parameter", None)
    if parameter:
        raw = str(error.args[0]) if error.args else str(error)  # without vLLM's "(parameter=...)" suffix
        message = raw.removeprefix(f"{parameter}: ")
        return InputError(parameter, message)
    return error


def _is_engine_dead(error: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError) or type(error).__name__ == "EngineDeadError"


def _death_reason(engines: list[Any], error: BaseException | None = None) -> str:
    """What killed the engine, as far as the front end can tell: the engine core's exit code, else the error."""
    for engine in engines:
        try:
            procs = engine.engine_core.resources.engine_manager.processes
            codes = [p.exitcode for p in procs if p.exitcode is not None]
        except AttributeError:
            codes = []
        if codes:
            code = codes[0]
            return f"engine core exited with signal {-code}" if code < 0 else f"engine core exited with code {code}"
    return type(error).__name__ if error is not None else "engine core died"
