"""``colo-proxy run --datapath X``: dispatch to one of the datapaths.

Each datapath contributes a module ``colo_proxy.cli.run_<name>`` exporting
``OPTIONS`` (click option decorators, all optional at click level) and
``run(params: dict[str, Any], config: Config) -> None`` which validates its own
options (raising InputError) and runs until stopped.
"""

from __future__ import annotations

from typing import Any

import click

from . import run_nfqueue, run_qemu_socket
from .engine_options import config_from_options, engine_options

_DATAPATHS = {"nfqueue": run_nfqueue, "qemu-socket": run_qemu_socket}


def _apply(options: list[Any], func: Any) -> Any:
    for option in reversed(options):
        func = option(func)
    return func


def _build() -> click.Command:
    def run(datapath: str, **params: Any) -> None:
        """Run a userspace datapath until interrupted."""
        config = config_from_options(params)
        _DATAPATHS[datapath].run(params, config)

    func: Any = run
    func = _apply(run_qemu_socket.OPTIONS, func)
    func = _apply(run_nfqueue.OPTIONS, func)
    func = engine_options(func)
    func = click.option("--datapath", type=click.Choice(sorted(_DATAPATHS)), required=True,
                        help="Where packets come from.")(func)
    return click.command(name="run")(func)


COMMANDS = [_build()]
