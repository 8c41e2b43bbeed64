"""colo_proxy.nl: client of the kernel module's "colo" Generic Netlink family.

``ColoClient`` sends the operations, ``ColoEvents`` receives the notifications.
``colo.yaml`` (package data) is the contract both sides are checked against; the
tests' ``tests/nl_spec.py`` loads it.

The names are imported lazily: pyroute2 costs ~0.1 s to import (seconds under
TCG), and every ``colo-proxy`` command would otherwise pay it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ColoClient
    from .constants import Cmd, GoneReason, Mode, OwnerLoss, Reason, State
    from .errors import ColoNetlinkError, FamilyMissingError
    from .events import ColoEvents, EventsOverrun
    from .model import CheckpointNeededEvent, Event, FlowTuple, Node, NodeGoneEvent

_WHERE = {
    "ColoClient": "client",
    "Cmd": "constants",
    "GoneReason": "constants",
    "Mode": "constants",
    "OwnerLoss": "constants",
    "Reason": "constants",
    "State": "constants",
    "ColoNetlinkError": "errors",
    "FamilyMissingError": "errors",
    "ColoEvents": "events",
    "EventsOverrun": "events",
    "CheckpointNeededEvent": "model",
    "Event": "model",
    "FlowTuple": "model",
    "Node": "model",
    "NodeGoneEvent": "model",
}

__all__ = [
    "CheckpointNeededEvent",
    "Cmd",
    "ColoClient",
    "ColoEvents",
    "ColoNetlinkError",
    "Event",
    "EventsOverrun",
    "FamilyMissingError",
    "FlowTuple",
    "GoneReason",
    "Mode",
    "Node",
    "NodeGoneEvent",
    "OwnerLoss",
    "Reason",
    "State",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
