"""``colo-proxy diff``: explain why two captures would force checkpoints."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from rich.console import Console

from .engine_options import config_from_options, engine_options
from .types import finite_float

EXIT_MATCH = 0
EXIT_DIVERGED = 1
"""Like diff(1) and cmp(1): 0 the captures match, 1 they diverge, 2 bad input."""


@click.command()
@click.argument("primary", type=click.Path())
@click.argument("secondary", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/diff.md).")
@click.option("--vm-ip", "vm_ips", multiple=True, metavar="ADDR",
              help="The VM's address: frames from it are its output (repeatable). "
                   "Default: the address in the TCP server role.")
@click.option("--vm-mac", "vm_macs", multiple=True, metavar="MAC",
              help="The VM's MAC: frames from it are its output (repeatable).")
@click.option("--checkpoint-latency", type=finite_float(min=0.0), default=50.0,
              show_default=True, metavar="MS",
              help="Modelled time from a checkpoint request to its completion.")
@click.option("--exact-keys", is_flag=True,
              help="Captures of one real COLO pair: do not pair connections by order "
                   "nor shift the secondary's ACK numbers.")
@click.option("--align", type=click.Choice(["start", "absolute"]), default="start",
              show_default=True,
              help="start: time from each capture's first frame; absolute: the captures' "
                   "own timestamps (recorded with one clock).")
@engine_options
def diff(*, primary: str, secondary: str, as_json: bool, vm_ips: tuple[str, ...],
         vm_macs: tuple[str, ...], checkpoint_latency: float, exact_keys: bool,
         align: str, **params: Any) -> None:
    """Replay the VM output of PRIMARY and SECONDARY captures (pcap or pcapng, Ethernet)
    through the comparison engine and explain every checkpoint it would request.

    Exit status, like diff(1): 0 the captures match, 1 they diverge (a checkpoint, a
    divergence, a frame lost or never released), 2 bad input."""
    from ..diff.analyse import DiffOptions, diff_captures
    from ..diff.render import Renderer

    config = config_from_options(params)
    options = DiffOptions(vm_ips=vm_ips, vm_macs=vm_macs,
                          checkpoint_latency_ms=checkpoint_latency, exact_keys=exact_keys,
                          absolute_time=align == "absolute")
    report = diff_captures(primary, secondary, config, options)
    try:
        if as_json:
            click.echo(json.dumps(report.as_dict(), indent=2))
        else:
            Renderer(_console_class()(file=sys.stdout)).report(report)
        sys.stdout.flush()
    except BrokenPipeError:
        _reader_gone()
    raise SystemExit(EXIT_DIVERGED if report.diverged else EXIT_MATCH)


def _reader_gone() -> NoReturn:
    """The reader went away (``| head -1``): it has what it wanted; stop quietly, 0."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
    raise SystemExit(EXIT_MATCH)


def _console_class() -> type[Console]:
    from rich.console import Console

    class QuietConsole(Console):
        def on_broken_pipe(self) -> None:  # rich's default exits with 1
            self.quiet = True
            _reader_gone()

    return QuietConsole


COMMANDS = [diff]
