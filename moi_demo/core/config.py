"""One request's MoI settings and their wire format (vLLM's `SamplingParams.extra_args`, the OpenAI API's
`vllm_xargs`, and `MIXINPUTS_BETA`), checked against core.inputs' bounds. Pure Python: the math is in mixing.py.

    mode   "moi" (the paper's posterior mean) | "direct" (w = p) | "standard" (no mixing); beta >= 0 (-100: direct)
           | "gumbel" (Stochastic Soft Thinking: w = softmax((log p + G) / tau)) | "multiplex" (Multiplex Thinking:
           w = the counts of `samples` tokens drawn from p, over `samples`); their randomness from the request's seed
    top_k  candidates mixed per step
    switches (defaults: the paper's MoI, exactly; mixing.py's docstring has the formulas)
           entropy "top_k" | "full", prior "raw" | "processed", noise (a Gumbel scale >= 0)
    gate   "none" (mix at every step) | "high" (only where H >= gate_h, as SeLaR) | "low" (only where H <= gate_h,
           as ThinkRouter); a shut step feeds E[sampled], exactly a standard step
A setting its mode or gate does not read keeps its default (tau outside gumbel, samples outside multiplex, gate_h
without a gate): configs that decode alike are equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moi_demo.core.inputs import BETA, GATE_H, NOISE, SAMPLES, TAU, TOP_K, InputError, check_choice

MASK32 = 0xFFFFFFFF  # seeds and the noise hash are 32-bit

MODES: tuple[str, ...] = ("standard", "moi", "direct", "gumbel", "multiplex")
MODE_STANDARD, MODE_MOI, MODE_DIRECT, MODE_GUMBEL, MODE_MULTIPLEX = 0, 1, 2, 3, 4  # codes >= MODE_DIRECT: w has no
# onehot(y) term (a = 1 in mixing.prior_share)
RIVAL_MODES = ("gumbel", "multiplex")
MODE_CODES: dict[str, int] = {name: code for code, name in enumerate(MODES)}
# The reference implementation's convention: MIXINPUTS_BETA=-100 means direct mixture.
DIRECT_MIXTURE_BETA = -100.0
DEFAULT_BETA = 1.0
DEFAULT_TOP_K = 20
ENTROPIES: tuple[str, ...] = ("top_k", "full")  # how H is taken (see the module docstring)
PRIORS: tuple[str, ...] = ("raw", "processed")  # which distribution p is
GATES: tuple[str, ...] = ("none", "high", "low")  # where a step mixes (see the module docstring)
DEFAULT_GATE_H, DEFAULT_TAU, DEFAULT_SAMPLES = 0.5, 0.5, 3
# Keys of SamplingParams.extra_args (and of the OpenAI API's `vllm_xargs`).
KEY_MODE, KEY_BETA, KEY_TOP_K = "moi_mode", "moi_beta", "moi_top_k"
KEY_ENTROPY, KEY_PRIOR, KEY_NOISE = "moi_entropy", "moi_prior", "moi_noise"
KEY_GATE, KEY_GATE_H, KEY_TAU, KEY_SAMPLES = "moi_gate", "moi_gate_h", "moi_tau", "moi_samples"
EXTRA_ARGS_KEYS = (  # any of them asks for MoI
    KEY_MODE, KEY_BETA, KEY_TOP_K, KEY_ENTROPY, KEY_PRIOR, KEY_NOISE, KEY_GATE, KEY_GATE_H, KEY_TAU, KEY_SAMPLES,
)  # fmt: skip
KEY_RECORD = "moi_record"  # true: keep what the request was fed past its end, until `moi_records` reads it
KEY_FORCE = "moi_force"  # token ids: the request samples these, in order (teacher forcing), and mixes as it would
GREEDY_EPS = 1e-5  # vLLM's _SAMPLING_EPS: a temperature below it samples greedily


@dataclass(frozen=True)
class SamplingContext:
    """What of a request's own sampling settings shapes a switched prior: temperature (< GREEDY_EPS: greedy) and
    top-p, and the seed its noise is drawn from (None: the engine derives one per request)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class MoIConfig:
    """One request's MoI settings, checked against `inputs.BETA`, `inputs.TOP_K` and `inputs.NOISE` (errors name
    the field). `beta == -100` (the reference's convention) means direct mixture. `entropy`, `prior` and `noise` are
    the switches (module docstring); `context` is the request's sampling (set by the engine side where a switch
    reads it) and `keep_record` asks the engine to keep what it fed past its end (`moi_record`): neither is part of
    the settings' identity."""

    mode: str = "moi"
    beta: float = DEFAULT_BETA
    top_k: int = DEFAULT_TOP_K
    entropy: str = "top_k"
    prior: str = "raw"
    noise: float = 0.0
    gate: str = "none"
    gate_h: float = DEFAULT_GATE_H
    tau: float = DEFAULT_TAU
    samples: int = DEFAULT_SAMPLES
    context: SamplingContext | None = field(default=None, compare=False, repr=False)
    keep_record: bool = field(default=False, compare=False, repr=False)
    force: tuple[int, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", MODES)
        check_choice(self.entropy, "entropy", ENTROPIES)
        check_choice(self.prior, "prior", PRIORS)
        check_choice(self.gate, "gate", GATES)
        object.__setattr__(self, "noise", NOISE.check(self.noise))
        # what the mode and gate read, checked; the rest back to its default (module docstring)
        gated, gumbel, multiplex = self.gate != "none", self.mode == "gumbel", self.mode == "multiplex"
        object.__setattr__(self, "gate_h", GATE_H.check(self.gate_h) if gated else DEFAULT_GATE_H)
        object.__setattr__(self, "tau", TAU.check(self.tau) if gumbel else DEFAULT_TAU)
        object.__setattr__(self, "samples", SAMPLES.check(self.samples) if multiplex else DEFAULT_SAMPLES)
        if self.beta == DIRECT_MIXTURE_BETA and not isinstance(self.beta, bool | str):
            object.__setattr__(self, "mode", "direct" if self.mode == "moi" else self.mode)
            object.__setattr__(self, "beta", float(self.beta))
        else:
            if isinstance(self.beta, str):  # numbers only: text is parsed by the callers that accept it
                raise InputError("beta", f"must be {BETA.allowed()} (or -100 for direct mixture); got {self.beta!r}")
            try:
                object.__setattr__(self, "beta", BETA.check(self.beta))
            except InputError as e:
                raise InputError("beta", e.reason.replace("; got", " (or -100 for direct mixture); got")) from None
        if isinstance(self.top_k, bool | str | float) or not isinstance(self.top_k, int) or self.top_k < TOP_K.lo:
            raise InputError("top_k", f"must be an integer from 1 to the vocabulary size; got {self.top_k!r}")
        if self.force is not None:
            force = self.force
            if not isinstance(force, list | tuple) or not all(type(t) is int and t >= 0 for t in force):
                raise InputError("force", f"must be a list of token ids (integers >= 0); got {force!r}")
            if not self.mixes:
                raise InputError("force", "forces the tokens of a mixing lane; a standard request samples its own")
            object.__setattr__(self, "force", tuple(force))

    @property
    def mixes(self) -> bool:
        return self.mode != "standard"

    @property
    def switched(self) -> bool:
        """Away from the paper's MoI and direct mixture: a switch, a gate or a rival mode. The engine takes such a
        lane's weights from what the plugin fed (the full entropy, the processed prior and any draw from the seed
        need what only the sampler sees)."""
        return self.entropy != "top_k" or self.prior != "raw" or self.noise > 0 or self.gate != "none" or self.rival

    @property
    def rival(self) -> bool:
        """A rival mixture (gumbel, multiplex) in place of MoI's posterior."""
        return self.mode in RIVAL_MODES

    @property
    def needs_context(self) -> bool:
        """Reads the request's sampling: the processed prior its temperature and top-p, a draw its seed."""
        return self.prior == "processed" or self.noise > 0 or self.rival

    def with_switches(
        self,
        entropy: str = "top_k",
        prior: str = "raw",
        noise: Any = 0.0,
        gate: str = "none",
        gate_h: Any = DEFAULT_GATE_H,
        tau: Any = DEFAULT_TAU,
        samples: Any = DEFAULT_SAMPLES,
    ) -> MoIConfig:
        """The same lane with these switches, gate and rival-mode settings (checked; what its mode does not read
        stays at its default); a standard lane mixes nothing and stays as it is."""
        if not self.mixes:
            return self
        return dataclasses.replace(
            self, entropy=entropy, prior=prior, noise=noise, gate=gate, gate_h=gate_h, tau=tau, samples=samples
        )

    def switches(self) -> dict[str, Any]:
        """The switches as `extra_args` keys (only those away from their defaults)."""
        out: dict[str, Any] = {}
        if self.entropy != "top_k":
            out[KEY_ENTROPY] = self.entropy
        if self.prior != "raw":
            out[KEY_PRIOR] = self.prior
        if self.noise > 0:
            out[KEY_NOISE] = self.noise
        if self.gate != "none":
            out[KEY_GATE], out[KEY_GATE_H] = self.gate, self.gate_h
        if self.mode == "gumbel":
            out[KEY_TAU] = self.tau
        if self.mode == "multiplex":
            out[KEY_SAMPLES] = self.samples
        return out

    def extra_args(self) -> dict[str, Any]:
        """This config as `SamplingParams.extra_args` (the OpenAI API's `vllm_xargs`): what `from_extra_args` reads
        back to an equal config. The one place the wire format is written. A standard config says so ({"moi_mode":
        "standard"}): without any key a request would take MIXINPUTS_BETA's default where that is set."""
        if not self.mixes:
            return {KEY_MODE: self.mode}
        out: dict[str, Any] = {KEY_MODE: self.mode, KEY_BETA: self.beta, KEY_TOP_K: self.top_k, **self.switches()}
        if self.keep_record:
            out[KEY_RECORD] = True
        if self.force is not None:
            out[KEY_FORCE] = list(self.force)
        return out

    def check_vocab(self, vocab_size: int) -> MoIConfig:
        if self.top_k > vocab_size:
            raise InputError("top_k", f"must be from 1 to the vocabulary size {vocab_size}; got {self.top_k}")
        return self

    @classmethod
    def from_extra_args(
        cls, extra_args: Mapping[str, Any] | None, default: MoIConfig | None = None
    ) -> MoIConfig | None:
        """Parse `SamplingParams.extra_args`. Errors name the key (moi_mode, moi_beta, moi_top_k).

        Returns None when the request names no MoI key and there is no default (a standard request).
        """
        extra_args = extra_args or {}
        if not any(key in extra_args for key in EXTRA_ARGS_KEYS):
            return default
        base = default or cls()
        mode = extra_args.get(KEY_MODE, base.mode if default else "moi")
        beta = extra_args.get(KEY_BETA, base.beta if base.beta != DIRECT_MIXTURE_BETA else DEFAULT_BETA)
        top_k = extra_args.get(KEY_TOP_K, base.top_k)
        switches = {
            "entropy": extra_args.get(KEY_ENTROPY, base.entropy),
            "prior": extra_args.get(KEY_PRIOR, base.prior),
            "noise": extra_args.get(KEY_NOISE, base.noise),
            "gate": extra_args.get(KEY_GATE, base.gate),
            "gate_h": extra_args.get(KEY_GATE_H, base.gate_h),
            "tau": extra_args.get(KEY_TAU, base.tau),
            "samples": _integral(extra_args.get(KEY_SAMPLES, base.samples)),
        }
        keep = extra_args.get(KEY_RECORD, False)
        if not isinstance(keep, bool):
            raise InputError(KEY_RECORD, f"must be true or false; got {keep!r}")
        force = extra_args.get(KEY_FORCE)
        # JSON clients send numbers as strings or floats: accept "1.5" and 20.0, never 20.5.
        try:
            beta = float(beta) if isinstance(beta, str) else beta
        except ValueError:
            raise InputError(KEY_BETA, f"must be {BETA.allowed()} (or -100 for direct mixture); got {beta!r}") from None
        try:
            return cls(mode=mode, beta=beta, top_k=_integral(top_k), **switches, keep_record=keep, force=force)
        except InputError as e:
            raise e.renamed(f"moi_{e.field}") from None

    @classmethod
    def from_env_beta(cls, value: str | None) -> MoIConfig | None:
        """The global default from MIXINPUTS_BETA (as in the reference); None when unset or empty."""
        if value is None or not value.strip():
            return None
        try:
            beta = float(value)
        except ValueError:
            raise InputError("MIXINPUTS_BETA", f"must be {BETA.allowed()} or -100; got {value!r}") from None
        try:
            return cls(mode="moi", beta=beta)
        except InputError as e:
            raise e.renamed("MIXINPUTS_BETA") from None


def _integral(value: Any) -> Any:
    """JSON clients send integers as 20.0 or "20": those as int; anything else as it is (checked where it lands)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value
