"""What the unprotected baseline leaves in the secondary, and how the demo waits it out.

Without the datapath nothing holds the primary's answers until the secondary has sent
the same bytes.  When the secondary is the slower replica, the client's segments
(mirrored to both VMs) acknowledge data the secondary has not sent yet: it discards
them, ACK, FIN and any later request alike.  Its answer, when it comes, is dropped by
the primary host and never acknowledged, and the secondary retransmits it for many
minutes (``tcp_retries2``; ``tcp_orphan_retries`` once its server closed the socket):
into the protected run, where the datapath holds such frames unmatched until a
checkpoint or a timeout, and the captures record them.

So during the baseline the secondary gives up on such a connection after one
retransmission, and the demo waits until the secondary holds only sockets that send
nothing by themselves before the protected run starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..topology import netns

BASELINE_SYSCTLS = {"net.ipv4.tcp_retries2": "1", "net.ipv4.tcp_orphan_retries": "1"}
"""The secondary's settings during the baseline: a connection whose data stays
unacknowledged is abandoned about 0.6 s after the first transmission instead of after
minutes.  Only the secondary's own sending changes, and what it sends during the
baseline is dropped anyway."""

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK",
              10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
QUIET_STATES = frozenset({"LISTEN", "TIME_WAIT", "FIN_WAIT2"})
"""States in which a socket sends nothing by itself (a FIN_WAIT2 socket's FIN is
acknowledged; it only waits for the peer's)."""


@dataclass(frozen=True)
class Socket:
    local_port: int
    remote_port: int
    state: str


def parse_proc_net_tcp(text: str) -> list[Socket]:
    """The IPv4 TCP sockets listed in ``/proc/net/tcp``."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote, state = fields[1], fields[2], int(fields[3], 16)
        sockets.append(Socket(int(local.rsplit(":", 1)[1], 16),
                              int(remote.rsplit(":", 1)[1], 16),
                              TCP_STATES.get(state, f"state {state}")))
    return sockets


def busy_sockets(sockets: list[Socket], port: int) -> list[Socket]:
    """Sockets of the service on ``port`` that may still send a frame by themselves."""
    return [s for s in sockets if s.local_port == port and s.state not in QUIET_STATES]


def read_sockets(netns_name: str) -> list[Socket]:
    """The TCP sockets of a namespace (its thread's view: ``/proc/thread-self``)."""
    return netns.run_in(netns_name, lambda: parse_proc_net_tcp(
        Path("/proc/thread-self/net/tcp").read_text()))


def read_sysctls(netns_name: str, keys: list[str]) -> dict[str, str]:
    def read() -> dict[str, str]:
        return {key: Path("/proc/sys/" + key.replace(".", "/")).read_text().strip()
                for key in keys}

    return netns.run_in(netns_name, read)


def wait_quiet(netns_name: str, port: int, timeout: float) -> list[Socket]:
    """Wait until no socket of the service on ``port`` in ``netns_name`` can still
    send; returns those left after ``timeout`` seconds (empty: quiet)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = busy_sockets(read_sockets(netns_name), port)
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.1)
