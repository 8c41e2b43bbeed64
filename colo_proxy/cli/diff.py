"""``colo-proxy diff``: explain why two captures would force checkpoints."""

from __future__ import annotations

import click

from ..errors import ColoError


@click.command()
@click.argument("primary", type=click.Path())
@click.argument("secondary", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def diff(primary: str, secondary: str, as_json: bool) -> None:
    """Run the comparison engine over PRIMARY and SECONDARY captures."""
    raise ColoError("diff: not implemented yet")


COMMANDS = [diff]
