"""colo_proxy.nl: client of the kernel module's "colo" Generic Netlink family.

``ColoClient`` sends the operations, ``ColoEvents`` receives the notifications;
``spec`` loads ``colo.yaml``, the contract both sides are checked against.
"""

from .client import ColoClient
from .constants import Cmd, GoneReason, Mode, Reason, State
from .errors import ColoNetlinkError, FamilyMissingError
from .events import ColoEvents, EventsOverrun
from .model import CheckpointRequestEvent, Event, FlowTuple, Node, NodeGoneEvent

__all__ = [
    "CheckpointRequestEvent",
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
    "Reason",
    "State",
]
