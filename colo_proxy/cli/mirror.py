"""``colo-proxy mirror apply|remove|status``: inbound mirroring on the primary host (every
frame sent to the PVM's tap also goes out the forward link; colo_proxy/rules/mirror.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

_TAP = click.option("--tap", required=True, metavar="IF", help="The PVM's tap device.")
_NETNS = click.option("--netns", metavar="NS",
                      help="Network namespace (under /run/netns) holding both devices.")


def _fwd(required: bool) -> Callable[[Any], Any]:
    return click.option("--fwd", required=required, metavar="IF",
                        help="The forward link to the secondary host."
                        + ("" if required else "  Optional: every mirror filter of "
                           "colo-proxy on the tap is removed, whatever its target."))


@click.group(name="mirror")
def mirror() -> None:
    """Inbound mirroring: tc clsact + matchall (or u32) + mirred on the tap's egress."""


@mirror.command()
@_TAP
@_fwd(True)
@_NETNS
def apply(tap: str, fwd: str, netns: str | None) -> None:
    """Mirror every frame sent out TAP to FWD (idempotent)."""
    from ..rules import mirror as rules

    done = rules.apply(tap, fwd, netns)
    click.echo(done.status.detail + ("" if done.changed else " (already in place)"))


@mirror.command()
@_TAP
@_fwd(False)
@_NETNS
def remove(tap: str, fwd: str | None, netns: str | None) -> None:
    """Remove colo-proxy's mirror from TAP (idempotent; nothing else is touched)."""
    from ..rules import mirror as rules

    done = rules.remove(tap, fwd, netns)
    where = tap + (f" in netns {netns}" if netns else "")
    if done.filters == 0 and not done.clsact_removed:
        click.echo(f"no colo-proxy mirror on {where}")
    else:
        click.echo(f"removed the colo-proxy mirror from {where}"
                   + (", and the clsact qdisc it had created" if done.clsact_removed else ""))


@mirror.command()
@_TAP
@_fwd(True)
@_NETNS
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of one line.")
def status(tap: str, fwd: str, netns: str | None, as_json: bool) -> None:
    """Exit 0 if the mirror is in place and unchanged, 1 (with the drift) otherwise."""
    from ..rules import mirror as rules

    found = rules.status(tap, fwd, netns)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
    else:
        click.echo(f"{found.state.value}: {found.detail}")
    sys.exit(0 if found.ok else 1)


COMMANDS: list[click.Command] = [mirror]
