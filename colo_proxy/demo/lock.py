"""One demo per prefix: a ``flock`` on ``/run/colo-proxy/demo-<prefix>.lock``.

The kernel releases the lock when its holder dies, however it dies (SIGKILL, OOM),
so "namespaces with the prefix exist but nobody holds the lock" means a crashed
run's leftovers (safe to remove), while a held lock means a live demo (refuse,
touch nothing).  The file holds the holder's pid, for the refusal message.  It is
never removed: unlinking a lock file races with a second run opening it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import ColoError

LOCK_DIR = Path("/run/colo-proxy")


def lock_path(prefix: str) -> Path:
    return LOCK_DIR / f"demo-{prefix}.lock"


class PrefixBusy(ColoError):
    """Another live demo holds the prefix (exit code 1)."""


class PrefixLock:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path = lock_path(prefix)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``PrefixBusy`` naming the holder."""
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            # O_CLOEXEC (Python's default): the children never inherit the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ColoError(f"demo: lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise PrefixBusy(f"demo: prefix {self.prefix!r} is in use by a running demo"
                             f"{who}; try --prefix NAME") from None
        except OSError as exc:
            os.close(fd)
            raise ColoError(f"demo: lock {self.path}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
