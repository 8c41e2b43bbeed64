"""Numbers of the "colo" Generic Netlink family, as Python enums.

Written out by hand so that mypy and readers see them; every value is checked
against ``colo.yaml`` (and the C uapi header) by ``tests/unit/test_spec_agreement.py``.
"""

from __future__ import annotations

import enum

FAMILY_NAME = "colo"
FAMILY_VERSION = 1
MCGRP_EVENTS = "events"
INDEX_MIN = 1
INDEX_MAX = 65535


class _Named(enum.IntEnum):
    """IntEnum whose str() is the YAML spelling (``checkpoint-pending``)."""

    def __str__(self) -> str:
        return self.spec_name

    @property
    def spec_name(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> _Named:
        """Look up a member by its YAML spelling or Python name (case-insensitive)."""
        key = text.strip().upper().replace("-", "_")
        try:
            return cls[key]
        except KeyError:
            names = ", ".join(m.spec_name for m in cls)
            raise ValueError(f"unknown {cls.__name__.lower()} {text!r} (one of: {names})") from None


class Mode(_Named):
    UNPROTECTED = 0
    PRIMARY = 1
    SECONDARY = 2


class State(_Named):
    ACTIVE = 0
    CHECKPOINT_PENDING = 1
    FAILED_OVER = 2


class Reason(_Named):
    UNSPEC = 0
    PAYLOAD_MISMATCH = 1
    CONTROL_MISMATCH = 2
    TIMEOUT = 3
    QUEUE_LIMIT = 4
    MEMORY_LIMIT = 5
    CONNECTION_LIMIT = 6
    MANUAL = 7


class GoneReason(_Named):
    UNSPEC = 0
    DESTROYED = 1
    OWNER_RELEASED = 2
    NETNS_EXIT = 3
    MODULE_UNLOAD = 4


class Cmd(_Named):
    """Operation numbers (genlmsghdr.cmd)."""

    PROXY_INIT = 1
    PROXY_RESET = 2
    DO_CHECKPOINT = 3
    DO_FAILOVER = 4
    GET = 5
    PROXY_DESTROY = 6
    REQUEST_CHECKPOINT = 7
    CHECKPOINT_REQUEST = 8
    NODE_GONE = 9


ENUMS: dict[str, type[_Named]] = {
    "mode": Mode,
    "state": State,
    "reason": Reason,
    "gone-reason": GoneReason,
}
"""YAML enum name -> Python enum (used by the agreement test and decoders)."""
