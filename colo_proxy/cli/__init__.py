"""The ``colo-proxy`` command line.  Each sub-command lives in its own module."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from .. import __version__
from ..errors import ColoError


class _UsageLine(click.UsageError):
    """A usage error shown as one line (click's own form is usage, hint, blank, error)."""

    def show(self, file: Any = None) -> None:
        path = self.ctx.command_path if self.ctx else "colo-proxy"
        click.echo(f"colo-proxy: error: {self.format_message()} (see '{path} --help')",
                   err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # no arguments at all: the help text is the answer
    return _UsageLine(exc.format_message().rstrip("."), exc.ctx)  # exit code 2


class _Group(click.Group):
    """Turns ColoError and usage errors into one line on stderr and their exit code
    (2 for bad input); Ctrl-C into exit 130."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (_UsageLine, click.exceptions.NoArgsIsHelpError):
            raise
        except click.UsageError as exc:
            raise _one_line(exc) from None
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
    from . import agent, config, demo, diff, kmod, mirror, run, status

    for module in (diff, kmod, status, mirror, run, demo, config, agent):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
