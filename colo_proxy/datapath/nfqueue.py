"""The NFQUEUE userspace datapath (``colo-proxy run nfqueue``).

PVM output waits in the primary queue as a pending verdict until the engine
releases it (ACCEPT).  SVM output is read from the secondary queue, copied into
the engine and DROPped at once: it can never leave phost, and the kernel does
not keep it.  See docs/datapaths.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..compare import Engine
from ..compare.model import Config, Side
from ..errors import ColoError, InputError
from ..rules import RuleManager, RuleSpec
from ..seam import CommandPolicy, EventWriter, FlushPolicy, Seam
from ..seam.checkpoint import CheckpointPolicy
from ..topology import netns as ns_util
from . import nfqueue_proto as proto
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


log = logging.getLogger("colo_proxy.nfqueue")


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
    """The NFQUEUE I/O; decisions become verdicts through the seam (DatapathIO)."""

    def __init__(self, settings: NfqueueSettings, config: Config,
                 policy: CheckpointPolicy | None = None) -> None:
        """``policy``: a checkpoint policy object (e.g. the QMP agent's) instead of
        the one the settings name."""
        self.s = settings
        self.engine = Engine(config)
        self.events = EventWriter(settings.events)
        self.start = time.monotonic()
        self.policy: CheckpointPolicy = policy if policy is not None else (
            CommandPolicy(settings.checkpoint_cmd) if settings.checkpoint == "cmd"
            and settings.checkpoint_cmd else FlushPolicy())
        self.seam = Seam(self.engine, self.policy, self, events=self.events,
                         clock_ms=self.now_ms, log=log.debug, warn=log.warning)
        self.counters = self.seam.counters
        for name in ("verdict_msgs", "batch_msgs", "accepted", "dropped_primary",
                     "dropped_secondary", "exit_unread_primary", "exit_unread_secondary"):
            self.counters.io[name] = 0
        self.held: dict[int, int] = {}
        """Payload sizes of the PVM packets (by id) waiting for their verdict."""
        self.packets: dict[int, Any] = {}
        """The netfilterqueue packet objects by id, until their verdict."""
        self.outstanding = OutstandingIds()
        self.pvm_in: list[Any] = []
        self.svm_in: list[Any] = []
        self._accept: set[int] = set()
        self._drop: set[int] = set()
        self.exit_reason = "stopped"

    def now_ms(self) -> float:
        return (time.monotonic() - self.start) * 1000.0

    # --- DatapathIO: the seam's releases and drops become verdicts ------------
    def release(self, tags: list[object]) -> int:
        size = 0
        held = self.held
        for tag in tags:
            if isinstance(tag, int):
                self._accept.add(tag)
                size += held.get(tag, 0)
        return size

    def drop(self, tags: list[object]) -> None:
        for tag in tags:
            if isinstance(tag, int):
                self._drop.add(tag)

    def _settle(self, pvm: _Queue) -> None:
        io = self.counters.io
        for ids, verdict in ((self._accept, proto.NF_ACCEPT), (self._drop, proto.NF_DROP)):
            if not ids:
                continue
            plan = self.outstanding.settle(ids, MIN_BATCH)
            if plan.batch_last is not None:
                pvm.batch(plan.batch_last, verdict)
                io["batch_msgs"] += 1
            single = set(plan.single)
            for packet_id in ids:
                self.held.pop(packet_id, None)
                packet = self.packets.pop(packet_id, None)
                if packet is not None and packet_id in single:
                    packet.accept() if verdict == proto.NF_ACCEPT else packet.drop()
                    io["verdict_msgs"] += 1
            if verdict == proto.NF_ACCEPT:
                io["accepted"] += len(ids)
                self.counters.delivered_frames += len(ids)
            else:
                io["dropped_primary"] += len(ids)
            ids.clear()

    # --- input -----------------------------------------------------------------
    def _consume(self, pvm: _Queue, svm: _Queue) -> None:
        now = self.now_ms()
        push = self.seam.input.push
        handle = self.seam.handle
        if self.svm_in:
            packets, self.svm_in[:] = list(self.svm_in), []
            for p, payload in packets:
                frame = _ETH_PAD + p.hw_protocol.to_bytes(2, "big") + payload
                handle(push(Side.SECONDARY, frame, now, None))
            # Copied into the engine: drop them all now (ids are contiguous).
            self._drop_secondaries(svm, packets)
        if self.pvm_in:
            packets, self.pvm_in[:] = list(self.pvm_in), []
            for p, payload in packets:
                self.packets[p.id] = p
                self.held[p.id] = len(payload)
                self.outstanding.add(p.id)
                frame = _ETH_PAD + p.hw_protocol.to_bytes(2, "big") + payload
                handle(push(Side.PRIMARY, frame, now, p.id))
        self._settle(pvm)

    def _drop_secondaries(self, svm: _Queue, packets: list[Any]) -> None:
        io = self.counters.io
        if len(packets) >= MIN_BATCH:
            svm.batch(packets[-1][0].id, proto.NF_DROP)
            io["batch_msgs"] += 1
        else:
            for p, _ in packets:
                p.drop()
                io["verdict_msgs"] += 1
        io["dropped_secondary"] += len(packets)

    def _stats(self) -> None:
        self.seam.stats()

    # --- main loop -------------------------------------------------------------
    def _check_interfaces(self) -> None:
        where = f" in netns {self.s.netns}" if self.s.netns else ""
        for option, name in (("--pvm-if", self.s.pvm_if), ("--fwd-if", self.s.fwd_if)):
            try:
                socket.if_nametoindex(name)
            except OSError:
                raise InputError(f"{option} {name}: no such interface{where}") from None

    def run(self) -> None:
        if self.s.netns:
            ns_util.enter(self.s.netns)  # NFQUEUE queues and the rules are per netns
        self._check_interfaces()
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
            log.info("nfqueue datapath running (queues %d/%d, %s -> %s, checkpoint policy %s, "
                     "%s)", self.s.queue_primary, self.s.queue_secondary, self.s.pvm_if,
                     self.s.fwd_if, self.policy.name,
                     "fail-closed" if self.s.fail_closed else "fail-open")
            self._loop(pvm, svm, wake_r, stop)
            self.exit_reason = f"signal {signal.Signals(stop['signal']).name}"
        except ColoError as exc:
            self.exit_reason = f"error: {exc}"
            raise
        except Exception as exc:
            self.exit_reason = f"crash: {exc!r}"
            raise
        finally:
            # Exit order: no new packets reach the queues (rules removed), the packets
            # already queued but not read get the exit rule's verdict, everything the
            # engine holds is settled by the rule, and only then the exit figures.
            if rules is not None:
                rules.remove()
            if pvm is not None and svm is not None:
                self._settle_on_exit(pvm, svm)
            else:
                self.policy.stop()
            if pvm is not None:
                pvm.close()
            if svm is not None:
                svm.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            c = self.counters
            s = self.engine.stats
            log.info("exit: frames primary=%d secondary=%d released=%d accepted=%d "
                     "dropped-primary=%d checkpoint-requests=%d checkpoints-done=%d",
                     s.frames[0], s.frames[1], c.released_frames, c.io["accepted"],
                     c.io["dropped_primary"], sum(c.checkpoint_requests.values()),
                     c.checkpoints_done)
            self.seam.finish(self.exit_reason)

    def _settle_on_exit(self, pvm: _Queue, svm: _Queue) -> None:
        """Orderly exit: held PVM packets are accepted in fail-open mode (the rules
        are gone, traffic flows unprotected anyway) and dropped in fail-closed mode;
        the same holds for PVM packets queued but not read yet.  Every verdict is
        counted."""
        rule = "drop" if self.s.fail_closed else "flush"
        # Packets the kernel queued before the rules went: read them, uncompared.
        with contextlib.suppress(OSError):
            svm.read()
            pvm.read()
        io = self.counters.io
        if self.svm_in:
            packets, self.svm_in[:] = list(self.svm_in), []
            io["exit_unread_secondary"] += len(packets)
            self._drop_secondaries(svm, packets)
        unread = list(self.pvm_in)
        self.pvm_in.clear()
        self.seam.settle(rule)
        for p, payload in unread:
            self.packets[p.id] = p
            self.held[p.id] = len(payload)
            self.outstanding.add(p.id)
        ids: list[object] = [p.id for p, _ in unread]
        io["exit_unread_primary"] += len(ids)
        if rule == "flush":
            self.counters.exit_released += len(ids)
            self.counters.released_frames += len(ids)
            self.counters.released_bytes += self.release(ids)
        else:
            self.counters.exit_dropped_primary += len(ids)
            self.drop(ids)
        self._settle(pvm)
        left = self.outstanding.drain()
        if left:  # none expected: every held id was settled above
            pvm.batch(max(left), proto.NF_DROP if self.s.fail_closed else proto.NF_ACCEPT)
        self.held.clear()
        self.packets.clear()

    def _loop(self, pvm: _Queue, svm: _Queue, wake: int, stop: dict[str, int]) -> None:
        fds = [pvm.fd, svm.fd, wake]
        next_tick = next_stats = time.monotonic()
        while not stop["signal"]:
            timeout = max(0.0, min(next_tick, next_stats) - time.monotonic())
            readable, _, _ = select.select(fds, [], [], timeout)
            if wake in readable:
                os.read(wake, 512)
            if stop["signal"]:
                break  # stop reading input first
            if svm.fd in readable:
                svm.read()
            if pvm.fd in readable:
                pvm.read()
            if self.pvm_in or self.svm_in:
                self._consume(pvm, svm)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.s.tick_interval
                self.seam.tick()
            else:
                self.seam.poll()
            self._settle(pvm)
            if now >= next_stats:
                next_stats = now + self.s.stats_interval
                self._stats()
