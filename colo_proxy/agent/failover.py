"""Failover: what the surviving side does over QMP (docs/operations.md, "Failover").

* **Secondary survives** (the primary host or its QEMU is gone):
  ``x-colo-lost-heartbeat`` (replication stops, the SVM becomes the service VM),
  then ``object-del`` of each of its filter-redirectors, or the guest's output
  still goes to the dead primary's socket.
* **Primary survives** (the secondary is gone): ``x-colo-lost-heartbeat`` (the
  PVM leaves COLO and runs alone); comparison stops and everything held is
  released (the gate enters solo: the controller does that on COLO_EXIT and
  here, whichever comes first).

Each step is logged; a failing step is logged and the next one still runs (an
``object-del`` of an id that is already gone is not an error).  ``COLO_EXIT``
after the command is the confirmation.

**Split-brain rule** (both hosts alive, heartbeat link cut), implemented in
:func:`peer_is_dead`:

* a peer that *says* its QEMU is gone (an authenticated heartbeat with
  ``healthy=False``) is dead at once;
* a peer that went silent (``misses`` intervals without a valid heartbeat) is
  dead only if the optional ``witness`` (a TCP address on the peer host reached
  over another path, e.g. its management interface) does not accept a
  connection either;
* without a witness, silence alone is enough.  ``config check`` warns about a
  secondary without a witness: a cut heartbeat link then makes both sides run
  the VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from .config import HostPort
from .qmp import Monitor, QmpCommandFailed, QmpError

log = logging.getLogger("colo_proxy.agent.failover")


@dataclass
class FailoverResult:
    steps: list[tuple[str, str]] = field(default_factory=list)
    """(command, "ok" or the error)."""

    @property
    def ok(self) -> bool:
        return all(r == "ok" or "not found" in r.lower() for _c, r in self.steps)


async def _step(monitor: Monitor, result: FailoverResult, cmd: str,
                args: dict[str, Any] | None = None) -> None:
    what = cmd if not args else f"{cmd} {args}"
    try:
        await monitor.execute(cmd, args)
    except QmpCommandFailed as exc:
        result.steps.append((what, str(exc)))
        log.warning("failover: %s failed: %s", what, exc)
        return
    except QmpError as exc:
        result.steps.append((what, str(exc)))
        log.error("failover: %s: %s", what, exc)
        return
    result.steps.append((what, "ok"))
    log.info("failover: %s: ok", what)


Commands = tuple[tuple[str, dict[str, Any]], ...]


async def secondary_takeover(monitor: Monitor, redirectors: tuple[str, ...],
                             before: Commands = ()) -> FailoverResult:
    """The secondary becomes the service VM (``before``: configured commands first)."""
    result = FailoverResult()
    log.warning("failover: secondary takes over (x-colo-lost-heartbeat, then object-del %s)",
                ", ".join(redirectors) or "(no redirectors configured)")
    for cmd, args in before:
        await _step(monitor, result, cmd, args or None)
    await _step(monitor, result, "x-colo-lost-heartbeat")
    for obj in redirectors:
        await _step(monitor, result, "object-del", {"id": obj})
    return result


async def primary_continues(monitor: Monitor, before: Commands = ()) -> FailoverResult:
    """The primary leaves COLO and runs alone (the caller releases held output)."""
    result = FailoverResult()
    log.warning("failover: primary continues alone (x-colo-lost-heartbeat)")
    for cmd, args in before:
        await _step(monitor, result, cmd, args or None)
    await _step(monitor, result, "x-colo-lost-heartbeat")
    return result


async def reachable(address: HostPort, timeout_s: float = 1.0) -> bool:
    """Does ``address`` accept a TCP connection within ``timeout_s``?"""
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def peer_is_dead(*, said_unhealthy: bool, silent: bool, witness: HostPort | None,
                       timeout_s: float = 1.0) -> tuple[bool, str]:
    """The split-brain rule above; returns (dead, why) for the log line."""
    if said_unhealthy:
        return True, "the peer reports its QEMU gone"
    if not silent:
        return False, "heartbeats arrive"
    if witness is None:
        return True, "heartbeats missed (no witness configured)"
    if await reachable(witness, timeout_s):
        return False, (f"heartbeats missed but witness {witness} answers: not failing over "
                       "(split-brain guard)")
    return True, f"heartbeats missed and witness {witness} unreachable"
