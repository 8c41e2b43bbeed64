"""``colo-proxy status``: nodes and counters from the kernel module."""

from __future__ import annotations

import json

import click

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

    with ColoClient(netns=netns) as client:
        nodes = sorted(client.dump(), key=lambda n: n.index)
    if as_json:
        click.echo(json.dumps({"nodes": [n.as_dict() for n in nodes]}, indent=2))
    else:
        click.echo(render_table(nodes))


COMMANDS: list[click.Command] = [status]
