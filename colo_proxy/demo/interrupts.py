"""Ctrl-C, SIGTERM and SIGHUP for the demo: one handler from the start of the run to
the end of the process, so that no signal can ever skip the cleanup or kill the
process by the default action.

* The first signal raises ``KeyboardInterrupt`` in the main thread, once: the run
  unwinds into its cleanup.
* Inside ``deferred()`` (starting a child, building the topology) a signal is only
  recorded, and raised when the block ends: a child is never started without being
  registered for the cleanup, and no forked library helper is left half done.
* Every later signal, and every signal during the cleanup (``hold()``), is only
  recorded, with a short note on stderr.
* ``finish()`` ignores the signals for the rest of the process: the demo is the last
  thing the process does, and the interpreter resets a Python handler to the default
  action while it shuts down (a late Ctrl-C would end the process with -SIGINT
  instead of 130).
* A forked copy of the process (pyroute2 forks helpers that get the terminal's
  Ctrl-C too) dies as by default instead of unwinding through the demo's stack.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_NOTE = b"colo-proxy demo: still cleaning up (namespaces, processes), please wait\n"


class Interrupts:
    def __init__(self) -> None:
        self.owner = os.getpid()
        self.count = 0
        """Signals received so far."""
        self._holding = 0
        self._raised = False
        self._cleaning = False
        self._last_note = 0.0

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.count += 1
        if not self._raised and not self._holding:
            self._raised = True
            raise KeyboardInterrupt
        now = time.monotonic()
        if self._cleaning and now - self._last_note >= 1.0:
            self._last_note = now
            with contextlib.suppress(OSError):
                os.write(2, _NOTE)

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` for a signal recorded while deferred."""
        if self.count and not self._raised and not self._holding:
            self._raised = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals are recorded in the block and raised when it ends."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        self.check()

    def hold(self) -> None:
        """From now on signals are only recorded (the cleanup runs)."""
        self._holding += 1
        self._cleaning = True

    def finish(self) -> None:
        """Ignore the signals for the rest of the process."""
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
