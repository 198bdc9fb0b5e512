"""The beta explorer's bookkeeping (no engine, no UI): which lanes a session has, which can be reused, and
what a beta sweep says.

A session's lanes all belong to one *standard key*: the inputs the standard lane depends on (model, prompt,
sampling settings, seed, max tokens). While that key holds, the standard lane is reused (its top-k views trimmed
when a smaller top-k is asked for) and every finished MoI lane is kept by (mode, beta, top-k), so moving the
slider back to a beta already run, or to one of a sweep's betas, shows that lane without an engine call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import APP_BETA, InputError
from moi_demo.core.trace import SamplingSettings, Step, Trace, first_divergence, lane_label
from moi_demo.serving.compare import Comparison

DEFAULT_SWEEP = "0, 0.25, 0.5, 1, 2, 4, direct"
MAX_SWEEP_LANES = 8  # MoI lanes in one sweep (plus the standard lane): what the page shows and one batch holds
MAX_KEPT_LANES = 12  # MoI lanes a session keeps for one standard key, oldest dropped first (~1 MB per 512-token lane)

StandardKey = tuple[str, str, float, float, int, int | None]
LaneKey = tuple[str, float | None, int, str, str, float, str, float, float, int]


def standard_key(model: str, prompt: str, settings: SamplingSettings) -> StandardKey:
    return (model, prompt, settings.temperature, settings.top_p, settings.max_tokens, settings.seed)


def lane_key(cfg: MoIConfig) -> LaneKey:
    """Only MoI reads beta: one direct (gumbel, multiplex) lane per top-k and switches."""
    beta = cfg.beta if cfg.mode == "moi" else None
    return (cfg.mode, beta, cfg.top_k, cfg.entropy, cfg.prior, cfg.noise, cfg.gate, cfg.gate_h, cfg.tau, cfg.samples)


def parse_betas(text: Any, top_k: int, field_name: str = "betas") -> list[MoIConfig]:
    """'0, 0.5, 1, direct' -> MoI configs in that order (duplicates dropped). Each entry is a beta from 0 to 4,
    `direct`, `gumbel` or `multiplex` (a rival mode: its tau or samples are the caller's, `with_switches`); one to
    MAX_SWEEP_LANES entries."""
    if not isinstance(text, str):
        raise InputError(field_name, f"must be text like {DEFAULT_SWEEP!r}; got {type(text).__name__}")
    entries = [e.strip() for e in text.replace(";", ",").split(",") if e.strip()]
    if not entries:
        raise InputError(
            field_name,
            f"must list at least one beta (from {APP_BETA.lo:g} to "
            f"{APP_BETA.hi:g}) or `direct`, e.g. {DEFAULT_SWEEP!r}",
        )
    configs: list[MoIConfig] = []
    for entry in entries:
        if entry.lower() in ("direct", "d", "p"):
            cfg = MoIConfig("direct", 0.0, top_k)
        elif entry.lower() in ("gumbel", "multiplex"):
            cfg = MoIConfig(entry.lower(), 0.0, top_k)
        else:
            try:
                beta = float(entry)
            except ValueError:
                raise InputError(
                    field_name,
                    f"each entry must be a beta from {APP_BETA.lo:g} to {APP_BETA.hi:g}, `direct`, `gumbel` or "
                    f"`multiplex`; got {entry!r}",
                ) from None
            if not (math.isfinite(beta) and APP_BETA.lo <= beta <= APP_BETA.hi):
                raise InputError(field_name, f"each beta must be from {APP_BETA.lo:g} to {APP_BETA.hi:g}; got {entry}")
            cfg = MoIConfig("moi", beta, top_k)
        if lane_key(cfg) not in {lane_key(c) for c in configs}:
            configs.append(cfg)
    if len(configs) > MAX_SWEEP_LANES:
        raise InputError(field_name, f"at most {MAX_SWEEP_LANES} lanes in one sweep; got {len(configs)}")
    return configs


def with_top_k(trace: Trace, k: int) -> Trace:
    """The same lane seen with a smaller top-k: each step's candidates cut to the first k ranks, H recomputed.
    (Only for a lane that does not mix: a mixing lane's k changed what it fed back.)"""
    if k >= trace.top_k or trace.config.mixes:
        return trace
    out = replace(trace, top_k=k, steps=[])
    for s in trace.steps:
        step = replace(
            s,
            topk_ids=s.topk_ids[:k],
            topk_logprobs=s.topk_logprobs[:k],
            topk_tokens=s.topk_tokens[:k] if s.topk_tokens is not None else None,
        )
        step.entropy = out.recompute(step)[2]
        out.steps.append(step)
    return out


@dataclass
class Lanes:
    """One session's lanes (kept in the page's gr.State): the standard lane of the current standard key, the MoI
    lanes run for it (finished ones only), and the pair on display (which may be a stopped run)."""

    key: StandardKey | None = None
    standard: Trace | None = None
    mixed: dict[LaneKey, Trace] = field(default_factory=dict)
    shown: tuple[Trace, Trace] | None = None
    sweep: list[Trace] = field(default_factory=list)  # the last sweep's MoI lanes, in its order
    version: int = 0  # counts the pairs shown, so the page's figures are drawn once per pair
    drawn: tuple[int, str] | None = None  # (version, colouring) the page's figures show
    comparison: Comparison | None = None  # the last same-tokens comparison (serving/compare.py)

    def show(self, standard: Trace, moi: Trace) -> None:
        self.shown, self.version = (standard, moi), self.version + 1

    def reusable_standard(self, key: StandardKey, top_k: int) -> Trace | None:
        """The standard lane for these inputs if it ran to the end with at least `top_k` candidates per step."""
        s = self.standard
        if key != self.key or s is None or s.finish_reason in (None, "abort") or s.top_k < top_k:
            return None
        return with_top_k(s, top_k)

    def cached(self, key: StandardKey, cfg: MoIConfig) -> Trace | None:
        return self.mixed.get(lane_key(cfg)) if key == self.key else None

    def keep(self, key: StandardKey, standard: Trace | None, lanes: list[Trace]) -> None:
        """Record finished lanes (stopped ones are not kept). A new standard key starts afresh."""
        if key != self.key:
            self.key, self.standard, self.mixed, self.sweep = key, None, {}, []
        if (
            standard is not None
            and standard.finish_reason not in (None, "abort")
            and (self.standard is None or standard.top_k >= self.standard.top_k)
        ):
            self.standard = standard
        for trace in lanes:
            if trace.finish_reason in (None, "abort"):
                continue
            k = lane_key(trace.config)
            self.mixed.pop(k, None)
            self.mixed[k] = trace
        while len(self.mixed) > MAX_KEPT_LANES:
            self.mixed.pop(next(iter(self.mixed)))

    def export(self) -> dict[str, Any]:
        """JSON for the download: the pair on display, and every kept lane of this standard key."""
        lanes = ([self.standard] if self.standard else []) + list(self.mixed.values())
        return {
            "traces": [t.to_dict() for t in self.shown] if self.shown else [],
            "lanes": [t.to_dict() for t in lanes],
        }


# -- what a sweep says ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaneSummary:
    label: str
    tokens: int
    diverge: int | None  # first step where the lane's token differs from the standard lane's (None: never)
    mean_sampled_weight: float  # mean weight kept on the sampled token over the steps
    mean_entropy: float  # mean normalised entropy H over the steps


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(standard: Trace, lane: Trace) -> LaneSummary:
    steps: list[Step] = lane.steps
    return LaneSummary(
        lane_label(lane.config),
        len(steps),
        first_divergence(standard, lane),
        _mean([s.sampled_weight for s in steps]),
        _mean([s.entropy for s in steps]),
    )
