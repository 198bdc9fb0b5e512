"""What the page's runs ask for, by name. Each run endpoint's inputs are the fields of one dataclass, in its order:
layout.py lists the page's components by these names, the API's parameters carry them (gradio_client takes them as
keywords), and the callbacks receive one checked-later value of the dataclass (`endpoint`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import gradio as gr

from moi_demo.core import inputs
from moi_demo.core.config import DEFAULT_GATE_H, DEFAULT_SAMPLES, DEFAULT_TAU, ENTROPIES, GATES, PRIORS, MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import MODE_CHOICES, SamplingSettings

COLOR_BY_VALUES = ("p", "entropy")  # what the removed color_by input took (an old-arity call shifts it into entropy)


def color_by_moved(entropy: Any) -> InputError | None:
    """The error for a call of /generate or /live with the old arity: it sent color_by ("p" or "entropy") 9th,
    where `entropy` now stands. None for any other value."""
    if entropy not in COLOR_BY_VALUES:
        return None
    return InputError(
        "color_by",
        "this endpoint no longer takes color_by (it was the 9th input; the page colours its own figures). "
        f"Send {', '.join(f.name for f in fields(RunRequest))}: see docs/app.md",
    )


@dataclass(frozen=True)
class RunRequest:
    """A Generate or live run (/generate, /live), as sent: checked by `parse`."""

    prompt: Any
    mode: Any
    beta: Any
    top_k: Any
    temperature: Any
    top_p: Any
    max_tokens: Any
    seed: Any
    entropy: Any = "top_k"
    prior: Any = "raw"
    noise: Any = 0.0
    gate: Any = "none"
    gate_h: Any = DEFAULT_GATE_H
    tau: Any = DEFAULT_TAU
    samples: Any = DEFAULT_SAMPLES

    def parse(self, max_new_tokens: int) -> tuple[str, MoIConfig, SamplingSettings]:
        """(prompt, MoI lane's config, sampling settings), each field checked against the bounds of `core.inputs`
        (an InputError names the field)."""
        if (error := color_by_moved(self.entropy)) is not None:
            raise error
        moi, settings = run_settings(self, self.mode, self.beta, self.top_k, max_new_tokens)
        return inputs.check_prompt(self.prompt), moi, settings


@dataclass(frozen=True)
class SweepRequest:
    """A beta sweep (/sweep): `betas` as text, e.g. "0, 0.5, 1, direct"."""

    prompt: Any
    betas: Any
    top_k: Any
    temperature: Any
    top_p: Any
    max_tokens: Any
    seed: Any
    entropy: Any = "top_k"
    prior: Any = "raw"
    noise: Any = 0.0
    gate: Any = "none"
    gate_h: Any = DEFAULT_GATE_H
    tau: Any = DEFAULT_TAU
    samples: Any = DEFAULT_SAMPLES


@dataclass(frozen=True)
class EvalRequest:
    """A small evaluation (/evaluate) of `modes` on `task`, n examples."""

    task: Any
    n: Any
    modes: Any
    beta: Any
    temperature: Any
    top_p: Any
    max_tokens: Any
    seed: Any
    entropy: Any = "top_k"
    prior: Any = "raw"
    noise: Any = 0.0
    gate: Any = "none"
    gate_h: Any = DEFAULT_GATE_H
    tau: Any = DEFAULT_TAU
    samples: Any = DEFAULT_SAMPLES
    draws: Any = 1  # samples per example, each its own seed: pass@k beside pass@1


def switch_settings(req: RunRequest | SweepRequest | EvalRequest) -> dict[str, Any]:
    """`req`'s switches, gate and rival settings as `MoIConfig.with_switches` takes them, each checked against the
    app's bounds (an InputError names the field)."""
    return {
        "entropy": inputs.check_choice(req.entropy, "entropy", ENTROPIES),
        "prior": inputs.check_choice(req.prior, "prior", PRIORS),
        "noise": inputs.APP_NOISE.check(req.noise),
        "gate": inputs.check_choice(req.gate, "gate", GATES),
        "gate_h": inputs.GATE_H.check(req.gate_h),
        "tau": inputs.APP_TAU.check(req.tau),
        "samples": inputs.APP_SAMPLES.check(req.samples),
    }


def run_settings(
    req: RunRequest | SweepRequest | EvalRequest, mode: Any, beta: Any, top_k: Any, max_new_tokens: int
) -> tuple[MoIConfig, SamplingSettings]:
    """The MoI config of (mode, beta, top_k) with `req`'s switch settings, and `req`'s sampling settings, checked."""
    mode = inputs.check_choice(mode, "mode", list(MODE_CHOICES))
    settings = SamplingSettings(
        temperature=inputs.TEMPERATURE.check(req.temperature),
        top_p=inputs.TOP_P.check(req.top_p),
        max_tokens=inputs.MAX_TOKENS.named("max_new_tokens").with_hi(max_new_tokens).check(req.max_tokens),
        seed=inputs.SEED.check(req.seed),
    )
    moi = MoIConfig(MODE_CHOICES[mode], inputs.APP_BETA.check(beta), inputs.APP_TOP_K.check(top_k))
    return moi.with_switches(**switch_settings(req)), settings


def named_inputs(request_type: type, controls: dict[str, Any]) -> list[Any]:
    """The page's components for `request_type`'s fields, in its order (a field without a control raises KeyError)."""
    return [controls[f.name] for f in fields(request_type)]


def endpoint(request_type: type, state: Sequence[tuple[str, Any]] = (), progress: bool = False) -> Callable:
    """Make `method(self, req, *state, request=..., [progress=...])` the callback Gradio calls with the page's inputs
    in the order of `request_type`'s fields, then the `state` inputs (name, default), then what Gradio injects (its
    Request, and a progress tracker when `progress`). Its signature names those parameters: the API's parameters
    are the fields, by name, and keywords reach them. A generator method stays a generator (Gradio streams it)."""
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD)]
    for f in fields(request_type):
        default = f.default if f.default is not MISSING else P.empty
        params.append(P(f.name, P.POSITIONAL_OR_KEYWORD, default=default))
    params += [P(name, P.POSITIONAL_OR_KEYWORD, default=default) for name, default in state]
    params.append(P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request))
    if progress:
        params.append(P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    signature = inspect.Signature(params)
    names = [f.name for f in fields(request_type)]

    def decorate(method: Callable) -> Callable:
        def split(args: tuple, kwargs: dict) -> tuple[Any, list[Any], dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            given = bound.arguments
            extra = {"request": given["request"], **({"progress": given["progress"]} if progress else {})}
            return given["self"], [request_type(**{n: given[n] for n in names}), *(given[n] for n, _ in state)], extra

        if inspect.isgeneratorfunction(method):

            def api(*args: Any, **kwargs: Any) -> Any:
                self, positional, extra = split(args, kwargs)
                yield from method(self, *positional, **extra)
        else:

            def api(*args: Any, **kwargs: Any) -> Any:
                self, positional, extra = split(args, kwargs)
                return method(self, *positional, **extra)

        api.__signature__ = signature
        api.__annotations__ = {"request": gr.Request}
        api.__name__, api.__qualname__, api.__doc__ = method.__name__, method.__qualname__, method.__doc__
        api.request_type = request_type
        return api

    return decorate
