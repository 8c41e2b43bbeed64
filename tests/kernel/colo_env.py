"""Helpers of the kernel tests: namespaces, the module, figures in the test output."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MODULE = "nf_colo"
PY = [os.environ.get("COLO_PYTHON", str(Path(__file__).resolve().parents[2] / ".venv/bin/python"))]
HERE = Path(__file__).resolve().parent


def report(request: pytest.FixtureRequest, text: str) -> None:
    """Print a figure to the terminal even under output capture, and record it in junit."""
    config = request.config
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    line = f"[{request.node.name}] {text}"
    request.node.user_properties.append(("figure", text))
    if capman is not None and reporter is not None:
        with capman.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)
    else:
        print(line)


# -- namespaces --------------------------------------------------------------------------

def netns_name() -> str:
    return f"colot-{secrets.token_hex(4)}"


@contextmanager
def temp_netns() -> Iterator[str]:
    """A named network namespace (/run/netns/colot-XXXXXXXX), deleted on exit."""
    name = netns_name()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        delete_netns(name)


def delete_netns(name: str) -> None:
    if Path("/run/netns", name).exists():
        subprocess.run(["ip", "netns", "del", name], check=False)


# -- the module --------------------------------------------------------------------------

def module_loaded() -> bool:
    return Path("/sys/module", MODULE).exists()


def module_refcnt() -> int:
    return int(Path("/sys/module", MODULE, "refcnt").read_text())


def rmmod() -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rmmod", MODULE], capture_output=True, text=True, check=False)


# checkpoint-needed is resent every resend_ms while a node stays pending.  Tests that
# count events set it out of the way; the loss-path tests (test_nl_loss.py) set it short.
QUIET_RESEND_MS = 3_600_000
RESEND_PARAM = Path("/sys/module", MODULE, "parameters", "resend_ms")


def set_resend_ms(ms: int) -> None:
    RESEND_PARAM.write_text(f"{ms}\n")


def insmod(ko: Path) -> None:
    """Load the module if it is not loaded; either way, resends are out of the way."""
    if not module_loaded():
        res = subprocess.run(["insmod", str(ko)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"insmod {ko}: {res.stderr.strip()}"
    set_resend_ms(QUIET_RESEND_MS)


@contextmanager
def resend_ms(ms: int) -> Iterator[None]:
    """Resend checkpoint-needed every ``ms`` while the block runs."""
    set_resend_ms(ms)
    try:
        yield
    finally:
        if module_loaded():
            set_resend_ms(QUIET_RESEND_MS)


@contextmanager
def module_back(ko: Path) -> Iterator[None]:
    """Whatever the test does to the module, it is loaded again afterwards."""
    try:
        yield
    finally:
        insmod(ko)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true; fail (not a timing assert: a hang guard) after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# -- child processes ---------------------------------------------------------------------

def spawn(args: list[str], netns: str | None = None,
          prefix: list[str] | None = None) -> subprocess.Popen[str]:
    """Run colo_workers.py ARGS (optionally in a netns, after a prefix like setpriv)."""
    cmd = [*(prefix or []), *PY, str(HERE / "colo_workers.py"), *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    """The next JSON result line of a worker; fails (with its stderr) if the worker is
    silent for ``timeout`` s.  ``{"alive": ...}`` lines are not results: they only show
    that a long worker is still advancing, and restart the silence clock (so a slow,
    loaded machine stretches the test instead of failing it)."""
    import json
    import selectors

    assert proc.stdout is not None
    while True:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                stop(proc)
                raise AssertionError(f"worker {proc.args!r} silent for {timeout:.0f}s")
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"worker {proc.args!r} ended: rc={proc.wait()} {err[-2000:]}")
        result: dict[str, object] = json.loads(line)
        if "alive" not in result:
            return result


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a worker (if still running) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
