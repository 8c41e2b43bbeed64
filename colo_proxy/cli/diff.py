"""``colo-proxy diff``: explain why two captures would force checkpoints."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .engine_options import config_from_options, engine_options


@click.command()
@click.argument("primary", type=click.Path())
@click.argument("secondary", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/diff.md).")
@click.option("--vm-ip", "vm_ips", multiple=True, metavar="ADDR",
              help="The VM's address: frames from it are its output (repeatable). "
                   "Default: the address in the TCP server role.")
@click.option("--vm-mac", "vm_macs", multiple=True, metavar="MAC",
              help="The VM's MAC: frames from it are its output (repeatable).")
@click.option("--checkpoint-latency", type=click.FloatRange(min=0.0), default=50.0,
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
    through the comparison engine and explain every checkpoint it would request."""
    from rich.console import Console

    from ..diff.analyse import DiffOptions, diff_captures
    from ..diff.render import Renderer

    config = config_from_options(params)
    options = DiffOptions(vm_ips=vm_ips, vm_macs=vm_macs,
                          checkpoint_latency_ms=checkpoint_latency, exact_keys=exact_keys,
                          absolute_time=align == "absolute")
    report = diff_captures(primary, secondary, config, options)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        Renderer(Console(file=sys.stdout)).report(report)


COMMANDS = [diff]
