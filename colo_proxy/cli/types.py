"""Click parameter types shared by the commands.

``FINITE_FLOAT`` / ``finite_float(min=.., max=..)``: a float option that rejects
NaN and infinity (``click.FLOAT`` and ``click.FloatRange`` accept ``nan``,
``inf`` and ``-inf``: ``nan`` passes every range check because every comparison
with it is false).  Bad input is click's usual one-line usage error, exit 2.
"""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloat(click.FloatRange):
    """A ``click.FloatRange`` that also rejects NaN and +-infinity."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


FINITE_FLOAT = FiniteFloat()
"""Any finite float."""


def finite_float(min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False) -> FiniteFloat:
    """A finite float within [min, max] (``*_open``: exclusive bound)."""
    return FiniteFloat(min=min, max=max, min_open=min_open, max_open=max_open)
