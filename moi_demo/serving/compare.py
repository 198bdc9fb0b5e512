"""Same tokens, two inputs: the MoI lane decodes the standard lane's tokens (teacher forcing, `moi_force`: each step
takes the standard token as its sample and feeds its own mixture), so that what the mixture does to the model's
distribution shows step by step, with no divergence of histories in the way. Per step: KL(standard || MoI) over the
union of their top-k, and how the top-k changed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import MAX_TOP_K
from moi_demo.core.trace import SamplingSettings, Step, Trace

WIDE = MAX_TOP_K  # log-probs asked per step (the engines' max_logprobs): where the union's entries are looked up


@dataclass(frozen=True)
class StepDelta:
    """One step of a comparison: KL(standard || MoI) over the union U of the two top-k (each distribution
    renormalised over U), the share of the standard top-k still in MoI's, and whether an entry of U fell outside a
    lane's WIDE returned log-probs (then it takes that lane's smallest returned one: a bound)."""

    kl: float
    overlap: float
    bounded: bool


def union_kl(
    ranked_s: Sequence[Sequence[float]], ranked_m: Sequence[Sequence[float]], top_s: Sequence[int], top_m: Sequence[int]
) -> StepDelta:
    """`ranked_*`: (id, log-prob) pairs a lane returned; `top_*`: its top-k ids."""
    s, m = {int(i): lp for i, lp in ranked_s}, {int(i): lp for i, lp in ranked_m}
    union = list(dict.fromkeys([*top_s, *top_m]))
    bounded = any(u not in s or u not in m for u in union)
    a = [s.get(u, min(s.values())) for u in union]
    b = [m.get(u, min(m.values())) for u in union]
    log_za, log_zb = _logsumexp(a), _logsumexp(b)
    kl = sum(math.exp(x - log_za) * ((x - log_za) - (y - log_zb)) for x, y in zip(a, b, strict=True))
    overlap = len(set(top_s) & set(top_m)) / max(len(top_s), 1)
    return StepDelta(max(kl, 0.0), overlap, bounded)


def _logsumexp(xs: Sequence[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


@dataclass
class Comparison:
    """The standard lane and the MoI lane forced to its tokens, and each step's delta."""

    standard: Trace
    moi: Trace
    steps: list[StepDelta] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "standard": self.standard.to_dict(),
            "moi": self.moi.to_dict(),
            "kl": [d.kl for d in self.steps],
            "overlap": [d.overlap for d in self.steps],
            "bounded": [d.bounded for d in self.steps],
        }


def deltas(standard: Trace, moi: Trace) -> list[StepDelta]:
    """Each step's delta from two lanes run with `wide` log-probs (their steps' `ranked`)."""
    return [
        union_kl(s.ranked or _pairs(s), m.ranked or _pairs(m), s.topk_ids, m.topk_ids)
        for s, m in zip(standard.steps, moi.steps, strict=False)
    ]


def _pairs(step: Step) -> list[tuple[int, float]]:
    return list(zip(step.topk_ids, step.topk_logprobs, strict=True))


def compare(
    engine: Any, prompt: str, moi: MoIConfig, settings: SamplingSettings, run_id: str | None = None
) -> Comparison:
    """The standard lane of `prompt`, then the MoI lane `moi` forced to its tokens (same prompt ids, settings and
    seed), both with WIDE log-probs per step; `engine` a MoIEngine (`stream_lanes`)."""
    standard_cfg = MoIConfig("standard", moi.beta, moi.top_k)
    *_, (standard,) = engine.stream_lanes(prompt, [standard_cfg], settings, run_id=run_id, wide=WIDE)
    forced = dataclasses.replace(moi, force=tuple(standard.token_ids))
    tokens = dataclasses.replace(settings, max_tokens=max(len(standard.token_ids), 1))
    *_, (mixed,) = engine.stream_lanes(prompt, [forced], tokens, run_id=run_id, wide=WIDE)
    return Comparison(standard, mixed, deltas(standard, mixed))
