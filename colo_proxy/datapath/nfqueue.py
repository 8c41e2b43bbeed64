"""The NFQUEUE userspace datapath (``colo-proxy run --datapath nfqueue``).

PVM output waits in the primary queue as a pending verdict until the engine
releases it (ACCEPT).  SVM output is read from the secondary queue, copied into
the engine and DROPped at once: it can never leave phost, and the kernel does
not keep it.  See docs/datapaths.md.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..compare import Engine
from ..compare.model import CheckpointRequest, Config, Decision, Drop, Release, Side
from ..errors import ColoError
from ..rules import RuleManager, RuleSpec
from ..topology import netns as ns_util
from . import nfqueue_proto as proto
from .checkpoint import CheckpointPolicy, CommandPolicy, FlushPolicy
from .nfqueue_events import (
    EventWriter,
    LatencyWindow,
    connection_record,
    request_record,
    stats_record,
)
from .nfqueue_verdicts import OutstandingIds

# NFQUEUE hands over L3 packets; the engine takes Ethernet frames.  Both sides get
# the same synthetic header, so it never contributes to a difference.
_ETH_PAD = bytes(12)
MIN_BATCH = 8
"""Below this many ids a batch message costs more (pyroute2 encoding) than the
per-packet verdicts netfilterqueue sends from C."""


@dataclass
class NfqueueSettings:
    pvm_if: str
    fwd_if: str
    netns: str | None = None
    queue_primary: int = 0
    queue_secondary: int = 1
    queue_maxlen: int = 1024
    fail_closed: bool = False
    rules: str = "iptables"
    """iptables | nft (guard in nft) | none (the operator manages the rules)."""
    iptables_backend: str = "nft"
    checkpoint: str = "flush"
    checkpoint_cmd: str | None = None
    events: str | None = None
    stats_interval: float = 0.5
    tick_interval: float = 0.02


@dataclass
class DatapathCounters:
    verdict_msgs: int = 0
    batch_msgs: int = 0
    accepted: int = 0
    dropped_primary: int = 0
    dropped_secondary: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Queue:
    """One bound NFQUEUE queue (netfilterqueue handle + our netlink handle on its fd)."""

    def __init__(self, number: int, maxlen: int, fail_open: bool, sink: list[Any]) -> None:
        from netfilterqueue import NetfilterQueue

        self.number = number
        self.nfq = NetfilterQueue()
        self.sink = sink
        def collect(packet: Any) -> None:
            # The payload is only readable inside the callback.
            sink.append((packet, packet.get_payload()))

        try:
            self.nfq.bind(number, collect, max_len=maxlen, range=0xFFFF, sock_len=16 << 20)
        except OSError as exc:
            raise ColoError(
                f"cannot bind NFQUEUE queue {number} ({exc}); is another consumer bound?"
            ) from None
        self.fd = self.nfq.get_fd()
        self.sock = socket.fromfd(self.fd, socket.AF_NETLINK, socket.SOCK_RAW,
                                  proto.NETLINK_NETFILTER)
        self._seq = 1 << 30
        # netfilterqueue does not expose the queue flags; send the CONFIG message
        # ourselves on its socket (no ACK requested: its reader owns the socket).
        self._seq += 1
        self.sock.send(proto.config_message(
            number, self._seq,
            [("NFQA_CFG_MASK", proto.NFQA_CFG_F_FAIL_OPEN),
             ("NFQA_CFG_FLAGS", proto.NFQA_CFG_F_FAIL_OPEN if fail_open else 0)],
            ack=False))

    def read(self) -> None:
        self.nfq.run(block=False)

    def batch(self, last_id: int, verdict: int) -> None:
        self._seq += 1
        self.sock.send(proto.verdict_message(self.number, last_id, verdict, True, self._seq))

    def close(self) -> None:
        self.sock.close()
        self.nfq.unbind()


class NfqueueDatapath:
    def __init__(self, settings: NfqueueSettings, config: Config) -> None:
        self.s = settings
        self.engine = Engine(config)
        self.events = EventWriter(settings.events)
        self.latency = LatencyWindow()
        self.counters = DatapathCounters()
        self.policy: CheckpointPolicy = (
            CommandPolicy(settings.checkpoint_cmd) if settings.checkpoint_cmd else FlushPolicy())
        self.held: dict[int, Any] = {}
        """PVM packets (netfilterqueue objects) by id, until their verdict."""
        self.outstanding = OutstandingIds()
        self.pvm_in: list[Any] = []
        self.svm_in: list[Any] = []
        self.start = time.monotonic()
        self.exit_reason = "stopped"

    def now_ms(self) -> float:
        return (time.monotonic() - self.start) * 1000.0

    # --- decisions -> verdicts -------------------------------------------------
    def _apply(self, decisions: list[Decision], accept: set[int], drop: set[int]) -> None:
        for d in decisions:
            if isinstance(d, Release):
                if isinstance(d.tag, int):
                    accept.add(d.tag)
                    self.latency.add(d.held_ms)
            elif isinstance(d, Drop):
                if d.side == Side.PRIMARY and isinstance(d.tag, int):
                    drop.add(d.tag)
            elif isinstance(d, CheckpointRequest):
                self.events.emit("checkpoint-request", **request_record(d),
                                 policy=self.policy.name,
                                 note=self.policy.note if self.policy.name == "flush" else None)
                self.policy.start(d)

    def _settle(self, pvm: _Queue, accept: set[int], drop: set[int]) -> None:
        for ids, verdict in ((accept, proto.NF_ACCEPT), (drop, proto.NF_DROP)):
            if not ids:
                continue
            plan = self.outstanding.settle(ids, MIN_BATCH)
            if plan.batch_last is not None:
                pvm.batch(plan.batch_last, verdict)
                self.counters.batch_msgs += 1
            single = set(plan.single)
            for packet_id in ids:
                packet = self.held.pop(packet_id, None)
                if packet is not None and packet_id in single:
                    packet.accept() if verdict == proto.NF_ACCEPT else packet.drop()
                    self.counters.verdict_msgs += 1
            if verdict == proto.NF_ACCEPT:
                self.counters.accepted += len(ids)
            else:
                self.counters.dropped_primary += len(ids)

    # --- input -----------------------------------------------------------------
    def _consume(self, pvm: _Queue, svm: _Queue) -> None:
        now = self.now_ms()
        accept: set[int] = set()
        drop: set[int] = set()
        push = self.engine.push
        if self.svm_in:
            packets, self.svm_in[:] = list(self.svm_in), []
            for p, payload in packets:
                frame = _ETH_PAD + p.hw_protocol.to_bytes(2, "big") + payload
                self._apply(push(Side.SECONDARY, frame, now, None), accept, drop)
            # Copied into the engine: drop them all now (ids are contiguous).
            if len(packets) >= MIN_BATCH:
                svm.batch(packets[-1][0].id, proto.NF_DROP)
                self.counters.batch_msgs += 1
            else:
                for p, _ in packets:
                    p.drop()
                    self.counters.verdict_msgs += 1
            self.counters.dropped_secondary += len(packets)
        if self.pvm_in:
            packets, self.pvm_in[:] = list(self.pvm_in), []
            for p, payload in packets:
                self.held[p.id] = p
                self.outstanding.add(p.id)
                frame = _ETH_PAD + p.hw_protocol.to_bytes(2, "big") + payload
                self._apply(push(Side.PRIMARY, frame, now, p.id), accept, drop)
        self._settle(pvm, accept, drop)

    def _checkpoint_done(self, pvm: _Queue) -> None:
        accept: set[int] = set()
        drop: set[int] = set()
        decisions = self.engine.checkpoint_done(self.now_ms())
        self._apply(decisions, accept, drop)
        secondary_dropped = sum(1 for d in decisions if isinstance(d, Drop)
                                and d.side == Side.SECONDARY)
        self._settle(pvm, accept, drop)
        self.events.emit("checkpoint-done", released=len(accept),
                         dropped=len(drop) + secondary_dropped, policy=self.policy.name,
                         note=self.policy.note)

    def _stats(self) -> None:
        self.events.emit(
            "stats",
            counters=stats_record(self.engine.stats),
            connections=[connection_record(c) for c in self.engine.connections()],
            latency_ms=self.latency.report(),
            datapath=self.counters.as_dict(),
        )

    # --- main loop -------------------------------------------------------------
    def run(self) -> None:
        try:
            self.engine.tick(0.0)
        except NotImplementedError:
            raise ColoError("the comparison engine is not implemented yet") from None
        if self.s.netns:
            ns_util.enter(self.s.netns)  # NFQUEUE queues and the rules are per netns
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        stop = {"signal": 0}

        def on_signal(signum: int, frame: Any) -> None:
            stop["signal"] = signum

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        pvm = svm = None
        rules: RuleManager | None = None
        try:
            pvm = _Queue(self.s.queue_primary, self.s.queue_maxlen,
                         fail_open=not self.s.fail_closed, sink=self.pvm_in)
            svm = _Queue(self.s.queue_secondary, self.s.queue_maxlen, fail_open=False,
                         sink=self.svm_in)
            if self.s.rules != "none":
                rules = RuleManager(
                    RuleSpec(pvm_if=self.s.pvm_if, fwd_if=self.s.fwd_if,
                             queue_primary=self.s.queue_primary,
                             queue_secondary=self.s.queue_secondary,
                             fail_open=not self.s.fail_closed,
                             guard_in_nft=self.s.rules == "nft"),
                    netns=None, backend=self.s.iptables_backend)
                rules.apply()
            self.events.emit("ready")
            self._loop(pvm, svm, wake_r, stop)
            self.exit_reason = f"signal {signal.Signals(stop['signal']).name}"
        except ColoError as exc:
            self.exit_reason = f"error: {exc}"
            raise
        except Exception as exc:
            self.exit_reason = f"crash: {exc!r}"
            raise
        finally:
            self.policy.stop()
            if rules is not None:
                rules.remove()
            if pvm is not None:
                self._release_on_exit(pvm)
                pvm.close()
            if svm is not None:
                svm.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            self._stats()
            self.events.emit("exit", reason=self.exit_reason)
            self.events.close()

    def _release_on_exit(self, pvm: _Queue) -> None:
        """Orderly exit: held PVM packets are accepted in fail-open mode (the rules
        are gone, traffic flows unprotected anyway) and dropped in fail-closed mode."""
        ids = self.outstanding.drain()
        if ids:
            verdict = proto.NF_DROP if self.s.fail_closed else proto.NF_ACCEPT
            pvm.batch(max(ids), verdict)
        self.held.clear()

    def _loop(self, pvm: _Queue, svm: _Queue, wake: int, stop: dict[str, int]) -> None:
        fds = [pvm.fd, svm.fd, wake]
        next_tick = next_stats = time.monotonic()
        while not stop["signal"]:
            timeout = max(0.0, min(next_tick, next_stats) - time.monotonic())
            readable, _, _ = select.select(fds, [], [], timeout)
            if wake in readable:
                os.read(wake, 512)
            if svm.fd in readable:
                svm.read()
            if pvm.fd in readable:
                pvm.read()
            if self.pvm_in or self.svm_in:
                self._consume(pvm, svm)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.s.tick_interval
                accept: set[int] = set()
                drop: set[int] = set()
                self._apply(self.engine.tick(self.now_ms()), accept, drop)
                self._settle(pvm, accept, drop)
            outcome = self.policy.poll()
            if outcome is not None:
                if outcome.done:
                    self._checkpoint_done(pvm)
                else:
                    self.events.emit("checkpoint-failed", rc=outcome.failed_rc,
                                     retry_s=getattr(self.policy, "retry_s", None))
            if now >= next_stats:
                next_stats = now + self.s.stats_interval
                self._stats()
