"""User input: the one error type (`InputError`: field + reason) and every bound, checked one way.

The UI (its sliders are built from these bounds), its API, the CLI, the engine and the plugin all check with
these. Two contexts differ on purpose, and both bounds are written here:
* the plugin serves anyone's vLLM: beta is any finite number >= 0 (or -100, the reference's "direct mixture"),
  top-k any integer up to the vocabulary size;
* the engines moi-demo starts return top-k log-probs for their traces (vLLM's `max_logprobs`): top-k at most
  `MAX_TOP_K`; the app's slider and sweep show beta from 0 to `APP_BETA.hi`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


class InputError(ValueError):
    """A user input outside what it allows: `field` names it (a UI field, an API parameter, an `extra_args` key,
    an environment variable), `reason` says what is allowed and what was given."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason

    def renamed(self, field: str) -> InputError:
        """The same reason under another name (`beta` -> `moi_beta`, the extra_args key)."""
        return InputError(field, self.reason)


@dataclass(frozen=True)
class Bound:
    """A number a user sets: [lo, hi] (lo excluded when `lo_open`), an integer when `integer`. `check` accepts
    what the UI, JSON clients and a command line send (int, float, numeric text) and returns an int or float."""

    field: str
    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False

    def with_hi(self, hi: float) -> Bound:
        return replace(self, hi=hi)

    def named(self, field: str) -> Bound:
        return replace(self, field=field)

    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = f"{self.lo:g}", f"{self.hi:g}"
        if math.isinf(self.hi):
            return f"a finite {kind.split()[-1]} {'>' if self.lo_open else '>='} {lo}"
        return f"{kind} in ({lo}, {hi}]" if self.lo_open else f"{kind} from {lo} to {hi}"

    def check(self, value: Any) -> Any:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise InputError(self.field, f"must be {self.allowed()}; got {value!r}")
        ok = math.isfinite(number) and (self.lo < number if self.lo_open else self.lo <= number) and number <= self.hi
        if not ok or (self.integer and not float(number).is_integer()):
            raise InputError(self.field, f"must be {self.allowed()}; got {value!r}")
        return int(number) if self.integer else float(number)


def check_choice(value: Any, field: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise InputError(field, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


# -- MoI ---------------------------------------------------------------------------------------------------
BETA = Bound("beta", 0.0, math.inf)  # the plugin's: any finite beta >= 0 (-100: direct mixture, as the reference)
APP_BETA = Bound("beta", 0.0, 4.0)  # the app's slider and sweep
TOP_K = Bound("top_k", 1, math.inf, integer=True)  # the plugin's: up to the vocabulary size (with_hi at run time)
MAX_TOP_K = 50  # engines started by moi-demo: vLLM's max_logprobs, the top-k log-probs each trace step keeps
APP_TOP_K = TOP_K.with_hi(MAX_TOP_K)
NOISE = Bound("noise", 0.0, math.inf)  # the plugin's: a Gumbel scale >= 0 on the prior's logits (0: none)
APP_NOISE = NOISE.with_hi(2.0)  # the app's slider
GATE_H = Bound("gate_h", 0.0, 1.0)  # the gate's threshold on the normalised entropy H
TAU = Bound("tau", 0.0, 100.0, lo_open=True)  # gumbel mode's temperature (> 0)
SAMPLES = Bound("samples", 1, 64, integer=True)  # multiplex mode's draws per step
APP_TAU, APP_SAMPLES = TAU.with_hi(2.0), SAMPLES.with_hi(16)  # the app's sliders
# -- sampling ----------------------------------------------------------------------------------------------
TEMPERATURE = Bound("temperature", 0.0, 2.0)
TOP_P = Bound("top_p", 0.0, 1.0, lo_open=True)
TOP_P_SLIDER_MIN = 0.01  # a slider cannot leave out its minimum: its first step above 0
MAX_TOKENS = Bound("max_tokens", 1, math.inf, integer=True)  # up to the context left (with_hi at run time)
SEED = Bound("seed", 0, 2**31 - 1, integer=True)  # what a browser's number box holds exactly, and torch's seeds
EVAL_N = Bound("n", 1, 50, integer=True)  # examples in the app's evaluation
MAX_PROMPT_CHARS = 20_000  # refused before tokenization (the context limit in tokens is checked after)


def check_prompt(value: Any) -> str:
    """The prompt as the engine may take it: text, not empty, valid Unicode (no unpaired surrogate: it cannot be
    encoded), at most MAX_PROMPT_CHARS characters."""
    if not isinstance(value, str):
        raise InputError("prompt", f"must be text; got {type(value).__name__}")
    if not value.strip():
        raise InputError("prompt", "must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise InputError("prompt", f"must be at most {MAX_PROMPT_CHARS} characters; got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            "prompt", f"must be valid Unicode text; character {e.start} is an unpaired surrogate ({value[e.start]!a})"
        ) from None
    return value
