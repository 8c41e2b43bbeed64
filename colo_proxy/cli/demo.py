"""``colo-proxy demo``: the README's main job."""

from __future__ import annotations

import click

from ..errors import ColoError


@click.command()
def demo() -> None:
    """Run the namespace demo (not yet available)."""
    raise ColoError("demo: not yet available (issue: userspace datapaths and demo)")


COMMANDS = [demo]
