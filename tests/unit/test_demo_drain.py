"""The baseline's drain (colo_proxy/demo/drain.py): which secondary sockets may still
send into the protected run."""

from __future__ import annotations

from colo_proxy.demo.drain import Socket, busy_sockets, parse_proc_net_tcp

# /proc/net/tcp of a secondary after a baseline part: the listener, a connection in
# TIME_WAIT, one whose answer nothing acknowledged (FIN_WAIT1, 0x1 unacked bytes in
# tx_queue), one the server still holds (ESTABLISHED), one waiting for the peer's FIN
# only (FIN_WAIT2), and the client side of some other service.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 020212C6:0050 020112C6:AFC8 06 00000000:00000000 03:00000F5E 00000000     0        0 0 3
   2: 020212C6:0050 020112C6:AFE6 04 00001876:00000000 01:00000032 00000002     0        0 0 3
   3: 020212C6:0050 020112C6:AFCB 01 00000213:00000000 01:00000014 00000001     0        0 7 2
   4: 020212C6:0050 020112C6:AFD0 05 00000000:00000000 00:00000000 00000000     0        0 0 3
   5: 020212C6:9C40 020112C6:0050 01 00000000:00000000 00:00000000 00000000     0        0 8 2
"""


def test_parse_proc_net_tcp() -> None:
    assert parse_proc_net_tcp(PROC_NET_TCP) == [
        Socket(80, 0, "LISTEN"), Socket(80, 45000, "TIME_WAIT"),
        Socket(80, 45030, "FIN_WAIT1"), Socket(80, 45003, "ESTABLISHED"),
        Socket(80, 45008, "FIN_WAIT2"), Socket(40000, 80, "ESTABLISHED")]


def test_busy_sockets_are_the_services_that_can_still_send() -> None:
    busy = busy_sockets(parse_proc_net_tcp(PROC_NET_TCP), 80)
    assert busy == [Socket(80, 45030, "FIN_WAIT1"), Socket(80, 45003, "ESTABLISHED")]
    assert busy_sockets(parse_proc_net_tcp(PROC_NET_TCP.splitlines()[0]), 80) == []
