"""Checkpoint requests cannot get stuck: every way the event can be lost is recovered.

A request makes the node checkpoint-pending; while it stays pending, the kernel resends
checkpoint-needed every ``resend_ms`` (module parameter).  So a request made while
nobody listens reaches a listener that subscribes later, and a listener that overran
(ENOBUFS) learns it lost events and still gets every pending node's request.  A request
never leaves the node pending without an event that some listener can still receive.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from colo_env import module_back, report, resend_ms, rmmod

from colo_proxy.nl import (
    CheckpointNeededEvent,
    ColoClient,
    ColoEvents,
    EventsOverrun,
    FlowTuple,
    GoneReason,
    Mode,
    NodeGoneEvent,
    Reason,
    State,
)

pytestmark = pytest.mark.kernel

FAST_MS = 100


def needed(events: ColoEvents, want: set[int], timeout: float) -> dict[int, CheckpointNeededEvent]:
    """checkpoint-needed events until every index in ``want`` was seen ."""
    seen: dict[int, CheckpointNeededEvent] = {}
    while not want <= set(seen):
        event = events.next(timeout)
        assert event is not None, f"no checkpoint-needed for {sorted(want - set(seen))}"
        if isinstance(event, CheckpointNeededEvent):
            seen.setdefault(event.index, event)
    return seen


def test_no_listener_does_not_leave_the_node_stuck(ns: str) -> None:
    """Nobody listens: the request still counts, and a checkpoint clears it as usual."""
    with ColoClient(netns=ns) as client:
        node = client.proxy_init(Mode.PRIMARY)
        client.request_checkpoint(node.index, Reason.TIMEOUT)
        client.request_checkpoint(node.index, Reason.TIMEOUT)
        got = client.get(node.index)
        assert got.state == State.CHECKPOINT_PENDING
        assert (got.stats["checkpoint-requests"], got.stats["requests-suppressed"]) == (1, 1)
        assert got.stats["requests-lost"] == 0
        client.do_checkpoint(node.index)
        client.request_checkpoint(node.index, Reason.MANUAL)
        got = client.get(node.index)
        assert (got.state, got.stats["checkpoint-requests"]) == (State.CHECKPOINT_PENDING, 2)


def test_listener_that_subscribes_late_gets_the_request(ns: str,
                                                       request: pytest.FixtureRequest) -> None:
    flow = FlowTuple.from_addresses(6, "198.18.0.1", "198.18.0.2", sport=80, dport=4000,
                                    vlans=(5, 7))
    with ColoClient(netns=ns) as client, resend_ms(FAST_MS):
        node = client.proxy_init(Mode.PRIMARY)
        client.request_checkpoint(node.index, Reason.PAYLOAD_MISMATCH, flow, offset=161)
        with ColoEvents(netns=ns, timeout=30.0) as events:
            got = needed(events, {node.index}, 30.0)[node.index]
            # the resend repeats the whole request, the offset of the difference too
            assert got == CheckpointNeededEvent(node.id, node.index, Mode.PRIMARY,
                                                Reason.PAYLOAD_MISMATCH, flow, 161)
            stats = client.get(node.index).stats
            assert stats["checkpoint-requests"] == 1 and stats["requests-resent"] >= 1
            # once checkpointed the resends stop: the next event is the next request's
            client.do_checkpoint(node.index)
            client.request_checkpoint(node.index, Reason.MANUAL)
            while (ev := events.next(30.0)) is not None and ev.reason != Reason.MANUAL:
                assert ev == got, f"unexpected event {ev}"
            assert ev is not None and ev.index == node.index
    report(request, f"late subscriber got the request by resend (requests-resent "
                    f"{stats['requests-resent']})")


def test_overrun_listener_learns_and_recovers(ns: str, request: pytest.FixtureRequest) -> None:
    """A listener whose buffer overflows gets ENOBUFS, resubscribes and resyncs with a
    dump, and the resends give it every pending node's request."""
    count = 48
    # set before the requests: a timer armed with the quiet interval keeps it
    with ColoClient(netns=ns) as client, resend_ms(FAST_MS):
        with ColoEvents(netns=ns, rcvbuf=2048, timeout=30.0) as small:
            nodes = {client.proxy_init(Mode.PRIMARY).index: None for _ in range(count)}
            for index in nodes:
                client.request_checkpoint(index, Reason.QUEUE_LIMIT)
            received = 0
            with pytest.raises(EventsOverrun):
                while small.next(5.0) is not None:
                    received += 1
        # resync: resubscribe (pyroute2 closes a socket that got ENOBUFS), then dump
        with ColoEvents(netns=ns, rcvbuf=8 << 20, timeout=30.0) as events:
            pending = {n.index for n in client.dump() if n.state == State.CHECKPOINT_PENDING}
            assert pending == set(nodes)
            seen = needed(events, pending, 30.0)
        assert {e.reason for e in seen.values()} == {Reason.QUEUE_LIMIT}
        stats = [client.get(i).stats for i in nodes]
        assert sum(s["checkpoint-requests"] for s in stats) == count
        resent = sum(s["requests-resent"] for s in stats)
        assert resent >= 1
    report(request, f"{count} requests into a 2 KiB buffer: {received} events read, then "
                    f"ENOBUFS; after resync all {count} received by resend ({resent} resends)")


def test_teardown_while_resending(ns: str, colo_ko: Path) -> None:
    """Nodes destroyed, released and unloaded while their resend timers fire."""
    with module_back(colo_ko), resend_ms(10):
        with ColoEvents(netns=ns, rcvbuf=16 << 20, timeout=30.0) as events:
            owner = ColoClient(netns=ns)
            made = [owner.proxy_init(Mode.SECONDARY) for _ in range(16)]
            for node in made:
                owner.request_checkpoint(node.index, Reason.TIMEOUT)
            owner.proxy_destroy(made[0].index)
            owner.close()
            gone: dict[int, NodeGoneEvent] = {}
            while len(gone) < len(made):
                event = events.next(30.0)
                assert event is not None, f"node-gone missing for {len(made) - len(gone)}"
                if isinstance(event, NodeGoneEvent):
                    assert event.id not in gone, "node-gone twice"
                    gone[event.id] = event
            assert set(gone) == {n.id for n in made}
            assert gone[made[0].id].reason == GoneReason.DESTROYED
        keeper = ColoClient(netns=ns)
        try:
            for _ in range(16):
                keeper.request_checkpoint(keeper.proxy_init(Mode.PRIMARY).index, Reason.MANUAL)
        finally:
            keeper.close()
        with ColoClient(netns=ns) as c:
            for _ in range(16):
                c.request_checkpoint(c.proxy_init(Mode.PRIMARY).index, Reason.MANUAL)
            res = rmmod()  # with pending nodes whose timers fire every 10 ms
            assert res.returncode == 0, res.stderr
