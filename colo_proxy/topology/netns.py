"""Network namespace helpers: create/remove named namespaces, run code inside one.

``setns`` changes the namespace of the calling *thread* only, so ``run_in`` runs a
function in a short-lived thread that enters the namespace first; the caller's
own namespace never changes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import netns as _netns

from ..errors import ColoError

T = TypeVar("T")

NETNS_DIR = "/run/netns"


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def create(name: str) -> None:
    try:
        _netns.create(name)
    except OSError as exc:
        raise ColoError(f"cannot create network namespace {name}: {exc}") from None


def remove(name: str) -> None:
    """Remove ``name`` if it exists (its veths disappear with it)."""
    if exists(name):
        _netns.remove(name)


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name``."""
    if not exists(name):
        raise ColoError(f"network namespace {name!r} does not exist")
    try:
        _netns.setns(name, flags=0)
    except OSError as exc:
        raise ColoError(f"cannot enter network namespace {name}: {exc}") from None


def run_in(name: str, func: Callable[[], T]) -> T:
    """Run ``func`` in a thread inside namespace ``name`` and return its result."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter(name)
            result.append(func())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def write_sysctls(name: str, values: dict[str, str]) -> None:
    """Write ``/proc/sys`` keys (dotted names) inside namespace ``name``."""

    def write() -> None:
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)

    run_in(name, write)
