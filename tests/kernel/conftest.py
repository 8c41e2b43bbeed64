"""Fixtures for tests that run inside the guest kernel (scripts/guest-test.sh).

The guest harness exports COLO_GUEST=1, COLO_KO (the freshly built nf_colo.ko for the
running kernel), COLO_KVER, COLO_SERIES, COLO_KMOD_DIR and COLO_OUT.  Outside the guest every
test marked ``kernel`` is skipped (the host run also deselects them with ``-m 'not kernel'``).

Every ``kernel`` test also fails when the kernel logged a BUG/WARNING/... line while it ran
(patterns shared with scripts/guest/check-dmesg.sh), so a splat is attributed to its test.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod, temp_netns

REPO = Path(__file__).resolve().parents[2]
PATTERN_DIR = Path(os.environ.get("COLO_DMESG_PATTERNS", REPO / "scripts" / "guest"))


def in_guest() -> bool:
    """True inside the harness's guest: a kernel with module support and COLO_GUEST=1."""
    return os.environ.get("COLO_GUEST") == "1" and Path("/proc/modules").exists()


def _patterns(name: str) -> re.Pattern[str] | None:
    lines = [
        line.strip()
        for line in (PATTERN_DIR / name).read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return re.compile("|".join(f"(?:{p})" for p in lines)) if lines else None


class KernelLog:
    """Kernel log records written after this object was created (reads /dev/kmsg)."""

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._lines: list[str] = []

    def lines(self) -> list[str]:
        """All messages logged since creation, oldest first."""
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it: skip ahead
                    continue
                raise
            if not record:
                break
            _, _, message = record.decode(errors="replace").partition(";")
            self._lines.append(message.split("\n", 1)[0])
        return list(self._lines)

    def text(self) -> str:
        return "\n".join(self.lines())

    def bad_lines(self) -> list[str]:
        """Lines that would fail the guest run (dmesg-bad.regex minus dmesg-allow.regex)."""
        bad, allow = _patterns("dmesg-bad.regex"), _patterns("dmesg-allow.regex")
        return [
            line
            for line in self.lines()
            if bad is not None and bad.search(line) and not (allow and allow.search(line))
        ]

    def close(self) -> None:
        os.close(self._fd)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "irreversible: changes the guest kernel until reboot (e.g. lockdown); runs after "
        "every other test of the session",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    items[:] = [i for i in items if "irreversible" not in i.keywords] + [
        i for i in items if "irreversible" in i.keywords
    ]
    if in_guest():
        return
    skip = pytest.mark.skip(reason="runs only inside the guest kernel (scripts/guest-test.sh)")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _kernel_log_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a kernel test whose run made the kernel log a BUG/WARNING/stall/... line."""
    if "kernel" not in request.keywords or not in_guest():
        yield
        return
    log = KernelLog()
    try:
        yield
        bad = log.bad_lines()
        if bad:
            pytest.fail("kernel logged during this test:\n" + "\n".join(bad), pytrace=False)
    finally:
        log.close()


@pytest.fixture
def dmesg() -> Iterator[KernelLog]:
    """The kernel log from the start of the test: ``dmesg.lines()``, ``dmesg.text()``."""
    log = KernelLog()
    try:
        yield log
    finally:
        log.close()


@pytest.fixture(scope="session")
def colo_ko() -> Path:
    """The nf_colo.ko built for the running kernel."""
    path = Path(os.environ.get("COLO_KO", ""))
    if not path.is_file():
        pytest.fail(f"COLO_KO={path} is not a file (run through scripts/guest-test.sh)")
    return path


@pytest.fixture
def ns(colo_ko: Path) -> Iterator[str]:
    """The module loaded and a fresh network namespace ``colot-XXXXXXXX``, deleted after."""
    insmod(colo_ko)
    with temp_netns() as name:
        yield name


@pytest.fixture(scope="session")
def kver() -> str:
    """Release string of the running guest kernel."""
    return os.uname().release
