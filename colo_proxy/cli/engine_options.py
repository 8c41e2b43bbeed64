"""Click options shared by every command that runs the comparison engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..compare.model import Config
from ..compare.passthrough import parse_rule
from ..errors import InputError
from .types import finite_float

F = TypeVar("F", bound=Callable[..., Any])

ENGINE_OPTIONS: list[Callable[[F], F]] = [
    click.option("--compare-timeout", type=finite_float(min=1.0), default=3000.0,
                 show_default=True, help="ms a frame may stay unmatched before a checkpoint."),
    click.option("--max-queue", type=click.IntRange(min=1), default=1024, show_default=True,
                 help="Frames held per connection and side before a checkpoint."),
    click.option("--max-held-bytes", type=click.IntRange(min=1), default=64 * 1024 * 1024,
                 show_default=True, help="Bytes held in total before a checkpoint."),
    click.option("--max-connections", type=click.IntRange(min=1), default=65536,
                 show_default=True, help="Busy connections before a checkpoint."),
    click.option("--passthrough", "passthrough", multiple=True, metavar="RULE",
                 help="Release flows uncompared, e.g. proto=tcp,port=22 or net=10.0.0.0/8."),
]


def engine_options(func: F) -> F:
    """Decorate a click command with ENGINE_OPTIONS."""
    for option in reversed(ENGINE_OPTIONS):
        func = option(func)
    return func


def config_from_options(params: dict[str, Any]) -> Config:
    """Build an engine Config from the values of ENGINE_OPTIONS (pops them from params)."""
    rules = []
    for text in params.pop("passthrough", ()):
        try:
            rules.append(parse_rule(text))
        except ValueError as exc:
            raise InputError(f"--passthrough {text!r}: {exc}") from None
    return Config(
        compare_timeout_ms=float(params.pop("compare_timeout", 3000.0)),
        max_queue_per_conn=int(params.pop("max_queue", 1024)),
        max_held_bytes=int(params.pop("max_held_bytes", 64 * 1024 * 1024)),
        max_connections=int(params.pop("max_connections", 65536)),
        passthrough=tuple(rules),
    )
