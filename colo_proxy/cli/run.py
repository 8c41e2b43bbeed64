"""``colo-proxy run <datapath>``: one sub-command per datapath.

Each datapath contributes a module ``colo_proxy.cli.run_<name>`` exporting
``COMMAND`` (built with ``run_options.run_command``: its own options, then the
seam's and the engine's), so one datapath's options are never accepted by
another.
"""

from __future__ import annotations

import click

from . import run_kernel, run_nfqueue, run_qemu_socket


@click.group(name="run")
def run() -> None:
    """Run a datapath until SIGTERM/SIGINT."""


run.add_command(run_nfqueue.COMMAND)
run.add_command(run_qemu_socket.COMMAND)
run.add_command(run_kernel.COMMAND)

COMMANDS = [run]
