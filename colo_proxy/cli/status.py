"""``colo-proxy status``: nodes and counters from the kernel module."""

from __future__ import annotations

import json
import os

import click

from ..errors import ColoError
from ..nl.model import STATS_FIELDS, Node

_COLUMNS = ("index", "mode", "state", "owner", *STATS_FIELDS)


def _rows(nodes: list[Node]) -> list[list[str]]:
    return [
        [str(n.index), str(n.mode), str(n.state), str(n.owner),
         *(str(n.stats.get(f, 0)) for f in STATS_FIELDS)]
        for n in nodes
    ]


def render_table(nodes: list[Node]) -> str:
    """Plain-text table, one node per line (``no nodes`` when empty)."""
    if not nodes:
        return "no nodes in this network namespace"
    rows = [list(_COLUMNS), *_rows(nodes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def module_missing_advice() -> str:
    """What to do when the "colo" family is missing, for this kernel."""
    from ..kmod.system import has_module_support

    kver = os.uname().release
    if has_module_support():
        return ("module nf_colo is not loaded: run `colo-proxy load` "
                "(after `colo-proxy install`)")
    return (f"module nf_colo is not loaded, and kernel {kver} cannot load modules (no "
            "/proc/modules): run it in a guest kernel, as docs/development.md shows: make kmod "
            "&& GUEST_CMD='.venv/bin/colo-proxy load --ko $COLO_KO && .venv/bin/colo-proxy "
            "status' scripts/guest-test.sh build 6.1")


@click.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--netns", metavar="NAME", default=None,
              help="Query the namespace /run/netns/NAME instead of the current one.")
@click.option("--agent", "agent_file", metavar="FILE", default=None,
              help="Show the agent's figures from its status_file instead (docs/operations.md).")
def status(as_json: bool, netns: str | None, agent_file: str | None) -> None:
    """Show the kernel module's nodes and their counters (current netns)."""
    if agent_file is not None:
        from ..agent.status import show

        click.echo(show(agent_file, as_json))
        return
    from ..nl import ColoClient
    from ..nl.errors import FamilyMissingError

    try:
        with ColoClient(netns=netns) as client:
            nodes = sorted(client.dump(), key=lambda n: n.index)
    except FamilyMissingError:
        raise ColoError(module_missing_advice()) from None
    if as_json:
        click.echo(json.dumps({"nodes": [n.as_dict() for n in nodes]}, indent=2))
    else:
        click.echo(render_table(nodes))


COMMANDS: list[click.Command] = [status]
