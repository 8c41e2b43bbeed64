"""Errors of the netlink client; both are ColoError (one line in the CLI)."""

from __future__ import annotations

import errno
import os

from ..errors import ColoError


class ColoNetlinkError(ColoError):
    """The kernel refused a request: errno plus the extended-ack message, if any."""

    def __init__(self, op: str, code: int, extack: str | None = None) -> None:
        self.op = op
        self.errno = code
        self.extack = extack or None
        name = errno.errorcode.get(code, str(code))
        text = f"{op}: {os.strerror(code)} ({name})"
        if self.extack:
            text += f": {self.extack}"
        super().__init__(text)


class FamilyMissingError(ColoError):
    """The "colo" Generic Netlink family is not registered in this kernel."""

    def __init__(self) -> None:
        super().__init__(
            'Generic Netlink family "colo" not found: module nf_colo not loaded; '
            "run colo-proxy load"
        )
