"""colo-proxy install/load/unload against the real guest kernel and the freshly built module.

The harness loaded nf_colo before the session; tests that need it unloaded use the
``unloaded`` fixture, which puts the harness's module back afterwards, also on failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST

from colo_proxy.cli import main
from colo_proxy.nl.client import ColoClient, open_family
from colo_proxy.nl.codec import request
from colo_proxy.nl.constants import Cmd

pytestmark = pytest.mark.kernel

MODULE = "nf_colo"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def colo_proxy(*args: str) -> Ran:
    """The real CLI, in this process (a new Python costs seconds under TCG)."""
    result = CliRunner().invoke(main, list(args))
    return Ran(result.exit_code, result.stdout, result.stderr)


def colo_proxy_unprivileged(*args: str) -> Ran:
    """The CLI in a forked child that dropped root (uid/gid nobody, so no capabilities)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            with os.fdopen(write_end, "w") as out:
                json.dump(asdict(colo_proxy(*args)), out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child failed"
    return Ran(**json.loads(data))


def error_line(result: Ran) -> str:
    """The single stderr line of a failed command (never a traceback)."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("colo-proxy: error: ")
    return lines[0]


def loaded() -> bool:
    return any(line.split()[0] == MODULE for line in Path("/proc/modules").read_text().splitlines())


def rmmod() -> None:
    if loaded():
        subprocess.run(["rmmod", MODULE], check=True)


def insmod(ko: Path) -> None:
    if not loaded():
        subprocess.run(["insmod", str(ko)], check=True)


@pytest.fixture
def unloaded(colo_ko: Path) -> Iterator[None]:
    """The module is not loaded during the test; the harness's build is loaded again after."""
    rmmod()
    try:
        yield
    finally:
        rmmod()
        insmod(colo_ko)


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory, colo_ko: Path, kver: str) -> Path:
    """A staging tree with the module installed by ``colo-proxy install --ko``."""
    root = tmp_path_factory.mktemp("staging")
    result = colo_proxy("install", "--ko", str(colo_ko), "--destdir", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"depmod -b {root} {kver}" in result.stdout
    return root


def test_install_places_the_module_and_indexes_it(staging: Path, kver: str) -> None:
    moddir = staging / "lib" / "modules" / kver
    assert (moddir / "updates" / f"{MODULE}.ko").is_file()
    assert f"updates/{MODULE}.ko:" in (moddir / "modules.dep").read_text()
    found = subprocess.run(["modprobe", "-d", str(staging), "--show-depends", MODULE],
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr
    assert f"updates/{MODULE}.ko" in found.stdout


@pytest.mark.usefixtures("unloaded")
def test_load_from_the_installed_tree_then_unload(staging: Path) -> None:
    result = colo_proxy("load", "--root", str(staging))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"loaded {MODULE}"
    assert Path(f"/sys/module/{MODULE}/initstate").read_text().strip() == "live"
    with ColoClient() as client:  # the Generic Netlink family is really there
        assert client.family_id > 0

    result = colo_proxy("unload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"unloaded {MODULE}"
    assert not loaded()
    assert not Path(f"/sys/module/{MODULE}").exists()

    again = colo_proxy("unload")
    assert again.returncode == 0
    assert again.stdout.strip() == f"{MODULE} is not loaded"


@pytest.mark.usefixtures("unloaded")
def test_load_of_a_built_file_is_idempotent(colo_ko: Path) -> None:
    first = colo_proxy("load", "--ko", str(colo_ko))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"loaded {MODULE} from {colo_ko}"
    assert loaded()
    second = colo_proxy("load", "--ko", str(colo_ko))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"{MODULE} is already loaded"


@pytest.mark.usefixtures("unloaded")
def test_load_when_not_installed(kver: str) -> None:
    installed = subprocess.run(["modprobe", "--show-depends", MODULE], capture_output=True,
                               check=False)
    assert installed.returncode != 0, "the guest's /lib/modules already has the module"
    result = colo_proxy("load")
    assert result.returncode == 1
    line = error_line(result)
    assert f"module {MODULE} is not installed for kernel {kver}" in line
    assert "colo-proxy install" in line
    assert not loaded()


@pytest.mark.usefixtures("unloaded")
def test_load_of_a_module_for_another_kernel(colo_ko: Path, kver: str) -> None:
    others = []
    for ko in sorted(colo_ko.parent.parent.glob(f"*/{MODULE}.ko")):
        magic = subprocess.run(["modinfo", "-F", "vermagic", str(ko)], capture_output=True,
                               text=True, check=True).stdout.split()[0]
        if magic != kver:
            others.append((ko, magic))
    if not others:
        pytest.skip("only one kernel series was built")
    ko, magic = others[0]
    result = colo_proxy("load", "--ko", str(ko))
    assert result.returncode == 1
    assert f"was built for kernel {magic}, but {kver} is running" in error_line(result)
    assert not loaded()


@pytest.mark.usefixtures("unloaded")
def test_load_of_a_file_that_is_not_a_module(tmp_path: Path) -> None:
    bogus = tmp_path / f"{MODULE}.ko"
    bogus.write_bytes(b"not an ELF file\n")
    result = colo_proxy("load", "--ko", str(bogus))
    assert result.returncode == 2
    assert "not a kernel module" in error_line(result)
    assert not loaded()


def test_install_load_and_unload_need_root(colo_ko: Path) -> None:
    assert loaded()
    result = colo_proxy_unprivileged("unload")
    assert result.returncode == 1
    assert "unloading a kernel module needs root (CAP_SYS_MODULE)" in error_line(result)
    assert loaded()
    result = colo_proxy_unprivileged("install", "--ko", str(colo_ko))
    assert result.returncode == 1
    assert "installing into /lib/modules needs root" in error_line(result)
    rmmod()
    try:
        result = colo_proxy_unprivileged("load", "--ko", str(colo_ko))
        assert result.returncode == 1
        assert "loading a kernel module needs root (CAP_SYS_MODULE)" in error_line(result)
        assert not loaded()
    finally:
        insmod(colo_ko)


def test_unload_while_a_netlink_dump_holds_the_module(colo_ko: Path) -> None:
    """An unfinished Generic Netlink dump pins the family's module: unload must refuse."""
    refcnt = Path(f"/sys/module/{MODULE}/refcnt")
    with ColoClient() as client:
        for _ in range(200):  # far more than one dump skb (about 4 KiB) holds
            client.proxy_init("primary")
        dumper = open_family()
        try:
            msg = request(Cmd.GET)
            msg["header"]["type"] = client.family_id
            msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
            msg["header"]["sequence_number"] = 1
            msg.encode()
            with socket.socket(fileno=os.dup(dumper.fileno())) as sock:
                sock.send(msg.data)  # and never read the replies
            assert int(refcnt.read_text()) >= 1, "the dump did not pin the module"

            result = colo_proxy("unload")
            assert result.returncode == 1
            line = error_line(result)
            assert f"{MODULE} is in use (" in line
            assert "reference(s)" in line
            assert loaded()
        finally:
            dumper.close()
    assert int(refcnt.read_text()) == 0
    result = colo_proxy("unload")
    assert result.returncode == 0, result.stderr
    assert not loaded()
    insmod(colo_ko)


@pytest.mark.irreversible
def test_unsigned_module_refused_under_lockdown_and_sig_enforce(colo_ko: Path) -> None:
    """Lockdown and module.sig_enforce cannot be undone until reboot: this test runs last
    (conftest orders ``irreversible`` tests after all others) and leaves the module out."""
    lockdown = Path("/sys/kernel/security/lockdown")
    if not lockdown.exists():
        pytest.skip("this kernel has no lockdown LSM")
    rmmod()
    lockdown.write_text("integrity")
    assert "[integrity]" in lockdown.read_text()
    result = colo_proxy("load", "--ko", str(colo_ko))
    assert result.returncode == 1
    line = error_line(result)
    assert "refused the unsigned module" in line
    assert "kernel lockdown is 'integrity'" in line
    assert not loaded()

    Path("/sys/module/module/parameters/sig_enforce").write_text("1")
    result = colo_proxy("load", "--ko", str(colo_ko))
    assert result.returncode == 1
    line = error_line(result)  # EKEYREJECTED: "Key was rejected by service"
    assert "refused the unsigned module" in line
    assert "module.sig_enforce is set" in line
    assert not loaded()
