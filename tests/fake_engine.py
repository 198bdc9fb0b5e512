"""A stand-in for MoIEngine with a toy model, for the app's fast tests (no vLLM): the methods the page's callbacks
call, with MoIEngine's contracts (lanes streamed cumulatively, a run aborted by its id's prefix, texts of many jobs
in job order, RunStopped when stopped, InputError for bad settings). Its lanes are deterministic in (prompt, lane
config, seed, step), so a test knows what it should see; MoI lanes carry the weights of `core.plain.step_weights`."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.plain import step_weights
from moi_demo.core.trace import SamplingSettings, Step, Trace, lane_label
from moi_demo.serving.lanes import inspect_answer, inspect_request
from moi_demo.serving.settings import EngineOptions
from moi_demo.serving.supervisor import RunStopped

WORDS = ["the", " cat", " sat", " on", " a", " mat", ".", " It", " was", " warm", " 42", " Paris"]


def toy_logprobs(prompt: str, lane: str, step: int, k: int) -> tuple[list[int], list[float]]:
    """The toy model's top-k (ids, log-probs) at a step: a distribution drawn from a hash of what it depends on."""
    digest = hashlib.sha256(f"{prompt}|{lane}|{step}".encode()).digest()
    scores = [digest[i] / 32.0 for i in range(len(WORDS))]
    ids = sorted(range(len(WORDS)), key=lambda i: -scores[i])[:k]
    norm = math.log(sum(math.exp(s) for s in scores))
    return ids, [scores[i] - norm for i in ids]


class ToyTokenizer:
    """The toy model's words as tokens: encode by the longest word at each place (the fake's texts are words joined)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, at = [], 0
        while at < len(text):
            best = max((i for i, w in enumerate(WORDS) if text.startswith(w, at)), key=lambda i: len(WORDS[i]))
            ids.append(best)
            at += len(WORDS[best])
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(WORDS[i] for i in ids)


class FakeEngine:
    """MoIEngine's face to the page, on the toy model. `steps_delay` paces a lane's steps (a run long enough to be
    stopped); `cancelled` lists every prefix `cancel` was given."""

    model = "fake/toy-model"
    layout = "shared"
    runner_name = "fake"
    dtype_name = "float32"

    def __init__(self, steps_delay: float = 0.0, answers: dict[str, str] | None = None):
        self.options = EngineOptions()
        self.answers = answers or {}  # prompt -> the right answer (generate_many)
        self.tokenizer = ToyTokenizer()
        self.steps_delay = steps_delay
        self.cancelled: list[str] = []
        self.streamed: list[list[MoIConfig]] = []  # each stream_lanes call's configs
        self.inspected: list[int] = []
        self._live: dict[str, threading.Event] = {}  # run id -> its abort flag
        self.created_at = time.time()
        self.steps_done = 0  # engine steps so far: what `stats` times (20 ms a step, 0.5 ms of it the plugin's)

    @property
    def max_concurrent_runs(self) -> int:
        return max(1, self.options.max_num_seqs // 2)

    def health(self) -> dict[str, Any]:
        return {
            "engine": "ready",
            "model": self.model,
            "uptime_s": round(time.time() - self.created_at, 1) + 0.1,
            "restarts": 0,
            "runs_in_flight": len(self._live),
            "max_concurrent_runs": self.max_concurrent_runs,
        }

    def stats(self) -> dict[str, Any]:
        n = self.steps_done
        return {"step_seconds": 0.02 * n, "timed_steps": n, "hook_seconds": 0.0005 * n, "applied_steps": n}

    def cancel(self, prefix: str) -> int:
        self.cancelled.append(prefix)
        hit = [rid for rid in self._live if rid == prefix or rid.startswith(prefix + "/")]
        for rid in hit:
            self._live[rid].set()
        return 2 * len(hit)

    def _lane(self, prompt: str, cfg: MoIConfig, settings: SamplingSettings, step: int, wide: int) -> Step:
        # The standard lane and a MoI lane share their first two steps; after that a lane's own settings count.
        lane = "shared" if step < 2 or not cfg.mixes else lane_label(cfg, full=True)
        ids, logprobs = toy_logprobs(f"{prompt}|{settings.seed}", lane, step, len(WORDS))
        ranked = list(zip(ids, logprobs, strict=True)) if wide else None
        ids, logprobs = ids[: cfg.top_k], logprobs[: cfg.top_k]
        token = ids[0] if cfg.force is None else cfg.force[step]
        cands, weights, h = step_weights(logprobs, ids, token, cfg)
        return Step(
            index=step,
            token_id=token,
            token=WORDS[token],
            logprob=dict(ranked or zip(ids, logprobs, strict=True)).get(token, -20.0),
            topk_ids=ids,
            topk_logprobs=logprobs,
            entropy=h,
            topk_tokens=[WORDS[i] for i in ids],
            ranked=ranked,
            candidate_ids=cands if cfg.mixes else None,
            weights=weights if cfg.mixes else None,
        )

    def stream_lanes(
        self,
        prompt: str,
        configs: Sequence[MoIConfig],
        settings: SamplingSettings,
        run_id: str | None = None,
        wide: int = 0,
    ) -> Iterator[tuple[Trace, ...]]:
        """Every lane one step further per update (as MoIEngine.stream_lanes)."""
        if settings.temperature > 2:
            raise InputError("temperature", "the toy model takes at most 2")
        self.streamed.append(list(configs))
        flag = self._live.setdefault(run_id or f"anon/{id(configs)}", threading.Event())
        traces = [
            Trace.start("moi" if c.mixes else "standard", c, settings, prompt, self.model, "fake") for c in configs
        ]
        try:
            for step in range(settings.max_tokens):
                if flag.is_set():
                    return
                for trace, cfg in zip(traces, configs, strict=True):
                    trace.steps.append(self._lane(prompt, cfg, settings, step, wide))
                    trace.text = "".join(s.token for s in trace.steps)
                self.steps_done += 1
                if step == settings.max_tokens - 1:
                    for trace in traces:
                        trace.finish_reason = "length"
                yield tuple(traces)  # the same objects, grown in place (as MoIEngine's): the last one seen is whole
                time.sleep(self.steps_delay)
        finally:
            self._live.pop(run_id or f"anon/{id(configs)}", None)

    def inspect(self, traces: Sequence[Trace], step: int) -> list[dict[str, Any]]:
        """As MoIEngine.inspect, with the toy model's answer in place of the workers' (cos: the largest weight)."""
        self.inspected.append(step)
        out = []
        for t in (t for t in traces if t.steps):
            lane = inspect_request(t, step)
            cos = [max(w) for w in lane["weights"]]
            rank = {"cos": cos, "nearest_ids": [t.token_ids[lane["step"]]], "nearest_sims": [cos[lane["step"]]]}
            out.append(inspect_answer(t, lane, [rank], lambda ids: WORDS[ids[0]], 0.1))
        return out

    def generate_many(
        self,
        jobs: list[tuple[str, MoIConfig, int | None]],
        settings: SamplingSettings,
        on_done: Any = None,
        run_id: str | None = None,
    ) -> list[str]:
        """The toy model's answer to each job: the right one (from `answers`) for even seeds in standard and odd seeds
        in the mixing modes, a wrong one otherwise: a paired comparison with known counts."""
        flag = self._live.setdefault(run_id or "eval", threading.Event())
        texts = []
        try:
            for i, (prompt, cfg, seed) in enumerate(jobs):
                if flag.is_set():
                    raise RunStopped(f"stopped after {i} of {len(jobs)} generations")
                if prompt in self.answers:
                    right = (seed or 0) % 2 == (1 if cfg.mixes else 0)
                    texts.append(f"\\boxed{{{self.answers[prompt] if right else 'none'}}}")
                else:  # the toy lane under this seed
                    seeded = SamplingSettings(settings.temperature, settings.top_p, settings.max_tokens, seed)
                    texts.append(
                        "".join(self._lane(prompt, cfg, seeded, t, 0).token for t in range(settings.max_tokens))
                    )
                if on_done is not None:
                    on_done(i + 1)
                time.sleep(self.steps_delay)
        finally:
            self._live.pop(run_id or "eval", None)
        return texts
