"""The notify_dev protocol of QEMU colo-compare (Xen userspace proxy mode).

Messages are plain ASCII, carried in the chardev framing of ``framing.py`` and
matched on exact content:

* compare -> VMM: ``DO_CHECKPOINT`` (a mismatch or a timeout),
* VMM -> compare: ``COLO_CHECKPOINT`` (a checkpoint finished: flush),
* VMM -> compare: ``COLO_USERSPACE_PROXY_INIT``, answered ``COLO_COMPARE_GET_XEN_INIT``.

colo-compare never writes the vnet_hdr_len word on notify_dev but parses what it
reads there with its own ``vnet_hdr_support`` setting; ``encode_message`` takes
the flag so callers can reproduce either side of that asymmetry.
"""

from __future__ import annotations

from .framing import encode

DO_CHECKPOINT = b"DO_CHECKPOINT"
COLO_CHECKPOINT = b"COLO_CHECKPOINT"
PROXY_INIT = b"COLO_USERSPACE_PROXY_INIT"
PROXY_INIT_REPLY = b"COLO_COMPARE_GET_XEN_INIT"


def encode_message(message: bytes, vnet_hdr: bool = False) -> bytes:
    """Frame one notify message (with a zero vnet_hdr_len word if ``vnet_hdr``)."""
    return encode(message, 0 if vnet_hdr else None)
