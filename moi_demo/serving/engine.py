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
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from moi_demo.core import inputs
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import SamplingSettings, Trace
from moi_demo.serving.lanes import apply_output, fill_from_records, inspect_answer, inspect_request, sampling_params
from moi_demo.serving.settings import chat_ids
from moi_demo.serving.supervisor import (
    EngineState,
    EngineSupervisor,
    MoINotAppliedError,
    RunStopped,
    death_reason,
    is_engine_dead,
)

logger = logging.getLogger(__name__)


class MoIEngine(EngineSupervisor):
    """vLLM with the MoI plugin, ready for side-by-side streaming: lanes of one prompt (same prompt ids and seed)
    streamed together, batch jobs, cancel by run id. Lifecycle and supervision: EngineSupervisor."""

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
            for _ in self._stream(
                engine, [1, 2, 3], MoIConfig("moi", 0.5, 5), SamplingSettings(max_tokens=3), ignore_eos=True
            ):
                pass
        after = self.stats()
        applied = after["applied_steps"] - before
        expected = 2 * len(self._engines)
        if applied != expected:
            raise MoINotAppliedError(
                f"MoI is not applied by this engine ({applied} mixed steps, expected {expected}): is the "
                "moi-demo plugin excluded by VLLM_PLUGINS, or the V2 model runner forced?"
            )
        logger.info("moi-demo: self-check passed (MoI applied on %d engine(s))", len(self._engines))
        self.runner_name = after.get("runner")  # for run cards

    def inspect(self, traces: Sequence[Trace], step: int) -> list[dict[str, Any]]:
        """What each lane's model read back (worker RPC `moi_inspect`, where the embedding matrix lives): per lane
        the cosine of every step's fed input to E[sampled] (1 in a standard lane: the control), and at `step` the
        NEAREST vocabulary tokens to the fed input by cosine, with their cosines. The fed inputs are rebuilt from the
        trace's weights (those mixing.py computes from the returned top-k log-probabilities, what the plugin fed)."""
        self._check_available()
        shown = [t for t in traces if t.steps]
        lanes = [inspect_request(t, step) for t in shown]
        start = time.perf_counter()
        ranks = self._call(self.engine_for("moi").collective_rpc("moi_inspect", args=(lanes,)), timeout=60)
        ms = (time.perf_counter() - start) * 1e3
        return [
            inspect_answer(t, lane, [r[i] for r in ranks], self.tokenizer.decode, ms)
            for i, (t, lane) in enumerate(zip(shown, lanes, strict=True))
        ]

    # -- requests ---------------------------------------------------------------------------------------

    def prompt_ids(self, prompt: str, max_tokens: int, chat: bool = True) -> list[int]:
        ids = chat_ids(self.tokenizer, inputs.check_prompt(prompt), chat)
        limit = self.options.max_model_len - max_tokens
        if len(ids) > limit:
            raise InputError(
                "prompt",
                f"is {len(ids)} tokens; at most {limit} fit ({self.options.max_model_len}-token context "
                f"minus {max_tokens} new tokens)",
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
        self,
        prompt: str,
        configs: list[MoIConfig],
        settings: SamplingSettings,
        chat: bool = True,
        run_id: str | None = None,
        wide: int = 0,
    ) -> Iterator[tuple[Trace, ...]]:
        """Any lanes of one prompt (a standard lane is `MoIConfig("standard", ...)`), submitted together so vLLM
        decodes them in one batch, same prompt ids and seed: a beta sweep, or a MoI lane alone when the standard
        lane is reused. Yields one trace per config, in order, as tokens arrive. `wide`: each step also keeps the
        top-`wide` log-probs (`Step.ranked`: a comparison's, compare.py)."""
        if not configs:
            raise InputError("lanes", "must name at least one lane")
        for cfg in configs:
            self.validate(cfg, settings)
        self._check_available()
        ids = self.prompt_ids(prompt, settings.max_tokens, chat)
        lanes = [
            ("moi" if cfg.mixes else "standard", self.engine_for("moi" if cfg.mixes else "standard"), cfg)
            for cfg in configs
        ]
        yield from self._stream_lanes(lanes, ids, settings, prompt, run_id=run_id, wide=wide)

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
        self,
        jobs: list[tuple[str, MoIConfig, int | None]],
        settings: SamplingSettings,
        on_done: Any = None,
        run_id: str | None = None,
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
            params = sampling_params(
                cfg,
                SamplingSettings(settings.temperature, settings.top_p, settings.max_tokens, seed),
                logprobs=False,
                stream=False,
            )
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
            if is_engine_dead(e):
                self._on_dead(death_reason(self._engines, e))
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
        self,
        lanes: list[tuple[str, Any, MoIConfig]],
        ids: list[int],
        settings: SamplingSettings,
        prompt: str,
        ignore_eos: bool = False,
        run_id: str | None = None,
        wide: int = 0,
    ) -> Iterator[tuple[Trace, ...]]:
        updates: queue.Queue = queue.Queue()
        tag = uuid.uuid4().hex[:12]
        traces = [Trace.start(lane, cfg, settings, prompt, self.model, "vllm") for lane, _, cfg in lanes]
        request_ids = [f"{lane}-{i}-{tag}" for i, (lane, _, _) in enumerate(lanes)]
        for trace, rid in zip(traces, request_ids, strict=True):
            trace.request_id = rid

        async def pump(i: int, engine: Any, cfg: MoIConfig) -> None:
            try:
                params = sampling_params(cfg, settings, ignore_eos, wide=wide)
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
                        if is_engine_dead(completion):
                            self._on_dead(death_reason([engine for _, engine, _ in lanes], completion))
                            raise self.unavailable() from None
                        raise _user_error(completion)
                    apply_output(trace, completion, done, wide)
                    if done:
                        finished[i] = True
                        if trace.config.switched and trace.config.mixes:  # what it fed: only the plugin knows
                            fill_from_records(
                                trace,
                                self._call(
                                    lanes[i][1].collective_rpc("moi_records", args=([request_ids[i]],)), timeout=60
                                )[0],
                            )
                yield tuple(traces)
        finally:
            self._runs.end(run_id)
            if not all(finished) and self.state == EngineState.READY:
                for (_, engine, _), rid, done in zip(lanes, request_ids, finished, strict=True):
                    if not done:
                        with contextlib.suppress(Exception):  # a dead engine has nothing left to abort
                            self._call(engine.abort(rid), timeout=30)
            for f in futures:
                f.cancel()


def _user_error(error: BaseException) -> BaseException:
    """vLLM's validation errors name the parameter: keep them as InputError for the UI and API."""
    parameter = getattr(error, "parameter", None)
    if parameter:
        raw = str(error.args[0]) if error.args else str(error)  # without vLLM's "(parameter=...)" suffix
        message = raw.removeprefix(f"{parameter}: ")
        return InputError(parameter, message)
    return error
