"""The QEMU socket datapath: a drop-in replacement for ``-object colo-compare``.

Frames arrive on ``primary_in`` and ``secondary_in`` from QEMU filter-redirectors
(chardev framing, see colo_proxy/qemu/framing.py), go through the comparison
Engine, and released primary frames are written to ``outdev`` with the same
framing, echoing the primary frame's vnet_hdr_len.  This module is only the I/O:
decisions become actions in the seam (``colo_proxy/seam/``).

Checkpoints (docs/qemu.md), one policy per run:
* ``notify`` (a notify endpoint): colo-compare's notify_dev protocol --
  ``DO_CHECKPOINT`` is sent per checkpoint request; ``COLO_CHECKPOINT`` received
  means the checkpoint is done; ``COLO_USERSPACE_PROXY_INIT`` is answered with
  ``COLO_COMPARE_GET_XEN_INIT``.  The vnet_hdr_len word is never used on notify,
  in either direction.  A ``checkpoint_cmd`` then only notifies.
* ``cmd`` (``checkpoint_cmd`` without notify): the seam's CommandPolicy.
* ``flush``: an immediate flush; ``none``: requests wait.

Exit (SIGTERM/SIGINT), in this order: the inputs are closed (nothing is read
after the signal), everything held is settled by ``held_on_exit`` (``flush``:
held primaries released to outdev, as a checkpoint would do; ``drop``:
discarded), every released frame is written and outdev drained, then the exit
line reports the final figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass

from ..compare.engine import Engine
from ..compare.model import CheckpointRequest, Decision, Side
from ..errors import ColoError
from ..qemu import notify as msg
from ..qemu.framing import QemuFrame, encode, header_packer
from ..seam import CommandPolicy, EventWriter, FlushPolicy, Outcome, Seam
from ..seam.checkpoint import CheckpointPolicy, HoldPolicy
from .endpoints import Endpoint
from .heap import tune_heap
from .links import Link

log = logging.getLogger("colo_proxy.qemu_socket")

_monotonic = time.monotonic
_PRIMARY = Side.PRIMARY
_SECONDARY = Side.SECONDARY

HELD_ON_EXIT = ("flush", "drop")
POLICIES = ("notify", "cmd", "flush", "none")
POLL_INTERVAL_S = 0.02
"""How often the checkpoint policy is polled (a command's exit, retries)."""
DRAIN_TIMEOUT_S = 10.0
"""How long exit waits for outdev to take the released frames."""
OPTION_OF = {"primary_in": "--primary-in", "secondary_in": "--secondary-in",
             "outdev": "--outdev", "notify": "--notify-dev"}


@dataclass
class QemuSocketSettings:
    primary_in: Endpoint
    secondary_in: Endpoint
    outdev: Endpoint
    notify: Endpoint | None = None
    vnet_hdr: frozenset[str] = frozenset()
    """Names of the endpoints with vnet_hdr_support: primary_in, secondary_in, outdev."""
    checkpoint_cmd: str | None = None
    checkpoint: str | None = None
    """Policy name (POLICIES); None: notify with a notify endpoint, else cmd with a
    command, else none."""
    scan_interval_ms: float = 100.0
    held_on_exit: str = "flush"
    out_backlog_bytes: int = 64 * 1024 * 1024
    """Released bytes kept while outdev is not connected; beyond, frames are lost (counted)."""
    events: str | None = None
    stats_interval: float = 0.5

    def policy_name(self) -> str:
        if self.checkpoint is not None:
            return self.checkpoint
        if self.notify is not None:
            return "notify"
        return "cmd" if self.checkpoint_cmd else "none"


class NotifyPolicy:
    """colo-compare's notify_dev protocol as a checkpoint policy."""

    name = "notify"
    note = "COLO_CHECKPOINT received on notify_dev"
    retry_s: float | None = None

    def __init__(self, link: Link, hook: CommandPolicy | None) -> None:
        self.link = link
        self.hook = hook
        """Checkpoint command run per request as a notification only."""
        if hook is not None:
            self.retry_s = hook.retry_s
        self.sent = 0
        self.completions = 0
        self._waiting = False
        self._unsent = False
        self._completed = False

    def request(self, request: CheckpointRequest) -> None:
        self._waiting = True
        self._send()
        if self.hook is not None:
            self.hook.request(request)

    def _send(self) -> None:
        if self.link.write(msg.encode_message(msg.DO_CHECKPOINT)):
            self.sent += 1
            self._unsent = False
        else:
            log.warning("notify: not connected; DO_CHECKPOINT will be sent on connect")
            self._unsent = True

    def connected(self) -> None:
        if self._unsent and self._waiting:
            self._send()

    def completed(self) -> None:
        """COLO_CHECKPOINT arrived."""
        self.completions += 1
        self._completed = True

    def poll(self) -> Outcome | None:
        if self.hook is not None:
            outcome = self.hook.poll()
            if outcome is not None and not outcome.done and self._waiting:
                return Outcome(done=False, failed_rc=outcome.failed_rc,
                               note="checkpoint command (notification only) failed")
        if self._completed:
            self._completed = self._waiting = self._unsent = False
            if self.hook is not None:
                self.hook.forget()
            return Outcome(done=True)
        return None

    def stop(self) -> None:
        self._waiting = self._unsent = False
        if self.hook is not None:
            self.hook.stop()


class QemuSocketDatapath:
    """Wires the links to the Engine and the seam.  ``await run()`` until ``stop()``."""

    def __init__(self, engine: Engine, settings: QemuSocketSettings,
                 policy: CheckpointPolicy | None = None) -> None:
        """``policy``: a checkpoint policy object (e.g. the QMP agent's) instead of
        the one the settings name; a bindable one is bound by the seam (frames are
        then pushed through the engine wrapper it installs, ``seam.input``)."""
        self.engine = engine
        self.settings = settings
        vnet = settings.vnet_hdr
        self.primary = Link("primary_in", settings.primary_in, "primary_in" in vnet,
                            self._primary_frames)
        self.secondary = Link("secondary_in", settings.secondary_in, "secondary_in" in vnet,
                              self._secondary_frames)
        self.outdev = Link("outdev", settings.outdev, "outdev" in vnet)
        self.notify = (Link("notify", settings.notify, False, self._notify_frames)
                       if settings.notify is not None else None)
        self.policy = policy if policy is not None else self._policy()
        self.events = EventWriter(settings.events)
        self.seam = Seam(engine, self.policy, self, events=self.events, log=log.info,
                         warn=log.warning)
        self.counters = self.seam.counters
        self._out_vnet = "outdev" in vnet
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._backlog_frames = 0
        self._stop = asyncio.Event()
        self._stop_signal: str | None = None
        self._out_chunks: list[bytes] = []
        """Released frames not yet written: length word(s) and payload, or whole frames."""
        self._out_head = header_packer(self._out_vnet)
        self._out_queued = 0
        self._flush_scheduled = False
        self._inputs_closed = False

    def _policy(self) -> CheckpointPolicy:
        s = self.settings
        name = s.policy_name()
        cmd = CommandPolicy(s.checkpoint_cmd) if s.checkpoint_cmd else None
        if name == "notify":
            if self.notify is None:
                raise ColoError("the notify policy needs a notify endpoint")
            return NotifyPolicy(self.notify, cmd)
        if name == "cmd":
            if cmd is None:
                raise ColoError("the cmd policy needs a checkpoint command")
            return cmd
        return FlushPolicy() if name == "flush" else HoldPolicy()

    # -- frame paths -------------------------------------------------------------
    #
    # Hot path: one call per read (FrameDecoder.split: a list of payload bytes), one
    # Engine.push per frame with everything bound to locals, one Seam.handle per read
    # with all its decisions.  Released frames come back through release(): appended
    # to one chunk list as [length word, payload] pairs (the tag of a primary frame
    # without vnet_hdr_len word is its payload, so nothing is re-encoded or copied
    # until the join), and one outdev write per event-loop iteration.

    def _primary_frames(self, payloads: list[bytes], vlens: list[int] | None) -> None:
        now = _monotonic() * 1000.0
        push = self.seam.input.push
        out: list[Decision] = []
        extend = out.extend
        if vlens is None:
            for p in payloads:
                extend(push(_PRIMARY, p, now, p, 0))
        else:
            for p, v in zip(payloads, vlens, strict=True):
                extend(push(_PRIMARY, p, now, QemuFrame(p, v), v))
        if out:
            self.seam.handle(out)

    def _secondary_frames(self, payloads: list[bytes], vlens: list[int] | None) -> None:
        now = _monotonic() * 1000.0
        push = self.seam.input.push
        out: list[Decision] = []
        extend = out.extend
        if vlens is None:
            for p in payloads:
                extend(push(_SECONDARY, p, now, None, 0))
        else:
            for p, v in zip(payloads, vlens, strict=True):
                extend(push(_SECONDARY, p, now, None, v))
        if out:
            self.seam.handle(out)

    # -- DatapathIO (called by the seam) -----------------------------------------

    def release(self, tags: list[object]) -> int:
        append = self._out_chunks.append
        head = self._out_head
        size = 0
        for tag in tags:
            if type(tag) is bytes:
                append(head(len(tag)))
                append(tag)
                size += len(tag)
            else:
                assert isinstance(tag, QemuFrame)
                append(encode(tag.payload, tag.vnet_hdr_len if self._out_vnet else None))
                size += len(tag.payload)
        self._out_queued += len(tags)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_out)
        return size

    def drop(self, tags: list[object]) -> None:
        """Dropped primaries are simply not written."""

    # -- outdev ------------------------------------------------------------------

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        chunks = self._out_chunks
        if not chunks:
            return
        frames, self._out_queued = self._out_queued, 0
        data = b"".join(chunks)
        chunks.clear()
        c = self.counters
        if self._backlog:
            self._flush_backlog()
        if not self._backlog and self.outdev.write(data):
            c.delivered_frames += frames
            return
        if self._backlog_bytes + len(data) > self.settings.out_backlog_bytes:
            c.lost_frames += frames
            log.warning("outdev not connected and backlog full: %d released frames lost",
                        frames)
            return
        self._backlog.append(data)
        self._backlog_bytes += len(data)
        self._backlog_frames += frames

    def _flush_backlog(self) -> None:
        if self._backlog and self.outdev.write(b"".join(self._backlog)):
            self.counters.delivered_frames += self._backlog_frames
            self._backlog.clear()
            self._backlog_bytes = self._backlog_frames = 0

    def _pause_inputs(self, paused: bool) -> None:
        """Back-pressure: stop reading the inputs while outdev's buffer is full."""
        if self._inputs_closed:
            return
        self.primary.pause_reading(paused)
        self.secondary.pause_reading(paused)

    # -- checkpoints -------------------------------------------------------------

    def _notify_frames(self, payloads: list[bytes], vlens: list[int] | None) -> None:
        assert self.notify is not None
        for payload in payloads:
            if payload == msg.COLO_CHECKPOINT:
                if isinstance(self.policy, NotifyPolicy):
                    self.policy.completed()
                    self.seam.poll()
                else:
                    self.counters.bump("notify_unexpected")
                    log.warning("notify: COLO_CHECKPOINT ignored (checkpoint policy %s)",
                                self.policy.name)
            elif payload == msg.PROXY_INIT:
                self.notify.write(msg.encode_message(msg.PROXY_INIT_REPLY))
            else:
                self.counters.bump("notify_unsupported")
                log.warning("notify: unsupported instruction %r", payload[:64])

    def _notify_connected(self) -> None:
        if isinstance(self.policy, NotifyPolicy):
            self.policy.connected()

    # -- lifecycle ---------------------------------------------------------------

    def stop(self, signum: int | None = None) -> None:
        if signum is not None and self._stop_signal is None:
            self._stop_signal = signal.Signals(signum).name
        self._stop.set()

    async def _scan(self) -> None:
        interval = self.settings.scan_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            self.seam.tick()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self.seam.poll()

    async def _stats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            self.seam.stats(**self._io_counters())

    def _io_counters(self) -> dict[str, int]:
        io = dict(self.counters.io)
        if isinstance(self.policy, NotifyPolicy):
            io["notify_sent"] = self.policy.sent
            io["notify_done"] = self.policy.completions
        if isinstance(self.policy, CommandPolicy):
            io["command_runs"] = self.policy.runs
        io["framing_errors"] = self._framing_errors()
        return io

    def _framing_errors(self) -> int:
        links = [self.primary, self.secondary, self.outdev]
        if self.notify is not None:
            links.append(self.notify)
        return sum(link.framing_errors for link in links)

    async def _start(self, link: Link) -> None:
        try:
            await link.start()
        except OSError as exc:
            raise ColoError(f"{OPTION_OF[link.name]} {link.endpoint}: cannot listen: "
                            f"{exc.strerror or exc}") from None

    async def run(self, handle_signals: bool = True) -> None:
        """Start the links, serve until ``stop()`` (or SIGTERM/SIGINT), then shut down.
        ``handle_signals=False``: the host process owns SIGTERM/SIGINT (the agent
        runs several datapaths in one loop) and calls ``stop()`` itself."""
        loop = asyncio.get_running_loop()
        if not tune_heap():
            log.debug("heap tuning (mallopt) not available")
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop, sig)
        self.outdev.on_connect = self._flush_backlog
        self.outdev.on_write_pause = self._pause_inputs
        links = [self.outdev, self.primary, self.secondary]
        if self.notify is not None:
            self.notify.on_connect = self._notify_connected
            links.append(self.notify)
        started: list[Link] = []
        tasks: list[asyncio.Task[None]] = []
        reason = "stopped"
        try:
            for link in links:
                await self._start(link)
                started.append(link)
            self.events.emit("ready")
            log.info("qemu-socket datapath running (checkpoint policy %s)", self.policy.name)
            tasks = [loop.create_task(coro) for coro in (self._scan(), self._poll(),
                                                          self._stats())]
            await self._stop.wait()
            reason = f"signal {self._stop_signal}" if self._stop_signal else "stopped"
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            tasks = []
            await self._shutdown(started)
        except ColoError as exc:
            reason = f"error: {exc}"
            raise
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.policy.stop()
            for link in started:
                await link.close()
            for sig in signals:
                loop.remove_signal_handler(sig)
            self.seam.finish(reason)

    def held_frames(self) -> tuple[int, int]:
        """(held primary, held secondary) frames right now."""
        return self.seam.held()

    async def _shutdown(self, started: list[Link]) -> None:
        # 1. Stop reading: close the inputs (and notify), nothing is read after this.
        self._inputs_closed = True
        for link in (self.primary, self.secondary, self.notify):
            if link is not None and link in started:
                await link.close()
                started.remove(link)
        # 2. Settle everything held by the rule.
        c = self.counters
        rule = self.settings.held_on_exit
        primary, secondary = self.seam.settle(rule)
        # 3. Write every released frame and drain outdev.
        self._flush_out()
        self._flush_backlog()
        drained = await self.outdev.drain(DRAIN_TIMEOUT_S)
        if rule == "flush" and primary + secondary:
            where = "to outdev" if self.outdev.connected and drained else "(outdev not drained)"
            log.info("exit: released %d held primary frames %s, dropped %d held secondary "
                     "frames", primary, where, secondary)
        elif primary + secondary:
            log.info("exit: discarded %d held primary and %d held secondary frames",
                     primary, secondary)
        if self._backlog_frames:
            c.lost_frames += self._backlog_frames
            log.warning("exit: %d released frames (%d bytes) never reached outdev "
                        "(not connected)", self._backlog_frames, self._backlog_bytes)
            self._backlog.clear()
            self._backlog_bytes = self._backlog_frames = 0
        if not drained:
            log.warning("exit: outdev did not take %d written bytes within %g s",
                        self.outdev.write_buffer_size(), DRAIN_TIMEOUT_S)
        await self.outdev.close()
        started.remove(self.outdev)
        for _ in range(3):  # let the transports' connection_lost run (sockets closed)
            await asyncio.sleep(0)
        s = self.engine.stats
        log.info("exit: frames primary=%d secondary=%d released=%d delivered=%d lost=%d "
                 "checkpoint-requests=%d checkpoints-done=%d framing-errors=%d",
                 s.frames[0], s.frames[1], c.released_frames, c.delivered_frames,
                 c.lost_frames, sum(c.checkpoint_requests.values()), c.checkpoints_done,
                 self._framing_errors())
