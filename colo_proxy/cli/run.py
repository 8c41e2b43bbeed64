"""``colo-proxy run``: the userspace datapaths."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
