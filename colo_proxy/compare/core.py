"""Engine-wide bookkeeping used by the connection kinds: holding, releasing and dropping
frames, checkpoint requests with de-duplication, the timeout queue and the soft limits."""

# Hot path: positional arguments and plain comparisons are deliberate (speed).
# ruff: noqa: PLR0917

from __future__ import annotations

from collections import deque

from .conn import Conn, Held
from .model import (
    CheckpointRequest,
    Config,
    Counters,
    Decision,
    Divergence,
    Drop,
    DropReason,
    Reason,
    Release,
    Side,
)

SIDES = (Side.PRIMARY, Side.SECONDARY)
_new = tuple.__new__  # builds the decision NamedTuples without their Python-level __new__


class Core:
    """Accounting shared by :class:`~.engine.Engine` and the per-connection comparers."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.stats = Counters()
        self._pending = False
        self._epoch = 0
        self._arrivals: deque[Held] = deque()
        self._memory_flag = False
        self._connection_flag = False

    @property
    def checkpoint_pending(self) -> bool:
        """A checkpoint was requested and ``checkpoint_done`` has not been called yet."""
        return self._pending

    # -- decisions ---------------------------------------------------------------------

    def request(
        self,
        reason: Reason,
        conn: Conn | None,
        detail: str,
        now: float,
        div: Divergence | None,
        out: list[Decision],
    ) -> None:
        """Ask for a checkpoint, or count the trigger if one is already pending."""
        if conn is not None:
            conn.requests += 1
        if self._pending:
            self.stats.requests_suppressed += 1
            return
        self._pending = True
        counts = self.stats.checkpoint_requests
        counts[reason] = counts.get(reason, 0) + 1
        out.append(CheckpointRequest(reason, conn.key if conn else None, detail, now, div))

    def drop(self, side: int, tag: object, conn: Conn | None, reason: DropReason,
             out: list[Decision]) -> None:
        """Drop a frame that was never held."""
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        out.append(_new(Drop, (SIDES[side], tag, conn.key if conn else None, reason)))

    def hold(self, h: Held, out: list[Decision], now: float) -> None:
        """Account a newly held frame and check the soft limits."""
        st = self.stats
        st.held_frames_now += 1
        st.held_bytes_now += h.size
        self._arrivals.append(h)
        conn = h.conn
        if h.side:
            conn.held_s += 1
        else:
            conn.held_p += 1
        self.check_limits(conn, h.side, out, now)

    def check_limits(self, conn: Conn, side: int, out: list[Decision], now: float) -> None:
        """Request a checkpoint when a soft limit is crossed (once per checkpoint)."""
        st = self.stats
        count = conn.held_s if side else conn.held_p
        cfg = self.config
        if count > cfg.max_queue_per_conn and not conn.queue_flag:
            conn.queue_flag = True
            self.request(Reason.QUEUE_LIMIT, conn,
                         f"{count} {SIDES[side]} frames held (limit {cfg.max_queue_per_conn})",
                         now, None, out)
        if st.held_bytes_now > cfg.max_held_bytes and not self._memory_flag:
            self._memory_flag = True
            self.request(Reason.MEMORY_LIMIT, conn,
                         f"{st.held_bytes_now} bytes held (limit {cfg.max_held_bytes})",
                         now, None, out)

    def _unhold(self, h: Held) -> None:
        h.done = True
        h.data = b""
        st = self.stats
        st.held_frames_now -= 1
        st.held_bytes_now -= h.size
        if h.side:
            h.conn.held_s -= 1
        else:
            h.conn.held_p -= 1

    def release_held(self, h: Held, now: float, out: list[Decision]) -> None:
        """Release a held primary frame after a successful comparison."""
        h.done = True
        h.data = b""
        conn = h.conn
        conn.held_p -= 1
        conn.frames_matched += 1
        st = self.stats
        st.held_frames_now -= 1
        st.held_bytes_now -= h.size
        st.released += 1
        st.pairs_matched += 1
        held_ms = now - h.arrival
        out.append(_new(Release, (h.tag, conn.key, held_ms if held_ms > 0.0 else 0.0)))
        h.tag = None

    def release_now(self, conn: Conn, tag: object, out: list[Decision]) -> None:
        """Release a primary frame that verified on arrival (never held)."""
        conn.frames_matched += 1
        st = self.stats
        st.released += 1
        st.pairs_matched += 1
        out.append(_new(Release, (tag, conn.key, 0.0)))

    def drop_held(self, h: Held, reason: DropReason, out: list[Decision]) -> None:
        """Drop a held secondary frame."""
        self._unhold(h)
        self.drop(h.side, h.tag, h.conn, reason, out)
        h.tag = None

    # -- time ----------------------------------------------------------------------------

    def check_timeout(self, now: float, out: list[Decision]) -> None:
        """Request a checkpoint if the oldest held frame is older than the timeout.

        The arrival queue is pruned lazily from its head, so this is O(1) amortised.
        """
        arrivals = self._arrivals
        while arrivals and arrivals[0].done:
            arrivals.popleft()
        if not arrivals or self._pending:
            return
        h = arrivals[0]
        age = now - h.arrival
        if age >= self.config.compare_timeout_ms:
            self.request(Reason.TIMEOUT, h.conn,
                         f"{SIDES[h.side]} frame unmatched for {age:.0f} ms "
                         f"(timeout {self.config.compare_timeout_ms:g} ms)", now, None, out)
