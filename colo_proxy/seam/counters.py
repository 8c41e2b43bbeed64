"""``SeamCounters``: the one set of counters every datapath keeps (docs/datapaths.md).

All counters are monotonic.  ``io`` holds the datapath's own I/O counters
(NFQUEUE verdict messages, qemu-socket notify messages, ...) under names the
datapath chooses; everything else means the same for every datapath.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SeamCounters:
    checkpoint_requests: dict[str, int] = field(default_factory=dict)
    """Requests passed to the policy, by reason."""
    checkpoints_done: int = 0
    """Completions reported by the policy (each one flushed the engine)."""
    checkpoint_failures: int = 0
    """Failed attempts reported by the policy (it retries)."""
    checkpoints_overdue: int = 0
    """Reports of a request not completed within the compare timeout (one per timeout)."""
    released_frames: int = 0
    released_bytes: int = 0
    """Primary frames (and their bytes) the engine released, exit included."""
    delivered_frames: int = 0
    """Released frames the datapath handed on (written to outdev / accepted)."""
    lost_frames: int = 0
    """Released frames the datapath could not hand on (e.g. outdev never connected)."""
    dropped_primary: dict[str, int] = field(default_factory=dict)
    dropped_secondary: dict[str, int] = field(default_factory=dict)
    """Engine drops by reason (secondary ``matched`` is the normal case)."""
    exit_released: int = 0
    exit_dropped_primary: int = 0
    exit_dropped_secondary: int = 0
    """Held frames settled at exit by the documented rule."""
    io: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the datapath counter ``name``."""
        self.io[name] = self.io.get(name, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_requests": dict(self.checkpoint_requests),
            "checkpoints_done": self.checkpoints_done,
            "checkpoint_failures": self.checkpoint_failures,
            "checkpoints_overdue": self.checkpoints_overdue,
            "released_frames": self.released_frames,
            "released_bytes": self.released_bytes,
            "delivered_frames": self.delivered_frames,
            "lost_frames": self.lost_frames,
            "dropped_primary": dict(self.dropped_primary),
            "dropped_secondary": dict(self.dropped_secondary),
            "exit_released": self.exit_released,
            "exit_dropped_primary": self.exit_dropped_primary,
            "exit_dropped_secondary": self.exit_dropped_secondary,
            "io": dict(self.io),
        }
