"""Options every ``colo-proxy run <datapath>`` command shares: the seam's
(checkpoint command, events, stats) on top of the engine's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..errors import InputError
from .engine_options import engine_options
from .types import finite_float


def checkpoint_options(policies: list[str], default_help: str) -> list[Callable[[Any], Any]]:
    return [
        click.option("--checkpoint", "checkpoint_policy", type=click.Choice(policies),
                     default=None, help=f"Checkpoint policy. {default_help}"),
        click.option("--checkpoint-cmd", metavar="CMD",
                     help="Shell command per checkpoint request (env COLO_REASON, "
                          "COLO_CONNECTION, COLO_DETAIL); exit status 0: the checkpoint "
                          "is done. Implies --checkpoint cmd unless another policy is chosen."),
    ]


def checkpoint_from_params(params: dict[str, Any]) -> tuple[str, str | None]:
    """``--checkpoint`` and ``--checkpoint-cmd`` of a flush|cmd datapath: (policy, cmd);
    InputError if they do not fit together."""
    cmd = params.get("checkpoint_cmd") or None
    policy = params.get("checkpoint_policy") or ("cmd" if cmd else "flush")
    if policy == "cmd" and not cmd:
        raise InputError("--checkpoint cmd needs --checkpoint-cmd CMD")
    if policy == "flush" and cmd:
        raise InputError("--checkpoint-cmd is only used with --checkpoint cmd")
    return policy, cmd


def interfaces_from_params(params: dict[str, Any], command: str) -> tuple[str, str]:
    """``--pvm-if`` and ``--fwd-if`` of a host datapath: both given, and different."""
    missing = [f"--{n.replace('_', '-')}" for n in ("pvm_if", "fwd_if") if not params.get(n)]
    if missing:
        raise InputError(f"{command} needs {', '.join(missing)}")
    if params["pvm_if"] == params["fwd_if"]:
        raise InputError(f"--pvm-if and --fwd-if must differ (both {params['pvm_if']!r})")
    return params["pvm_if"], params["fwd_if"]


SEAM_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--events", metavar="FILE|-",
                 help="Write the JSON-lines event stream here (docs/datapaths.md)."),
    click.option("--stats-interval", type=finite_float(min=0.01), default=0.5,
                 show_default=True, help="Seconds between stats events."),
]


def apply(options: list[Callable[[Any], Any]], func: Any) -> Any:
    for option in reversed(options):
        func = option(func)
    return func


def run_command(name: str, options: list[Callable[[Any], Any]],
                body: Callable[[dict[str, Any], Any], None], doc: str) -> click.Command:
    """A ``run NAME`` sub-command: its own options, then the seam's and the engine's."""
    from .engine_options import config_from_options

    def command(**params: Any) -> None:
        config = config_from_options(params)
        body(params, config)

    command.__doc__ = doc
    func: Any = apply(options + SEAM_OPTIONS, command)
    func = engine_options(func)
    return click.command(name=name)(func)
