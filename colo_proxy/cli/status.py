"""``colo-proxy status``: nodes and counters from the kernel module."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
