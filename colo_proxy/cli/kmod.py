"""``colo-proxy install|load|unload|status``: the kernel module's life cycle."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
