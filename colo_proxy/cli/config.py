"""``colo-proxy config check FILE``: validate an agent config file."""

from __future__ import annotations

import sys

import click

from ..agent.config import ConfigErrors, endpoint_warnings, load


@click.group(name="config")
def config() -> None:
    """Agent configuration files (docs/operations.md)."""


@config.command(name="check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--no-files", is_flag=True,
              help="Do not open the files the config names (key files).")
def check(file: str, no_files: bool) -> None:
    """Check FILE; one line per problem (file: key: reason), exit 2 if any."""
    try:
        cfg = load(file, check_files=not no_files)
    except ConfigErrors as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)
    for warning in (*cfg.warnings, *endpoint_warnings(cfg)):
        click.echo(f"warning: {warning}", err=True)
    roles = ", ".join(f"{vm.name} ({vm.role})" for vm in cfg.vms)
    click.echo(f"{file}: ok: {len(cfg.vms)} VM(s): {roles}")


COMMANDS: list[click.Command] = [config]
