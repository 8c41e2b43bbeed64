"""One QMP monitor of one QEMU, for the agent (qemu.qmp, asyncio).

The agent uses a monitor of its own (``-chardev socket,id=qmp-agent,path=...,
server=on,wait=off -mon chardev=qmp-agent,mode=control``) so that the operator's
monitor stays free.  :class:`Monitor` adds what the agent needs on top of
``qemu.qmp.QMPClient``:

* ``connect()`` with a timeout and one clear error per cause (socket missing,
  refused, no greeting);
* ``execute()`` with a timeout (a busy primary was measured answering after
  826 ms; the default timeout is 3 s): a late answer is dropped by qemu.qmp, the
  command itself may still have run in QEMU, so callers never infer "not done"
  from a timeout alone;
* every event handed to ``on_event(name, data)`` with the local monotonic time;
* ``on_closed(reason)`` called once when the connection ends (QEMU exited or was
  killed, socket closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("colo_proxy.agent.qmp")

EventHandler = Callable[[str, dict[str, Any], float], None]


class QmpError(Exception):
    """A QMP problem with an operator-facing message."""


class QmpUnavailable(QmpError):
    """Not connected: socket missing, refused, closed."""


class QmpTimeout(QmpError):
    """No answer in time (the command may still run in QEMU)."""


class QmpCommandFailed(QmpError):
    """QEMU answered with an error."""


def socket_exposure(path: str) -> str | None:
    """Why users other than a unix socket's owner (and root) may reach it, else None.

    Connecting needs write permission on the socket and search permission on its
    directory, so a group- or world-writable socket is reachable by that class only
    if its directory lets it in (only the parent directory is looked at: the one
    docs/operations.md tells to restrict).  A directory that its group or others may
    write to (and search), without the sticky bit, lets them replace the socket by one
    of their own, which the agent would then take for QEMU's monitor.
    """
    try:
        sock = os.stat(path)
        parent = os.path.dirname(os.path.abspath(path))
        dir_ = os.stat(parent)
    except OSError:
        return None
    mode, dmode = sock.st_mode, dir_.st_mode
    shown = f"mode {stat.S_IMODE(mode):04o}, directory {stat.S_IMODE(dmode):04o}"
    why: list[str] = []
    # Who gets which permission class: a member of the socket's group gets the socket's
    # group bits, and the directory's group bits only if it is the same group.
    dir_group_enters = bool(dmode & stat.S_IXGRP)
    if mode & stat.S_IWOTH and dmode & stat.S_IXOTH:
        why.append(f"writable by every local user ({shown})")
    elif mode & stat.S_IWGRP and (dmode & stat.S_IXOTH or (
            dir_group_enters and dir_.st_gid == sock.st_gid)):
        why.append(f"writable by the members of group {_group(sock.st_gid)} ({shown})")
    elif mode & stat.S_IWOTH and dir_group_enters and dir_.st_gid != sock.st_gid:
        why.append(f"writable by the members of group {_group(dir_.st_gid)}, which may "
                   f"enter its directory ({shown})")
    open_to = [who for who, bits in (("group", stat.S_IWGRP | stat.S_IXGRP),
                                     ("others", stat.S_IWOTH | stat.S_IXOTH))
               if dmode & bits == bits]
    if open_to and not dmode & stat.S_ISVTX:
        why.append(f"its directory {parent} (mode {stat.S_IMODE(dmode):04o}, no sticky "
                   f"bit) lets its {' and '.join(open_to)} replace the socket")
    return "; ".join(why) or None


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class Monitor:
    def __init__(self, path: str, name: str = "qmp", *, connect_timeout_s: float = 5.0,
                 command_timeout_s: float = 3.0) -> None:
        self.path = path
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.on_event: EventHandler | None = None
        self.on_closed: Callable[[str], None] | None = None
        self._client: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False
        self._mode_warned = False

    async def connect(self) -> None:
        """Connect once; raises QmpUnavailable with the cause."""
        from qemu.qmp import QMPClient
        from qemu.qmp.protocol import ConnectError

        if not os.path.exists(self.path):
            raise QmpUnavailable(f"{self.name}: QMP socket {self.path} does not exist "
                                 "(QEMU not running, or no -mon for the agent)")
        self._check_mode()
        client = QMPClient(self.name)
        try:
            await asyncio.wait_for(client.connect(self.path), self.connect_timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise QmpUnavailable(f"{self.name}: no QMP greeting on {self.path} within "
                                 f"{self.connect_timeout_s:g} s (monitor busy or in use)"
                                 ) from None
        except (ConnectError, OSError) as exc:
            with contextlib.suppress(Exception):
                await client.disconnect()
            cause = getattr(exc, "exc", exc)
            raise QmpUnavailable(f"{self.name}: cannot connect to {self.path}: {cause}"
                                 ) from None
        self._client = client
        self.connected = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._events(client)),
                       loop.create_task(self._watch(client))]

    def _check_mode(self) -> None:
        """Warn once, in one line, if local users other than the socket's owner may
        reach the monitor: whoever can connect is as powerful as the agent."""
        if self._mode_warned:
            return
        why = socket_exposure(self.path)
        if why is not None:
            self._mode_warned = True
            log.warning("%s: QMP socket %s: %s: whoever connects controls the VM; keep it "
                        "in a directory only QEMU's and the agent's users may enter and "
                        "write (install -d -m 0700 /run/colo), or start QEMU with umask 077 "
                        "(docs/operations.md)", self.name, self.path, why)

    async def _events(self, client: Any) -> None:
        async for event in client.events:
            handler = self.on_event
            if handler is not None:
                handler(str(event["event"]), dict(event.get("data") or {}), time.monotonic())

    async def _watch(self, client: Any) -> None:
        from qemu.qmp.protocol import Runstate

        while client.runstate == Runstate.RUNNING:
            await client.runstate_changed()
        self._lost("connection closed (QEMU exited or the socket was closed)")

    def _lost(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        log.warning("%s: QMP %s", self.name, reason)
        if self.on_closed is not None:
            self.on_closed(reason)

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout_s: float | None = None) -> Any:
        from qemu.qmp import ExecuteError
        from qemu.qmp.protocol import StateError

        client = self._client
        if client is None or not self.connected:
            raise QmpUnavailable(f"{self.name}: not connected")
        wait = self.command_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(client.execute(cmd, args), wait)
        except TimeoutError:
            raise QmpTimeout(f"{self.name}: {cmd}: no answer within {wait:g} s") from None
        except ExecuteError as exc:
            raise QmpCommandFailed(f"{self.name}: {cmd}: {exc}") from None
        except (StateError, EOFError, OSError, ConnectionError) as exc:
            self._lost(f"lost during {cmd}: {type(exc).__name__}")
            raise QmpUnavailable(f"{self.name}: {cmd}: connection lost") from None
        except Exception as exc:  # qemu.qmp raises its own types on a broken session
            if type(exc).__module__.startswith("qemu.qmp"):
                self._lost(f"lost during {cmd}: {exc}")
                raise QmpUnavailable(f"{self.name}: {cmd}: {exc}") from None
            raise

    async def close(self) -> None:
        self.connected = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.disconnect()
            self._client = None


class QmpLink:
    """Keeps one :class:`Monitor` connected for an agent, and says how healthy it is.

    ``run()`` connects, runs ``session()`` while the connection lasts, and on a loss
    cancels it, closes the monitor and reconnects every ``retry_s``; each outage is
    logged once.  ``healthy`` is what the heartbeat tells the peer:

    * ``None`` (unknown) until the first connection, for at most ``grace_s`` after
      ``run()`` started: an agent that starts before its QEMU, or a QEMU that comes
      up a second after its agent, must not look like a dead QEMU to the peer (the
      peer fails over on an authenticated "unhealthy");
    * then ``True`` while connected and ``False`` while not.
    """

    def __init__(self, monitor: Monitor, name: str,
                 session: Callable[[], Coroutine[Any, Any, None]], *,
                 retry_s: float = 1.0, grace_s: float = 10.0) -> None:
        self.monitor = monitor
        self.name = name
        self.session = session
        self.retry_s = retry_s
        self.grace_s = grace_s
        self.ever_connected = False
        self._started: float | None = None
        self._closed = asyncio.Event()
        self._stopping = False
        monitor_closed = monitor.on_closed

        def closed(reason: str) -> None:
            if monitor_closed is not None:
                monitor_closed(reason)
            self._closed.set()

        monitor.on_closed = closed

    @property
    def healthy(self) -> bool | None:
        if self.monitor.connected:
            return True
        if self.ever_connected:
            return False
        if self._started is None or time.monotonic() - self._started < self.grace_s:
            return None
        return False

    async def run(self) -> None:
        self._started = time.monotonic()
        reported = False
        while not self._stopping:
            try:
                await self.monitor.connect()
            except QmpUnavailable as exc:
                if not reported:
                    log.warning("%s: QMP unavailable: %s; retrying every %.1f s", self.name,
                                exc, self.retry_s)
                    reported = True
                await asyncio.sleep(self.retry_s)
                continue
            reported = False
            self.ever_connected = True
            log.info("%s: QMP connected (%s)", self.name, self.monitor.path)
            self._closed.clear()
            session = asyncio.get_running_loop().create_task(self.session())
            await self._closed.wait()
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
            await self.monitor.close()

    def stop(self) -> None:
        self._stopping = True
        self._closed.set()
