"""The QEMU socket datapath: a drop-in replacement for ``-object colo-compare``.

Frames arrive on ``primary_in`` and ``secondary_in`` from QEMU filter-redirectors
(chardev framing, see colo_proxy/qemu/framing.py), go through the comparison
Engine, and released primary frames are written to ``outdev`` with the same
framing, echoing the primary frame's vnet_hdr_len.

Checkpoints (docs/qemu.md):
* ``notify`` endpoint: colo-compare's notify_dev protocol -- ``DO_CHECKPOINT`` is
  sent per checkpoint request; ``COLO_CHECKPOINT`` received means the checkpoint
  is done (Engine.checkpoint_done: held primaries released, secondaries dropped);
  ``COLO_USERSPACE_PROXY_INIT`` is answered with ``COLO_COMPARE_GET_XEN_INIT``.
  Unlike colo-compare, the vnet_hdr_len word is never used on notify, in either
  direction.
* ``on_checkpoint``: a shell command run per request with COLO_REASON,
  COLO_CONNECTION and COLO_DETAIL in its environment.  Without a notify endpoint
  its exit status 0 means "checkpoint done"; a failing hook is retried every
  second while the request is pending.

Shutdown (SIGTERM/SIGINT): with ``held_on_exit="flush"`` (default) every held
primary frame is released to outdev before exiting, as a checkpoint would do;
with ``"drop"`` they are discarded.  Either way the numbers are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field

from ..compare.engine import Engine
from ..compare.model import CheckpointRequest, Decision, Release, Side
from ..qemu import notify as msg
from ..qemu.framing import QemuFrame, encode, header_packer
from .endpoints import Endpoint
from .heap import tune_heap
from .links import Link

log = logging.getLogger("colo_proxy.qemu_socket")

_monotonic = time.monotonic
_PRIMARY = Side.PRIMARY
_SECONDARY = Side.SECONDARY

HELD_ON_EXIT = ("flush", "drop")


@dataclass
class QemuSocketSettings:
    primary_in: Endpoint
    secondary_in: Endpoint
    outdev: Endpoint
    notify: Endpoint | None = None
    vnet_hdr: frozenset[str] = frozenset()
    """Names of the endpoints with vnet_hdr_support: primary_in, secondary_in, outdev."""
    on_checkpoint: str | None = None
    scan_interval_ms: float = 100.0
    held_on_exit: str = "flush"
    out_backlog_bytes: int = 64 * 1024 * 1024
    """Released bytes kept while outdev is not connected; beyond, frames are lost (counted)."""


@dataclass
class DatapathCounters:
    checkpoint_requests: int = 0
    notify_sent: int = 0
    notify_done: int = 0
    notify_unsupported: int = 0
    hook_runs: int = 0
    hook_failures: int = 0
    out_frames: int = 0
    out_lost: int = 0
    exit_released: int = 0
    exit_dropped: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class QemuSocketDatapath:
    """Wires the links to the Engine.  ``await run()`` until ``stop()``."""

    def __init__(self, engine: Engine, settings: QemuSocketSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.counters = DatapathCounters()
        vnet = settings.vnet_hdr
        self.primary = Link("primary_in", settings.primary_in, "primary_in" in vnet,
                            self._primary_frames)
        self.secondary = Link("secondary_in", settings.secondary_in, "secondary_in" in vnet,
                              self._secondary_frames)
        self.outdev = Link("outdev", settings.outdev, "outdev" in vnet)
        self.notify = (Link("notify", settings.notify, False, self._notify_frames)
                       if settings.notify is not None else None)
        self._out_vnet = "outdev" in vnet
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._stop = asyncio.Event()
        self._hook: asyncio.Task[None] | None = None
        self._hook_retry_at = 0.0
        self._pending_notify = False
        self._out_chunks: list[bytes] = []
        """Released frames not yet written: length word(s) and payload, or whole frames."""
        self._out_head = header_packer(self._out_vnet)
        self._out_queued = 0
        self._flush_scheduled = False

    # -- frame paths -------------------------------------------------------------
    #
    # Hot path: one call per read (FrameDecoder.split: a list of payload bytes), one
    # Engine.push per frame with everything bound to locals, released frames appended
    # to one chunk list as [length word, payload] pairs (the tag of a primary frame
    # without vnet_hdr_len word is its payload, so nothing is re-encoded or copied
    # until the join), and one outdev write per event-loop iteration.

    def _primary_frames(self, payloads: list[bytes], vlens: list[int] | None) -> None:
        now = _monotonic() * 1000.0
        push = self.engine.push
        if vlens is None:
            for p in payloads:
                if decisions := push(_PRIMARY, p, now, p, 0):
                    self._handle(decisions)
        else:
            for p, v in zip(payloads, vlens, strict=True):
                if decisions := push(_PRIMARY, p, now, QemuFrame(p, v), v):
                    self._handle(decisions)

    def _secondary_frames(self, payloads: list[bytes], vlens: list[int] | None) -> None:
        now = _monotonic() * 1000.0
        push = self.engine.push
        if vlens is not None:
            for p, v in zip(payloads, vlens, strict=True):
                if decisions := push(_SECONDARY, p, now, None, v):
                    self._handle(decisions)
            return
        append = self._out_chunks.append
        head = self._out_head
        released = 0
        for p in payloads:
            for d in push(_SECONDARY, p, now, None, 0):
                if type(d) is Release:
                    tag = d.tag
                    if type(tag) is bytes:
                        append(head(len(tag)))
                        append(tag)
                    else:
                        append(self._encode(tag))
                    released += 1
                elif type(d) is CheckpointRequest:
                    self._checkpoint_request(d)
        if released:
            self._queued(released)

    def _handle(self, decisions: list[Decision]) -> None:
        append = self._out_chunks.append
        released = 0
        for d in decisions:
            if type(d) is Release:
                tag = d.tag
                if type(tag) is bytes:
                    append(self._out_head(len(tag)))
                    append(tag)
                else:
                    append(self._encode(tag))
                released += 1
            elif type(d) is CheckpointRequest:
                self._checkpoint_request(d)
        if released:
            self._queued(released)

    def _encode(self, tag: object) -> bytes:
        """Frame a released primary that arrived with a vnet_hdr_len word."""
        assert isinstance(tag, QemuFrame)
        return encode(tag.payload, tag.vnet_hdr_len if self._out_vnet else None)

    def _queued(self, frames: int) -> None:
        """``frames`` released frames were queued; one write per event-loop iteration."""
        self.counters.out_frames += frames
        self._out_queued += frames
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        chunks = self._out_chunks
        if not chunks:
            return
        frames, self._out_queued = self._out_queued, 0
        data = b"".join(chunks)
        chunks.clear()
        if self._backlog:
            self._flush_backlog()
        if self._backlog or not self.outdev.write(data):
            if self._backlog_bytes + len(data) > self.settings.out_backlog_bytes:
                self.counters.out_lost += frames
                log.warning("outdev not connected and backlog full: %d released frames lost",
                            frames)
                return
            self._backlog.append(data)
            self._backlog_bytes += len(data)

    def _flush_backlog(self) -> None:
        if self._backlog and self.outdev.write(b"".join(self._backlog)):
            self._backlog.clear()
            self._backlog_bytes = 0

    def _pause_inputs(self, paused: bool) -> None:
        """Back-pressure: stop reading the inputs while outdev's buffer is full."""
        self.primary.pause_reading(paused)
        self.secondary.pause_reading(paused)

    # -- checkpoints -------------------------------------------------------------

    def _checkpoint_request(self, req: CheckpointRequest) -> None:
        c = self.counters
        c.checkpoint_requests += 1
        c.by_reason[str(req.reason)] = c.by_reason.get(str(req.reason), 0) + 1
        log.info("checkpoint requested: %s%s%s", req.reason,
                 f" on {req.key}" if req.key is not None else "",
                 f" ({req.detail})" if req.detail else "")
        if self.notify is not None:
            self._send_do_checkpoint()
        if self.settings.on_checkpoint:
            self._start_hook(req)

    def _send_do_checkpoint(self) -> None:
        assert self.notify is not None
        if self.notify.write(msg.encode_message(msg.DO_CHECKPOINT)):
            self.counters.notify_sent += 1
            self._pending_notify = False
        else:
            log.warning("notify: not connected; DO_CHECKPOINT will be sent on connect")
            self._pending_notify = True

    def _notify_connected(self) -> None:
        if self._pending_notify and self.engine.checkpoint_pending:
            self._send_do_checkpoint()

    def _notify_frames(self, payloads: list[bytes], vlens: list[int] | None) -> None:
        assert self.notify is not None
        for payload in payloads:
            if payload == msg.COLO_CHECKPOINT:
                self.counters.notify_done += 1
                self.checkpoint_done()
            elif payload == msg.PROXY_INIT:
                self.notify.write(msg.encode_message(msg.PROXY_INIT_REPLY))
            else:
                self.counters.notify_unsupported += 1
                log.warning("notify: unsupported instruction %r", payload[:64])

    def checkpoint_done(self) -> None:
        self._pending_notify = False
        self._handle(self.engine.checkpoint_done(time.monotonic() * 1000.0))

    def _start_hook(self, req: CheckpointRequest) -> None:
        if self._hook is not None and not self._hook.done():
            return
        env = dict(os.environ, COLO_REASON=str(req.reason),
                   COLO_CONNECTION=str(req.key) if req.key is not None else "",
                   COLO_DETAIL=req.detail)
        self._hook = asyncio.get_running_loop().create_task(self._run_hook(env))

    async def _run_hook(self, env: dict[str, str]) -> None:
        cmd = self.settings.on_checkpoint
        assert cmd is not None
        self.counters.hook_runs += 1
        try:
            proc = await asyncio.create_subprocess_shell(cmd, env=env,
                                                         stdin=asyncio.subprocess.DEVNULL)
            status = await proc.wait()
        except OSError as exc:
            status = -1
            log.warning("--on-checkpoint: cannot run %r: %s", cmd, exc)
        if status == 0:
            if self.notify is None:
                self.checkpoint_done()
            return
        self.counters.hook_failures += 1
        log.warning("--on-checkpoint %r exited with status %s; retrying in 1 s", cmd, status)
        self._hook_retry_at = time.monotonic() + 1.0

    def _retry_hook(self) -> None:
        if (self.settings.on_checkpoint and self._hook_retry_at
                and time.monotonic() >= self._hook_retry_at
                and (self._hook is None or self._hook.done())):
            self._hook_retry_at = 0.0
            if self.engine.checkpoint_pending:
                env = dict(os.environ, COLO_REASON="retry", COLO_CONNECTION="", COLO_DETAIL="")
                self._hook = asyncio.get_running_loop().create_task(self._run_hook(env))

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def _scan(self) -> None:
        interval = self.settings.scan_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            decisions = self.engine.tick(time.monotonic() * 1000.0)
            if decisions:
                self._handle(decisions)
            self._retry_hook()

    def _on_outdev_connect(self) -> None:
        self._flush_backlog()

    async def run(self) -> None:
        """Start the links, serve until ``stop()`` (or SIGTERM/SIGINT), then shut down."""
        loop = asyncio.get_running_loop()
        if not tune_heap():
            log.debug("heap tuning (mallopt) not available")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.outdev.on_connect = self._on_outdev_connect
        self.outdev.on_write_pause = self._pause_inputs
        links = [self.outdev, self.primary, self.secondary]
        if self.notify is not None:
            self.notify.on_connect = self._notify_connected
            links.append(self.notify)
        started: list[Link] = []
        scan: asyncio.Task[None] | None = None
        try:
            for link in links:
                await link.start()
                started.append(link)
            log.info("qemu-socket datapath running")
            scan = loop.create_task(self._scan())
            await self._stop.wait()
            await self._shutdown()
        finally:
            if scan is not None:
                scan.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scan
            if self._hook is not None and not self._hook.done():
                self._hook.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._hook
            for link in started:
                await link.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def held_frames(self) -> tuple[int, int]:
        """(held primary, held secondary) frames right now."""
        primary = secondary = 0
        for conn in self.engine.connections():
            primary += conn.held_primary
            secondary += conn.held_secondary
        return primary, secondary

    async def _shutdown(self) -> None:
        held_p, held_s = self.held_frames()
        c = self.counters
        if self.settings.held_on_exit == "flush" and held_p + held_s:
            before = c.out_frames
            self.checkpoint_done()
            self._flush_out()
            c.exit_released = c.out_frames - before
            c.exit_dropped = held_s
            drained = await self.outdev.drain(5.0)
            where = "to outdev" if self.outdev.connected and drained else "(outdev not drained)"
            log.info("exit: released %d held primary frames %s, dropped %d held secondary "
                     "frames", c.exit_released, where, held_s)
        else:
            c.exit_dropped = held_p + held_s
            if held_p + held_s:
                log.info("exit: discarded %d held primary and %d held secondary frames",
                         held_p, held_s)
            self._flush_out()
            await self.outdev.drain(5.0)
        if self._backlog_bytes:
            log.warning("exit: %d released bytes never reached outdev (not connected)",
                        self._backlog_bytes)
        s = self.engine.stats
        log.info("exit: frames primary=%d secondary=%d released=%d checkpoint-requests=%d "
                 "checkpoints-done=%d framing-errors=%d out-lost=%d",
                 s.frames[0], s.frames[1], s.released, c.checkpoint_requests,
                 s.checkpoints_done, self.primary.framing_errors
                 + self.secondary.framing_errors + self.outdev.framing_errors, c.out_lost)
