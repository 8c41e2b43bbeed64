"""A QEMU-like owner dies (SIGKILL or plain exit): its nodes go, node-gone is delivered.

The 2015 module called synchronize_rcu() from the netlink release notifier and hung
QEMU's exit; here the owner must be reaped promptly (a hang fails the test through a
generous timeout) and every node must be reported gone exactly once.
"""

from __future__ import annotations

import signal

import pytest
from colo_env import read_json, report, spawn, stop

from colo_proxy.nl import (
    CheckpointNeededEvent,
    ColoClient,
    ColoEvents,
    GoneReason,
    Mode,
    NodeGoneEvent,
    Reason,
)

pytestmark = pytest.mark.kernel

ROUNDS = 4


def _run_owner(ns: str, hold_seconds: str, kill: bool) -> tuple[list[int], list[object]]:
    with ColoEvents(netns=ns, timeout=30.0) as events, ColoClient(netns=ns) as observer:
        owner = spawn(["hold", "4", hold_seconds], netns=ns)
        try:
            indexes: list[int] = read_json(owner, 180)["indexes"]  # type: ignore[assignment]
            assert sorted(n.index for n in observer.dump()) == sorted(indexes)
            if kill:
                owner.send_signal(signal.SIGKILL)
            rc = owner.wait(timeout=120)  # a hang in the release path fails here
            assert rc == (-signal.SIGKILL if kill else 0)
        finally:
            stop(owner)
        got = events.collect(
            lambda evs: sum(isinstance(e, NodeGoneEvent) for e in evs) >= len(indexes),
            timeout=30.0,
        )
        assert observer.dump() == []
        assert events.next(timeout=0.5) is None, "more events than nodes"
    return indexes, got


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "exit"])
def test_owner_death_releases_nodes(ns: str, kill: bool, request: pytest.FixtureRequest) -> None:
    total = 0
    for _ in range(ROUNDS):
        indexes, got = _run_owner(ns, "3600" if kill else "0", kill)
        requests = [e for e in got if isinstance(e, CheckpointNeededEvent)]
        gone = [e for e in got if isinstance(e, NodeGoneEvent)]
        assert [(e.index, e.mode, e.reason) for e in requests] == [
            (indexes[0], Mode.SECONDARY, Reason.MANUAL)]
        assert len({e.id for e in gone}) == len(gone), "node ids are unique"
        assert requests[0].id == next(e.id for e in gone if e.index == indexes[0])
        assert sorted(e.index for e in gone) == sorted(indexes), "each node gone exactly once"
        assert {e.reason for e in gone} == {GoneReason.OWNER_RELEASED}
        first = next(e for e in gone if e.index == indexes[0])
        assert first.stats["checkpoint-requests"] == 1
        total += len(gone)
    report(request, f"{ROUNDS} owners {'SIGKILLed' if kill else 'exited'}: "
                    f"node-gone(owner-released) {total}/{total}")
