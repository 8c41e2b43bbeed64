"""``colo-proxy run --datapath qemu-socket``: options and entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..compare.model import Config
from ..errors import ColoError

OPTIONS: list[Callable[[Any], Any]] = []


def run(params: dict[str, Any], config: Config) -> None:
    raise ColoError("datapath qemu-socket: not implemented yet")
