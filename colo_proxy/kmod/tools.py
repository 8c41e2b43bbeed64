"""Running the external tools (make, modprobe, insmod, rmmod, depmod, modinfo)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ColoError

_PACKAGE = {"make": "make", "gcc": "gcc", "depmod": "kmod", "modprobe": "kmod",
            "insmod": "kmod", "rmmod": "kmod", "modinfo": "kmod"}


def _missing(tool: str) -> ColoError:
    package = _PACKAGE.get(tool, tool)
    return ColoError(f"`{tool}` not found: install it (apt-get install {package})")


def run(argv: Sequence[str | Path]) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion, capturing its output (never raises on a non-zero exit)."""
    args = [str(a) for a in argv]
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise _missing(args[0]) from None


def stream(argv: Sequence[str | Path], echo: Callable[[str], None], cwd: Path | None = None,
           ) -> tuple[int, list[str]]:
    """Run a tool, passing each line of its output (stdout and stderr) to ``echo``.

    Returns the exit code and all the lines.
    """
    args = [str(a) for a in argv]
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=cwd)
    except FileNotFoundError:
        raise _missing(args[0]) from None
    lines: list[str] = []
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            echo(line)
    return proc.returncode, lines


def last_line(text: str) -> str:
    """The last non-empty line of a tool's output (its error message, usually)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
