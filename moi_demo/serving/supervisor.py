"""Engine lifecycle and supervision, apart from lanes and streams (engine.py): one background event loop thread
runs vLLM's AsyncLLM(s); start, the self-check's place, death noticed (idle or mid-request), restart with backoff,
shutdown; and the runs in flight, under one lock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from enum import Enum
from typing import Any

from moi_demo.serving.settings import EngineOptions, is_cpu

logger = logging.getLogger(__name__)

LANES_PER_RUN = 2  # a side-by-side run holds two engine sequences (standard + MoI)
MAX_RESTART_ATTEMPTS = 5  # per death; backoff 2, 4, 8, 16 s between attempts
WATCH_INTERVAL_S = 1.0  # how often the supervisor looks at an idle engine


class EngineState(str, Enum):
    """What /health says of the engine. A str: it compares and serialises as its value ("ready")."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


class EngineUnavailableError(RuntimeError):
    """The engine died (or is restarting): the message says so and when to try again."""


class RunStopped(RuntimeError):
    """The run was stopped (`cancel(run_id)`) before it completed."""


class MoINotAppliedError(RuntimeError):
    """The engine serves MoI requests as standard: the plugin's hooks are not active."""


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


class EngineSupervisor:
    """The engine(s) of one model: started, watched, restarted after a death, shut down. `self_check()` (in the
    subclass) runs at start and after each restart."""

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
        self.dtype_name: str | None = None
        self.runner_name: str | None = None
        self.start_seconds = 0.0
        self.state = EngineState.STARTING
        self.created_at = time.time()
        self.restarts = 0
        self.last_error = ""
        self._restart_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._runs = RunRegistry()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, self_check: bool = True) -> EngineSupervisor:
        from moi_demo.vllm import plugin as vllm_plugin

        vllm_plugin.register()  # in this process too (vLLM does it on engine creation; idempotent)
        t0 = time.perf_counter()
        self._thread.start()
        self._create_engines()
        self.tokenizer = self._engines[0].get_tokenizer()
        config = getattr(self._engines[0], "vllm_config", None)  # for run cards: the dtype vLLM chose
        self.dtype_name = str(config.model_config.dtype).removeprefix("torch.") if config is not None else None
        self.start_seconds = time.perf_counter() - t0
        logger.info(
            "moi-demo: %d vLLM engine(s) on %s ready in %.1f s", len(self._engines), self.model, self.start_seconds
        )
        if self_check:
            self.self_check()
        self.state = EngineState.READY
        self._watcher = threading.Thread(target=self._watch, name="moi-engine-supervisor", daemon=True)
        self._watcher.start()
        return self

    # -- supervision: an engine that dies is restarted, and every caller hears it by name -----------------

    def unavailable(self) -> EngineUnavailableError:
        eta = max(5, round(self.start_seconds) + 5)
        if self.state == EngineState.FAILED:
            return EngineUnavailableError(
                f"engine: stopped ({self.last_error}); restarting failed "
                f"{MAX_RESTART_ATTEMPTS} times, the app needs attention"
            )
        return EngineUnavailableError(
            f"engine: stopped ({self.last_error or self.state}); restarting, try again in ~{eta} s"
        )

    def _watch(self) -> None:
        """Notices an engine that died while idle (a killed process, an out-of-memory kill)."""
        while self.state != EngineState.STOPPED:
            time.sleep(WATCH_INTERVAL_S)
            if self.state == EngineState.READY and any(getattr(e, "errored", False) for e in self._engines):
                self._on_dead(death_reason(self._engines))

    def _on_dead(self, reason: str) -> None:
        """Start a restart in the background, once per death."""
        with self._restart_lock:
            if self.state != EngineState.READY:
                return
            self.state, self.last_error = EngineState.RESTARTING, reason
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
                self.state = EngineState.READY
                logger.warning(
                    "moi-demo: engine restarted (attempt %d, %.1f s; %d restart(s) so far)",
                    attempt,
                    time.perf_counter() - t0,
                    self.restarts,
                )
                return
            except Exception as e:  # logged, retried with backoff
                logger.error("moi-demo: engine restart attempt %d of %d failed: %r", attempt, MAX_RESTART_ATTEMPTS, e)
                for engine in self._engines:
                    with contextlib.suppress(Exception):
                        engine.shutdown()
                self._engines = []
                if attempt < MAX_RESTART_ATTEMPTS:
                    time.sleep(2**attempt)
        self.state = EngineState.FAILED
        logger.critical("moi-demo: the engine could not be restarted (%s)", self.last_error)

    def _check_available(self) -> None:
        if self.state != EngineState.READY:
            raise self.unavailable()

    @property
    def max_concurrent_runs(self) -> int:
        """Side-by-side runs the engine serves at once: its sequence budget over the lanes of a run. The app's
        queue lets this many runs in; the rest wait in Gradio's queue (so vLLM never preempts for them)."""
        return max(1, self.options.max_num_seqs // LANES_PER_RUN)

    def health(self) -> dict[str, Any]:
        """Engine state, runs in flight, model, uptime and restarts so far: for /health and the status line."""
        return {
            "engine": self.state.value,
            "model": self.model,
            "uptime_s": round(time.time() - self.created_at, 1),
            "restarts": self.restarts,
            "runs_in_flight": len(self._runs),
            "max_concurrent_runs": self.max_concurrent_runs,
        }

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
        self.state = EngineState.STOPPED  # also ends the supervisor
        for engine in self._engines:
            engine.shutdown()
        self._engines.clear()
        if self._thread.is_alive():
            self._call(_cancel_pending(), timeout=10)  # vLLM's output handlers: end them before the loop
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> EngineSupervisor:
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
        total: dict[str, Any] = {
            "hooked": True,
            "requests": {},
            "records": {},
        }
        for engine in self._engines:
            worker = self._call(engine.collective_rpc("moi_stats", args=(records,)), timeout=60)[0]
            total["hooked"] &= worker["hooked"]
            total["runner"] = worker.get("runner")
            for key in ("applied_steps", "recomputed_steps", "step_seconds", "timed_steps", "hook_seconds"):
                total[key] = total.get(key, 0) + worker.get(key, 0)
            total["requests"].update(worker["requests"])
            total["records"].update(worker.get("records", {}))
        return total

    def num_unfinished_requests(self) -> int:
        return sum(engine.get_num_unfinished_requests() for engine in self._engines)

    def self_check(self) -> None:  # the subclass's: a request through the plugin
        raise NotImplementedError


async def _cancel_pending() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def is_engine_dead(error: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError) or type(error).__name__ == "EngineDeadError"


def death_reason(engines: list[Any], error: BaseException | None = None) -> str:
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
