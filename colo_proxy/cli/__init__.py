"""The ``colo-proxy`` command line.  Each sub-command lives in its own module."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from .. import __version__
from ..errors import ColoError


class _Group(click.Group):
    """Turns ColoError into one line on stderr and its exit code; Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ColoError as exc:
            click.echo(f"colo-proxy: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            # A second Ctrl-C while exiting must not turn into a traceback or death by signal.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            click.echo("colo-proxy: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="colo-proxy")
def main() -> None:
    """Network side of COLO VM replication."""


def _register() -> None:
    from . import agent, config, demo, diff, kmod, run, status

    for module in (diff, kmod, status, run, demo, config, agent):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
