"""COLO output comparison engine (pure, I/O-free).  docs/compare.md is its specification."""

from .engine import Engine
from .model import (
    CheckpointRequest,
    Config,
    ConnKey,
    ConnStats,
    Counters,
    Decision,
    Divergence,
    Drop,
    DropReason,
    PassthroughRule,
    Reason,
    Release,
    Side,
)

__all__ = [
    "CheckpointRequest",
    "Config",
    "ConnKey",
    "ConnStats",
    "Counters",
    "Decision",
    "Divergence",
    "Drop",
    "DropReason",
    "Engine",
    "PassthroughRule",
    "Reason",
    "Release",
    "Side",
]
