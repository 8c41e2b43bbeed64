"""ColoClient: typed calls to the "colo" Generic Netlink family (pyroute2)."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from ..errors import ColoError
from .codec import decode_node, request
from .constants import FAMILY_NAME, Cmd, Mode, OwnerLoss, Reason
from .errors import ColoNetlinkError, FamilyMissingError
from .messages import colo_msg
from .model import FlowTuple, Node


def extack_of(exc: NetlinkError) -> str | None:
    """The extended-ack text of a pyroute2 NetlinkError (None if the kernel sent none)."""
    text = exc.args[1] if len(exc.args) > 1 else None
    if not text or text == os.strerror(exc.code):
        return None
    return str(text)


@contextmanager
def kernel_errors(op: str) -> Iterator[None]:
    """Turn pyroute2/socket errors raised inside the block into ColoNetlinkError."""
    try:
        yield
    except NetlinkError as exc:
        raise ColoNetlinkError(op, exc.code, extack_of(exc)) from None
    except OSError as exc:
        raise ColoNetlinkError(op, exc.errno or errno.EIO, None) from None


# Port ids the client binds to: disjoint from the kernel's autobind (the tgid, then
# values from 0x80000000 up to 0xFFFFF000) and from pyroute2's (tgid + (20..199 << 22)).
PORTID_MIN, PORTID_MAX = 0x40000000, 0x7FFFFFFF
_BIND_TRIES = 8


def fresh_portid() -> int:
    """A random port id for a new socket (see ``open_family``)."""
    return PORTID_MIN + secrets.randbelow(PORTID_MAX - PORTID_MIN + 1)


def open_family(netns: str | None = None, **kwargs: Any) -> GenericNetlinkSocket:
    """A pyroute2 Generic Netlink socket bound to the colo family.

    ``netns`` names a namespace under /run/netns: the socket is created there
    and nodes made through it belong to that namespace.

    The socket is bound to a fresh random port id.  A node's owner is (netns, port
    id), and the kernel frees a closing socket's port id *before* its release
    notifier destroys the socket's nodes; a socket reopened with the same port id
    (what autobind and pyroute2 give a reopening thread) could lose its new nodes to
    the old socket's release.  A random port id is never the one just closed.
    """
    try:
        # flags=0: never create the namespace (pyroute2 defaults to O_CREAT)
        sock = GenericNetlinkSocket(ext_ack=True, netns=netns, flags=0, **kwargs)
    except OSError as exc:
        where = f" in netns {netns}" if netns else ""
        raise ColoError(f"cannot open a netlink socket{where}: {exc}") from None
    try:
        for attempt in range(_BIND_TRIES):
            try:
                sock.bind(FAMILY_NAME, colo_msg, pid=fresh_portid())
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == _BIND_TRIES - 1:
                    raise
    except NetlinkError as exc:
        sock.close()
        if exc.code == errno.ENOENT:
            raise FamilyMissingError from None
        raise ColoNetlinkError("family lookup", exc.code, extack_of(exc)) from None
    except OSError as exc:
        sock.close()
        raise ColoNetlinkError("bind", exc.errno or errno.EIO) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _mode(value: Mode | int | str) -> Mode:
    if isinstance(value, str):
        return Mode(Mode.parse(value))
    return Mode(value)


def _reason(value: Reason | int | str) -> Reason:
    if isinstance(value, str):  # also colo_proxy.compare.Reason (a StrEnum)
        return Reason(Reason.parse(str(value)))
    return Reason(value)


class ColoClient:
    """One netlink socket to the kernel module; nodes it creates are owned by it.

    Closing the client (or the process dying) releases its nodes: the kernel
    destroys them and emits node-gone with reason owner-released.
    """

    def __init__(self, netns: str | None = None) -> None:
        self._sock = open_family(netns)

    # -- life cycle --------------------------------------------------------
    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ColoClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def portid(self) -> int:
        """Netlink port id of this socket (the ``owner`` of the nodes it creates)."""
        return int(self._sock.asyncore.socket.getsockname()[0])

    @property
    def family_id(self) -> int:
        return int(self._sock.prid)

    # -- plumbing ----------------------------------------------------------
    def _do(self, op: Cmd, flags: int, **attrs: Any) -> list[Any]:
        msg = request(op, **attrs)
        with kernel_errors(str(op)):
            replies = self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=flags)
            # keep the family's messages; acks (NLMSG_ERROR 0) and NLMSG_DONE are dropped
            return [m for m in replies if m["header"]["type"] == self._sock.prid]

    def _ack(self, op: Cmd, **attrs: Any) -> None:
        self._do(op, NLM_F_REQUEST | NLM_F_ACK, **attrs)

    def _one(self, op: Cmd, **attrs: Any) -> Node:
        replies = self._do(op, NLM_F_REQUEST, **attrs)
        if len(replies) != 1:
            raise ColoError(f"{op}: expected one reply from the kernel, got {len(replies)}")
        return decode_node(replies[0])

    # -- operations --------------------------------------------------------
    def proxy_init(
        self,
        mode: Mode | int | str,
        index: int | None = None,
        *,
        tap_ifindex: int | None = None,
        fwd_ifindex: int | None = None,
        max_held_packets: int | None = None,
        max_held_bytes: int | None = None,
        hold_timeout_ms: int | None = None,
        max_connections: int | None = None,
        owner_loss: OwnerLoss | int | str | None = None,
    ) -> Node:
        """Create a node owned by this socket; without ``index`` the kernel picks one.

        A primary node given ``tap_ifindex`` (the PVM's tap) and ``fwd_ifindex`` (the
        forward device carrying the SVM's output) gets the in-kernel datapath; the
        limits and ``owner_loss`` (release or drop held PVM frames on node loss) are
        optional, the kernel has defaults.  A secondary node given ``tap_ifindex`` (the
        SVM's tap) and ``fwd_ifindex`` (the forward link) gets the secondary datapath
        (SECCOLO: isolation and sequence translation); only ``max_connections`` applies.
        """
        if isinstance(owner_loss, str):
            owner_loss = OwnerLoss(OwnerLoss.parse(owner_loss))
        return self._one(
            Cmd.PROXY_INIT,
            mode=_mode(mode),
            index=index,
            tap_ifindex=tap_ifindex,
            fwd_ifindex=fwd_ifindex,
            max_held_packets=max_held_packets,
            max_held_bytes=max_held_bytes,
            hold_timeout_ms=hold_timeout_ms,
            max_connections=max_connections,
            owner_loss=owner_loss,
        )

    def proxy_reset(self, index: int) -> None:
        self._ack(Cmd.PROXY_RESET, index=index)

    def do_checkpoint(self, index: int, mode: Mode | int | str | None = None) -> None:
        """The VMM completed a checkpoint; ``mode``, if given, must be the node's."""
        self._ack(Cmd.DO_CHECKPOINT, index=index, mode=None if mode is None else _mode(mode))

    def do_failover(self, index: int, mode: Mode | int | str | None = None) -> None:
        """Fail over a secondary node; ``mode``, if given, must be secondary."""
        self._ack(Cmd.DO_FAILOVER, index=index, mode=None if mode is None else _mode(mode))

    def get(self, index: int) -> Node:
        return self._one(Cmd.GET, index=index)

    def dump(self) -> list[Node]:
        """All nodes of this socket's network namespace."""
        return [decode_node(m) for m in self._do(Cmd.GET, NLM_F_REQUEST | NLM_F_DUMP)]

    def proxy_destroy(self, index: int) -> None:
        self._ack(Cmd.PROXY_DESTROY, index=index)

    def request_checkpoint(
        self, index: int, reason: Reason | int | str, tuple: FlowTuple | None = None,
        offset: int | None = None,
    ) -> None:
        """Report a reason to checkpoint; the kernel notifies the events group.
        ``offset``: where the first difference is (stream offset or FIFO slot)."""
        if offset is not None and not 0 <= offset < 1 << 64:
            raise ColoError(f"request-checkpoint: offset {offset} is not a u64")
        self._ack(Cmd.REQUEST_CHECKPOINT, index=index, reason=_reason(reason), tuple=tuple,
                  offset=offset)
