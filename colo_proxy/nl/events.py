"""ColoEvents: the family's ``events`` multicast group as typed events."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket

from ..errors import ColoError
from .client import extack_of
from .codec import decode_event
from .constants import FAMILY_NAME, MCGRP_EVENTS
from .errors import ColoNetlinkError, FamilyMissingError
from .messages import colo_msg
from .model import Event

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class EventsOverrun(ColoError):
    """The socket's receive buffer overflowed (ENOBUFS): events were lost."""


class ColoEvents:
    """Subscribe to checkpoint-needed and node-gone notifications.

    ``next(timeout)`` returns the next event or None when none arrives in time;
    iterating yields events until one ``timeout`` passes without any.  A full
    receive buffer raises EventsOverrun rather than silently losing events
    (``rcvbuf`` raises the buffer size; root may exceed net.core.rmem_max); so does an
    event the kernel could not build (it signals ENOBUFS to every listener).  After
    EventsOverrun this object is unusable (pyroute2 closes the socket): open a new
    ColoEvents, then resynchronise with ``ColoClient.dump()``; a node still
    checkpoint-pending has its checkpoint-needed resent every resend interval.
    """

    def __init__(self, netns: str | None = None, rcvbuf: int | None = None,
                 timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._pending: deque[Event] = deque()
        self._loop = asyncio.new_event_loop()
        try:
            self._sock = AsyncGenericNetlinkSocket(
                ext_ack=True, netns=netns, flags=0, use_event_loop=self._loop
            )
            if rcvbuf:
                self._sock.socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            self._loop.run_until_complete(self._sock.bind(FAMILY_NAME, colo_msg))
            try:
                self._sock.add_membership(MCGRP_EVENTS)
            except OSError as exc:  # e.g. EPERM: the group needs CAP_NET_ADMIN
                self.close()
                raise ColoNetlinkError("subscribe to events", exc.errno or errno.EIO) from None
        except NetlinkError as exc:
            self.close()
            if exc.code == errno.ENOENT:
                raise FamilyMissingError from None
            raise ColoNetlinkError("subscribe", exc.code, extack_of(exc)) from None
        except KeyError:
            self.close()
            raise ColoError(f'the colo family has no "{MCGRP_EVENTS}" multicast group') from None
        except OSError as exc:
            self.close()
            raise ColoError(f"cannot subscribe to colo events: {exc}") from None

    def close(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def __enter__(self) -> ColoEvents:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def _receive(self) -> list[Any]:
        return [m async for m in self._sock.get()]

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None if nothing arrives within ``timeout`` seconds."""
        wait = self.timeout if timeout is None else timeout
        while not self._pending:
            try:
                messages = self._loop.run_until_complete(
                    asyncio.wait_for(self._receive(), wait)
                )
            except TimeoutError:
                return None
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise EventsOverrun(
                        "colo events: receive buffer overrun, notifications were lost"
                    ) from None
                raise ColoError(f"colo events: {exc}") from None
            for msg in messages:
                event = decode_event(msg)
                if event is not None:
                    self._pending.append(event)
        return self._pending.popleft()

    def __iter__(self) -> Iterator[Event]:
        while (event := self.next()) is not None:
            yield event

    def collect(self, until: Callable[[list[Event]], bool], timeout: float) -> list[Event]:
        """Gather events until ``until(events)`` holds or ``timeout`` s pass idle."""
        events: list[Event] = []
        while not until(events):
            event = self.next(timeout)
            if event is None:
                break
            events.append(event)
        return events
