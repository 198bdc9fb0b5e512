"""The page's input components, whose own checks name the field and what it allows (as `InputError` does), and
the one way an `InputError` reaches the page: `gr.Error("field: reason", title="Invalid input")`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from moi_demo.core.inputs import Bound, InputError


def page_error(error: InputError) -> gr.Error:
    return gr.Error(str(error), title="Invalid input")


class _NamedErrors:
    """Gradio checks slider ranges and radio choices before a callback runs (also for API calls); these
    subclasses make those errors name the field and what it allows."""

    field: str | None = None  # set by `named`; Gradio also re-creates components from updates: then the label
    moved: Callable[[Any], InputError | None] | None = None  # set by `named`: a value another input used to take here

    def _gradio_class(self) -> type:
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio.components."))

    def get_block_name(self) -> str:  # the frontend renders the Gradio component this one extends
        return self._gradio_class().__name__.lower()

    def get_block_class(self) -> str:
        return self._gradio_class().__name__

    def allowed(self) -> str:
        raise NotImplementedError

    def preprocess(self, payload: Any) -> Any:
        if self.moved is not None and (error := self.moved(payload)) is not None:
            raise page_error(error)
        try:
            return super().preprocess(payload)
        except (gr.Error, TypeError, ValueError):
            raise page_error(
                InputError(self.field or str(self.label), f"must be {self.allowed()}; got {payload!r}")
            ) from None


def named(component: Any, field: str, moved: Callable[[Any], InputError | None] | None = None) -> Any:
    """`component`'s errors name `field`; `moved(value)` tells a caller of an older API that sent `value` here what
    changed (an InputError), before the component's own check."""
    component.field, component.moved = field, moved
    return component


class FieldSlider(_NamedErrors, gr.Slider):
    def allowed(self) -> str:
        return f"from {self.minimum:g} to {self.maximum:g}"


class FieldRadio(_NamedErrors, gr.Radio):
    def allowed(self) -> str:
        return "one of " + ", ".join(str(c[1]) for c in self.choices)


class FieldNumber(_NamedErrors, gr.Number):
    def allowed(self) -> str:
        kind = "an integer" if self.precision == 0 else "a number"
        return (
            kind
            + (f" from {self.minimum:g}" if self.minimum is not None else "")
            + (f" to {self.maximum:g}" if self.maximum is not None else "")
        )

    def preprocess(self, payload: Any) -> Any:
        if self.precision == 0 and isinstance(payload, float) and not payload.is_integer():  # no silent rounding
            raise page_error(InputError(self.field or str(self.label), f"must be {self.allowed()}; got {payload!r}"))
        return super().preprocess(payload)


def slider(
    bound: Bound,
    value: float,
    label: str,
    step: float,
    field: str | None = None,
    lo: float | None = None,
    **kwargs: Any,
) -> FieldSlider:
    """A slider over `bound`'s range (`lo` where the bound's own minimum is left out, e.g. top-p's 0)."""
    minimum = bound.lo if lo is None else lo
    return named(FieldSlider(minimum, bound.hi, value=value, step=step, label=label, **kwargs), field or bound.field)


def number(bound: Bound, value: int, label: str, field: str | None = None, **kwargs: Any) -> FieldNumber:
    return named(
        FieldNumber(
            value=value,
            precision=0 if bound.integer else None,
            minimum=bound.lo,
            maximum=bound.hi,
            label=label,
            **kwargs,
        ),
        field or bound.field,
    )
