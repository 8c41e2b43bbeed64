"""Click parameter types shared by the commands."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # generic in click's stubs, not at run time in every click version
    _FloatType = click.ParamType[float, Any]
else:
    _FloatType = click.ParamType


class _FiniteFloat(_FloatType):
    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        self.min = min
        self.max = max

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and number < self.min:
            self.fail(f"{value!r} is below the minimum {self.min:g}", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"{value!r} is above the maximum {self.max:g}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"finite_float(min={self.min!r}, max={self.max!r})"


def finite_float(min: float | None = None, max: float | None = None) -> _FloatType:
    """A float option that rejects NaN and infinity (and values outside [min, max])."""
    return _FiniteFloat(min, max)
