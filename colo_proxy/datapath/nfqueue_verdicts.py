"""Which verdict messages settle a set of decided packet ids of one queue.

NFQNL_MSG_VERDICT_BATCH applies to *every* packet of the queue with an id <= N,
so it may only cover a prefix of the outstanding ids that are all decided the
same way.  Ids grow by one per queued packet, so arrival order is id order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Settlement:
    batch_last: int | None
    """Send one batch verdict for ids <= this (None: no batch)."""
    batch_count: int
    single: list[int]
    """Send one verdict per id here."""


@dataclass
class OutstandingIds:
    """Ids handed to userspace and still without a verdict, in arrival order."""

    order: deque[int] = field(default_factory=deque)
    settled: set[int] = field(default_factory=set)
    """Ids already given a single verdict, still in ``order`` (removed lazily)."""

    def add(self, packet_id: int) -> None:
        self.order.append(packet_id)

    def __len__(self) -> int:
        return len(self.order) - len(self.settled)

    def settle(self, decided: set[int], min_batch: int = 2) -> Settlement:
        """Plan verdicts for ``decided`` (all with the same verdict).  The longest
        prefix of outstanding ids that are all decided (or already settled) becomes
        one batch if it holds at least ``min_batch`` decided ids; the rest are
        single verdicts."""
        prefix: list[int] = []
        last: int | None = None
        order = self.order
        while order and (order[0] in decided or order[0] in self.settled):
            packet_id = order.popleft()
            if packet_id in self.settled:
                self.settled.discard(packet_id)
            else:
                prefix.append(packet_id)
            last = packet_id
        rest = sorted(decided.difference(prefix))
        self.settled.update(rest)
        if len(prefix) >= min_batch:
            return Settlement(last, len(prefix), rest)
        return Settlement(None, 0, prefix + rest)

    def drain(self) -> list[int]:
        """Forget every outstanding id and return them (for a final verdict)."""
        ids = [i for i in self.order if i not in self.settled]
        self.order.clear()
        self.settled.clear()
        return ids
