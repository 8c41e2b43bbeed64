"""The datapath seam: decisions -> actions, policies, counters, events, exit settle.

A real Engine with real scapy frames; the datapath's I/O is a recorder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from colo_proxy.compare import Engine
from colo_proxy.compare.model import CheckpointRequest, Config, Side
from colo_proxy.seam import (
    LATENCY_BUCKETS_MS,
    CommandPolicy,
    DatapathControl,
    EventWriter,
    FlushPolicy,
    LatencyHistogram,
    Outcome,
    Seam,
)
from colo_proxy.seam.checkpoint import HoldPolicy


def udp(payload: bytes, sport: int = 5000) -> bytes:
    return bytes(Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=53) / payload)


class Recorder:
    def __init__(self) -> None:
        self.released: list[object] = []
        self.dropped: list[object] = []

    def release(self, tags: list[object]) -> int:
        self.released.extend(tags)
        return 100 * len(tags)

    def drop(self, tags: list[object]) -> None:
        self.dropped.extend(tags)


class AgentLike:
    """What the QMP agent does: completion learnt elsewhere, reported by poll()."""

    name = "agent"
    note = "STOP/RESUME seen"
    retry_s: float | None = None

    def __init__(self) -> None:
        self.requests: list[CheckpointRequest] = []
        self.finished = False
        self.stopped = False

    def request(self, request: CheckpointRequest) -> None:
        self.requests.append(request)

    def poll(self) -> Outcome | None:
        if self.finished:
            self.finished = False
            return Outcome(done=True, note="RESUME")
        return None

    def stop(self) -> None:
        self.stopped = True


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def make(policy: object, tmp_path: Path | None = None) -> tuple[Seam, Recorder, Engine]:
    engine = Engine(Config(compare_timeout_ms=1000.0))
    io = Recorder()
    events = EventWriter(str(tmp_path / "ev.jsonl") if tmp_path else None)
    clock = [0.0]
    seam = Seam(engine, policy, io, events=events, clock_ms=lambda: clock[0])  # type: ignore[arg-type]
    return seam, io, engine


def test_match_releases_through_the_io_and_counts(tmp_path: Path) -> None:
    seam, io, engine = make(FlushPolicy(), tmp_path)
    f = udp(b"same")
    seam.handle(engine.push(Side.PRIMARY, f, 0.0, "p1"))
    seam.handle(engine.push(Side.SECONDARY, f, 2.0, None))
    assert io.released == ["p1"]
    c = seam.counters
    assert (c.released_frames, c.released_bytes) == (1, 100)
    assert c.dropped_secondary == {"matched": 1}
    assert seam.latency.count == 1 and sum(seam.latency.counts) == 1
    seam.finish("test")
    stats, exit_ = _events(tmp_path / "ev.jsonl")
    assert stats["event"] == "stats" and exit_["event"] == "exit"
    assert stats["latency_histogram"]["buckets_ms"] == list(LATENCY_BUCKETS_MS)  # type: ignore[index]
    assert exit_["released"] == 1


def test_flush_policy_flushes_after_the_decisions_of_the_same_batch(tmp_path: Path) -> None:
    seam, io, engine = make(FlushPolicy(), tmp_path)
    seam.handle(engine.push(Side.PRIMARY, udp(b"pvm"), 0.0, "p1"))
    seam.handle(engine.push(Side.SECONDARY, udp(b"svm"), 1.0, None))
    assert io.released == ["p1"]
    assert seam.counters.checkpoint_requests == {"payload-mismatch": 1}
    assert seam.counters.checkpoints_done == 1
    req, done = (e for e in _events(tmp_path / "ev.jsonl"))
    assert req["event"] == "checkpoint-request" and done["event"] == "checkpoint-done"
    key = req["key"]
    assert isinstance(key, dict)
    assert (key["proto"], key["src"], key["sport"], key["dst"], key["dport"]) == \
        ("udp", "10.0.0.1", 5000, "10.0.0.2", 53)
    assert done["released"] == 1 and done["policy"] == "flush"


def test_a_pluggable_policy_completes_by_poll() -> None:
    agent = AgentLike()
    seam, io, engine = make(agent)
    seam.handle(engine.push(Side.PRIMARY, udp(b"pvm"), 0.0, "p1"))
    seam.handle(engine.push(Side.SECONDARY, udp(b"svm"), 1.0, None))
    assert [str(r.reason) for r in agent.requests] == ["payload-mismatch"]
    assert io.released == []  # held until the policy says done
    seam.tick()
    assert io.released == []
    agent.finished = True
    seam.poll()
    assert io.released == ["p1"]
    assert seam.counters.checkpoints_done == 1


def test_command_policy_failure_retries_then_done(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    record = tmp_path / "env"
    cmd = (f'echo "$COLO_REASON|$COLO_CONNECTION" >> {record}; test -e {flag}')
    policy = CommandPolicy(cmd, retry_s=0.05)
    seam, io, engine = make(policy, tmp_path)
    seam.handle(engine.push(Side.PRIMARY, udp(b"pvm"), 0.0, "p1"))
    seam.handle(engine.push(Side.SECONDARY, udp(b"svm"), 1.0, None))
    while seam.counters.checkpoint_failures == 0:
        seam.poll()
    assert io.released == []
    flag.touch()
    while seam.counters.checkpoints_done == 0:
        seam.poll()
    assert io.released == ["p1"]
    lines = record.read_text().splitlines()
    assert len(lines) >= 2
    assert lines[0] == "payload-mismatch|udp 10.0.0.1:5000 -> 10.0.0.2:53"
    kinds = [e["event"] for e in _events(tmp_path / "ev.jsonl")]
    assert kinds[0] == "checkpoint-request" and "checkpoint-failed" in kinds
    assert kinds[-1] == "checkpoint-done"


@pytest.mark.parametrize("rule", ["flush", "drop"])
def test_settle_on_exit(rule: str) -> None:
    agent = AgentLike()
    seam, io, engine = make(agent)
    seam.handle(engine.push(Side.PRIMARY, udp(b"a", 1), 0.0, "p1"))
    seam.handle(engine.push(Side.PRIMARY, udp(b"b", 2), 0.0, "p2"))
    seam.handle(engine.push(Side.SECONDARY, udp(b"c", 3), 0.0, None))
    assert seam.settle(rule) == (2, 1)
    assert agent.stopped
    c = seam.counters
    if rule == "flush":
        assert io.released == ["p1", "p2"] and c.exit_released == 2
    else:
        assert io.dropped == ["p1", "p2"] and c.exit_dropped_primary == 2
    assert c.exit_dropped_secondary == 1
    assert seam.held() == (0, 0)


def test_timeout_request_is_made_by_the_tick_without_input() -> None:
    """The timeout fires from the timer alone (no new input needed)."""
    policy = HoldPolicy()
    engine = Engine(Config(compare_timeout_ms=1000.0))
    clock = [0.0]
    seam = Seam(engine, policy, Recorder(), clock_ms=lambda: clock[0])
    seam.handle(engine.push(Side.PRIMARY, udp(b"lonely"), 0.0, "p1"))
    clock[0] = 999.0
    seam.tick()
    assert seam.counters.checkpoint_requests == {}
    clock[0] = 1000.0
    seam.tick()
    assert seam.counters.checkpoint_requests == {"timeout": 1}


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    h = LatencyHistogram()
    for v in (0.0, 0.1, 0.11, 10000.0, 10000.1):
        h.add(v)
    assert h.counts[0] == 2 and h.counts[1] == 1
    assert h.counts[len(LATENCY_BUCKETS_MS) - 1] == 1 and h.counts[-1] == 1
    assert h.window()["count"] == 5 and h.window()["count"] == 0


def test_stdout_events_survive_a_closed_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError

        def flush(self) -> None:
            return

    monkeypatch.setattr(sys, "stdout", Closed())
    events = EventWriter("-")
    events.emit("ready")
    assert not events.enabled


def test_a_request_the_policy_does_not_complete_is_reported_overdue(tmp_path: Path) -> None:
    """The 5357 ms stall (issue 8): frames held past the compare timeout with no
    request logged, because one request was outstanding and the engine suppresses
    every later one.  The seam reports the outstanding request once per timeout."""
    agent = AgentLike()
    engine = Engine(Config(compare_timeout_ms=1000.0))
    clock = [0.0]
    lines: list[str] = []
    seam = Seam(engine, agent, Recorder(), events=EventWriter(str(tmp_path / "ev.jsonl")),
                clock_ms=lambda: clock[0], log=lines.append)
    seam.handle(engine.push(Side.PRIMARY, udp(b"pvm"), 0.0, "p1"))
    seam.handle(engine.push(Side.SECONDARY, udp(b"svm"), 0.0, None))
    assert len(agent.requests) == 1
    clock[0] = 500.0
    seam.handle(engine.push(Side.PRIMARY, udp(b"echo reply", 6000), 500.0, "p2"))
    clock[0] = 999.0
    seam.tick()
    assert seam.counters.checkpoints_overdue == 0
    clock[0] = 1600.0  # p2 is past the timeout too; the engine asks nothing new
    seam.tick()
    assert len(agent.requests) == 1
    assert seam.counters.checkpoints_overdue == 1
    seam.tick()
    assert seam.counters.checkpoints_overdue == 1  # once per compare timeout
    overdue = [e for e in _events(tmp_path / "ev.jsonl") if e["event"] == "checkpoint-overdue"]
    assert overdue[0]["held_primary"] == 2 and overdue[0]["waited_ms"] == 1600.0
    assert any(line.startswith("checkpoint overdue: agent") for line in lines)
    agent.finished = True
    clock[0] = 5000.0
    seam.tick()
    assert seam.counters.checkpoints_overdue == 1  # done: nothing outstanding


class PushLike:
    """A push-style policy (BindablePolicy): it drives the datapath through the
    control it is bound to, and poll() reports nothing."""

    name = "push"
    note = "RESUME seen"
    retry_s: float | None = None

    def __init__(self) -> None:
        self.control: DatapathControl | None = None
        self.requests: list[CheckpointRequest] = []

    def bind(self, control: DatapathControl) -> None:
        self.control = control

    def request(self, request: CheckpointRequest) -> None:
        self.requests.append(request)

    def poll(self) -> Outcome | None:
        return None

    def stop(self) -> None:
        pass


def test_a_bound_policy_flushes_through_the_control(tmp_path: Path) -> None:
    policy = PushLike()
    seam, io, engine = make(policy, tmp_path)
    assert policy.control is seam.control and seam.input is engine  # no wrapper
    seam.handle(engine.push(Side.PRIMARY, udp(b"pvm"), 0.0, "p1"))
    seam.handle(engine.push(Side.SECONDARY, udp(b"svm"), 1.0, None))
    assert len(policy.requests) == 1 and seam.requesting
    seam.control.fence()                            # nothing to fence without a wrapper
    seam.control.unfence()
    assert io.released == []
    seam.control.flush()
    assert io.released == ["p1"] and not seam.requesting
    assert seam.counters.checkpoints_done == 1
    done = _events(tmp_path / "ev.jsonl")[-1]
    assert (done["event"], done["policy"], done["note"]) == ("checkpoint-done", "push",
                                                             "RESUME seen")


def test_enter_solo_without_a_wrapper_flushes_only_what_is_held() -> None:
    policy = PushLike()
    seam, io, engine = make(policy)
    seam.control.enter_solo()                       # nothing held, nothing asked
    assert seam.counters.checkpoints_done == 0
    seam.handle(engine.push(Side.PRIMARY, udp(b"pvm"), 0.0, "p1"))
    seam.control.enter_solo()
    assert io.released == ["p1"] and seam.counters.checkpoints_done == 1


def test_control_calls_after_settle_release_nothing() -> None:
    policy = PushLike()
    seam, io, engine = make(policy)
    seam.handle(engine.push(Side.PRIMARY, udp(b"pvm"), 0.0, "p1"))
    assert seam.settle("drop") == (1, 0)
    seam.control.flush()
    seam.control.enter_solo()
    assert io.released == [] and io.dropped == ["p1"]
    assert seam.counters.checkpoints_done == 0
