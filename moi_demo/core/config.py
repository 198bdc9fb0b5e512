"""One request's MoI settings and their wire format (vLLM's `SamplingParams.extra_args`, the OpenAI API's
`vllm_xargs`, and `MIXINPUTS_BETA`), checked against core.inputs' bounds. Pure Python: the math is in mixing.py.

    mode   "moi" (the paper's posterior mean) | "direct" (w = p) | "standard" (no mixing); beta >= 0 (-100: direct)
    top_k  candidates mixed per step
    switches (defaults: the paper's MoI, exactly; mixing.py's docstring has the formulas)
           entropy "top_k" | "full", prior "raw" | "processed", noise (a Gumbel scale >= 0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moi_demo.core.inputs import BETA, NOISE, TOP_K, InputError, check_choice

MASK32 = 0xFFFFFFFF  # seeds and the noise hash are 32-bit

MODES: tuple[str, ...] = ("standard", "moi", "direct")
MODE_STANDARD, MODE_MOI, MODE_DIRECT = 0, 1, 2
MODE_CODES: dict[str, int] = {name: code for code, name in enumerate(MODES)}
# The reference implementation's convention: MIXINPUTS_BETA=-100 means direct mixture.
DIRECT_MIXTURE_BETA = -100.0
DEFAULT_BETA = 1.0
DEFAULT_TOP_K = 20
ENTROPIES: tuple[str, ...] = ("top_k", "full")  # how H is taken (see the module docstring)
PRIORS: tuple[str, ...] = ("raw", "processed")  # which distribution p is
# Keys of SamplingParams.extra_args (and of the OpenAI API's `vllm_xargs`).
KEY_MODE, KEY_BETA, KEY_TOP_K = "moi_mode", "moi_beta", "moi_top_k"
KEY_ENTROPY, KEY_PRIOR, KEY_NOISE = "moi_entropy", "moi_prior", "moi_noise"
EXTRA_ARGS_KEYS = (KEY_MODE, KEY_BETA, KEY_TOP_K, KEY_ENTROPY, KEY_PRIOR, KEY_NOISE)  # any of them asks for MoI
KEY_RECORD = "moi_record"  # true: keep what the request was fed past its end, until `moi_records` reads it
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
    context: SamplingContext | None = field(default=None, compare=False, repr=False)
    keep_record: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", MODES)
        check_choice(self.entropy, "entropy", ENTROPIES)
        check_choice(self.prior, "prior", PRIORS)
        object.__setattr__(self, "noise", NOISE.check(self.noise))
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

    @property
    def mixes(self) -> bool:
        return self.mode != "standard"

    @property
    def switched(self) -> bool:
        """A switch away from the paper's MoI: its weights cannot be recomputed from the top-k log-probs an engine
        returns (the full entropy, the processed prior and the noise need what only the sampler sees)."""
        return self.entropy != "top_k" or self.prior != "raw" or self.noise > 0

    @property
    def needs_context(self) -> bool:
        return self.prior == "processed" or self.noise > 0

    def with_switches(self, entropy: str = "top_k", prior: str = "raw", noise: Any = 0.0) -> MoIConfig:
        """The same lane with these switches (checked); a standard lane mixes nothing and stays as it is."""
        return dataclasses.replace(self, entropy=entropy, prior=prior, noise=noise) if self.mixes else self

    def switches(self) -> dict[str, Any]:
        """The switches as `extra_args` keys (only those away from their defaults)."""
        out: dict[str, Any] = {}
        if self.entropy != "top_k":
            out[KEY_ENTROPY] = self.entropy
        if self.prior != "raw":
            out[KEY_PRIOR] = self.prior
        if self.noise > 0:
            out[KEY_NOISE] = self.noise
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
        }
        keep = extra_args.get(KEY_RECORD, False)
        if not isinstance(keep, bool):
            raise InputError(KEY_RECORD, f"must be true or false; got {keep!r}")
        # JSON clients send numbers as strings or floats: accept "1.5" and 20.0, never 20.5.
        try:
            beta = float(beta) if isinstance(beta, str) else beta
        except ValueError:
            raise InputError(KEY_BETA, f"must be {BETA.allowed()} (or -100 for direct mixture); got {beta!r}") from None
        integral_float = isinstance(top_k, float) and top_k.is_integer()
        if integral_float or (isinstance(top_k, str) and top_k.strip().lstrip("-").isdigit()):
            top_k = int(top_k)
        try:
            return cls(mode=mode, beta=beta, top_k=top_k, **switches, keep_record=keep)
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
