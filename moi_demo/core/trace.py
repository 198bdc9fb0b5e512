"""Step / Trace records of a generation: plain lists and numbers (no tensors), JSON round-trip.

A Step holds what the engine returned for one generated token: the sampled id, its log-probability,
the top-k ids and log-probabilities of the raw (temperature-1) distribution, H, and the mix weights
that were fed back as the next input (none for a standard lane). `recompute` rebuilds the weights
from the returned top-k log-probabilities (core/plain.py; a switched lane shows the plugin's records instead).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.core.plain import step_weights

# The app's mode choices (label -> mixing mode), and each lane's name: written once, for the page, CLI and plots.
MODE_CHOICES: dict[str, str] = {
    "MoI": "moi",
    "Direct mixture": "direct",
    "Gumbel soft thinking": "gumbel",
    "Multiplex": "multiplex",
}
STANDARD_LABEL = "Standard"


def lane_label(cfg: MoIConfig, full: bool = False) -> str:
    """ "Standard", "Direct mixture (w = p)", "MoI (beta = 1)" (`full`: "Mixture of Inputs (beta = 1)"), then the
    switches away from the paper's MoI: "MoI (beta = 1) · H over V, processed prior, noise 0.5"."""
    if cfg.mode == "standard":
        return STANDARD_LABEL
    base = {
        "direct": "Direct mixture (w = p)",
        "gumbel": f"Gumbel soft thinking (tau = {cfg.tau:g})",
        "multiplex": f"Multiplex ({cfg.samples} samples)",
    }.get(cfg.mode, f"{'Mixture of Inputs' if full else 'MoI'} (beta = {cfg.beta:g})")
    return base + (f" · {switch_text}" if (switch_text := switches_label(cfg)) else "")


def switches_label(cfg: MoIConfig) -> str:
    """The switches away from the paper's MoI, in words ("" when none)."""
    parts = (
        (["H over V"] if cfg.entropy == "full" else [])
        + (["processed prior"] if cfg.prior == "processed" else [])
        + ([f"noise {cfg.noise:g}"] if cfg.noise > 0 else [])
        + ([f"mixes where H {'>=' if cfg.gate == 'high' else '<='} {cfg.gate_h:g}"] if cfg.gate != "none" else [])
    )
    return ", ".join(parts)


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn, shared by both lanes: temperature 0 means greedy; the seed makes sampled
    runs reproducible."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = 0


@dataclass
class Step:
    index: int
    token_id: int
    token: str
    logprob: float  # log p(sampled) under the full temperature-1 distribution
    topk_ids: list[int]
    topk_logprobs: list[float]
    entropy: float  # H: normalised entropy of the renormalised top-k distribution
    topk_tokens: list[str] | None = None  # decoded text of topk_ids
    candidate_ids: list[int] | None = None  # None in a standard lane
    weights: list[float] | None = None  # the mix fed back as the next input
    mixed_prior: list[float] | None = None  # a switched lane's prior p over topk_ids (None: the raw top-k one)
    ranked: list[tuple[int, float]] | None = None  # a comparison's: every (id, log-prob) returned, wider than k

    @property
    def p_sampled(self) -> float:
        return math.exp(self.logprob)

    @property
    def prior(self) -> list[float]:
        """The prior p the lane mixed (over topk_ids): the renormalised top-k distribution, or a switched lane's."""
        if self.mixed_prior is not None:
            return self.mixed_prior
        m = max(self.topk_logprobs)
        e = [math.exp(lp - m) for lp in self.topk_logprobs]
        s = sum(e)
        return [x / s for x in e]

    @property
    def sampled_weight(self) -> float:
        """Weight kept on the sampled token: 1 when nothing was mixed."""
        if self.weights is None or self.candidate_ids is None:
            return 1.0
        return sum(w for c, w in zip(self.candidate_ids, self.weights, strict=True) if c == self.token_id)

    def token_text(self, token_id: int) -> str:
        """Decoded text of the sampled token or of a top-k candidate ("#id" when unknown)."""
        if token_id == self.token_id:
            return self.token
        if self.topk_tokens is not None and token_id in self.topk_ids:
            return self.topk_tokens[self.topk_ids.index(token_id)]
        return f"#{token_id}"

    @property
    def sampled_in_topk(self) -> bool:
        return self.token_id in self.topk_ids


@dataclass
class Trace:
    lane: str  # "standard" or "moi"
    mode: str
    beta: float
    top_k: int
    prompt: str = ""
    model: str = ""
    engine: str = ""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    max_tokens: int = 0
    entropy: str = "top_k"  # MoI's switches (core/mixing.py): the defaults are the paper's MoI
    prior: str = "raw"
    noise: float = 0.0
    gate: str = "none"
    gate_h: float = 0.5
    tau: float = 0.5
    samples: int = 3
    request_id: str = ""
    steps: list[Step] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None

    @property
    def token_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]

    @property
    def config(self) -> MoIConfig:
        return MoIConfig(
            self.mode, self.beta, self.top_k, self.entropy, self.prior, self.noise,
            self.gate, self.gate_h, self.tau, self.samples,
        )  # fmt: skip

    @classmethod
    def start(
        cls, lane: str, moi: MoIConfig, settings: SamplingSettings, prompt: str, model: str, engine: str
    ) -> Trace:
        """An empty lane decoded with `moi` and `settings` (`config` reads the settings back)."""
        return cls(
            lane=lane, mode=moi.mode, beta=moi.beta, top_k=moi.top_k, prompt=prompt, model=model, engine=engine,
            temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
            max_tokens=settings.max_tokens, entropy=moi.entropy, prior=moi.prior, noise=moi.noise,
            gate=moi.gate, gate_h=moi.gate_h, tau=moi.tau, samples=moi.samples,
        )  # fmt: skip

    def recompute(self, step: Step) -> tuple[list[int], list[float], float]:
        """(candidates, weights, H) of a step from its top-k log-probs, with this lane's settings (the paper's MoI:
        a switched lane's own come from the plugin's records, see serving/engine.py)."""
        return step_weights(step.topk_logprobs, step.topk_ids, step.token_id, self.config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        data = dict(data)
        steps = [Step(**s) for s in data.pop("steps", [])]
        return cls(**data, steps=steps)


def first_divergence(a: Trace, b: Trace) -> int | None:
    """Index of the first step where the two lanes sampled different tokens (None if they never do
    within the shorter lane; the shorter lane ending first counts at its length)."""
    for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)):
        if x != y:
            return i
    return None if len(a.steps) == len(b.steps) else min(len(a.steps), len(b.steps))


def save_traces(path: str | Path, traces: list[Trace], run_card: dict[str, Any] | None = None) -> None:
    """The traces as JSON, with the run card of what produced them (serving/run_card.py) where given."""
    data: dict[str, Any] = {"traces": [t.to_dict() for t in traces]}
    if run_card is not None:
        data["run_card"] = run_card
    Path(path).write_text(json.dumps(data, indent=1))


def load_traces(path: str | Path) -> list[Trace]:
    return [Trace.from_dict(t) for t in json.loads(Path(path).read_text())["traces"]]
