"""colo-proxy install/load/unload on the host: its kernel has no module support (CONFIG_MODULES
off); building and installing for another kernel into a staging tree still works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("colo-proxy")
no_modules = pytest.mark.skipif(Path("/proc/modules").exists(),
                                reason="this kernel has module support")


def colo_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, check=False,
                          timeout=300)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("colo-proxy: error: ")
    return lines[0]


@no_modules
@pytest.mark.parametrize("command", ["load", "unload"])
def test_no_module_support_is_one_clear_line(command: str) -> None:
    result = colo_proxy(command)
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"kernel {os.uname().release} has no loadable module support" in line
    assert "/proc/modules" in line


@no_modules
def test_load_of_a_file_still_reports_missing_module_support(tmp_path: Path) -> None:
    ko = tmp_path / "nf_colo.ko"
    ko.write_bytes(b"\x7fELF")
    result = colo_proxy("load", "--ko", str(ko))
    assert result.returncode == 1
    assert "no loadable module support" in one_error_line(result)


def test_install_without_headers_names_the_package(tmp_path: Path) -> None:
    result = colo_proxy("install", "--kernel", "0.0.0-colot-missing", "--destdir", str(tmp_path))
    assert result.returncode == 1
    line = one_error_line(result)
    assert "kernel headers for 0.0.0-colot-missing not found" in line
    assert "linux-headers-0.0.0-colot-missing" in line
    assert not (tmp_path / "lib").exists()


def test_install_with_a_bad_source_is_an_input_error(tmp_path: Path) -> None:
    kdir = next(Path("/lib/modules").glob("*/build/Makefile"), None)
    if kdir is None:
        pytest.skip("no kernel headers installed under /lib/modules/*/build")
    kver = kdir.parent.parent.name
    result = colo_proxy("install", "--kernel", kver, "--src", str(tmp_path),
                        "--destdir", str(tmp_path / "dest"))
    assert result.returncode == 2
    assert "module source not found" in one_error_line(result)


def _installed_headers() -> list[str]:
    return sorted(p.parent.parent.name for p in Path("/lib/modules").glob("*/build/Makefile"))


@pytest.mark.parametrize("kver", _installed_headers() or ["none"])
def test_install_for_another_kernel_into_a_staging_tree(kver: str, tmp_path: Path) -> None:
    if kver == "none":
        pytest.skip("no kernel headers installed under /lib/modules/*/build")
    result = colo_proxy("install", "--kernel", kver, "--destdir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"building nf_colo for {kver}" in result.stdout
    assert "CC [M]" in result.stdout  # the build's progress reaches the operator
    ko = tmp_path / "lib" / "modules" / kver / "updates" / "nf_colo.ko"
    assert ko.is_file()
    vermagic = subprocess.run(["modinfo", "-F", "vermagic", str(ko)], capture_output=True,
                              text=True, check=True).stdout
    assert vermagic.split()[0] == kver
    deps = (tmp_path / "lib" / "modules" / kver / "modules.dep").read_text()
    assert "updates/nf_colo.ko:" in deps

    # The built file installs elsewhere as is; KVER comes from the module's vermagic.
    again = colo_proxy("install", "--ko", str(ko), "--destdir", str(tmp_path / "again"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "CC [M]" not in again.stdout
    assert (tmp_path / "again" / "lib" / "modules" / kver / "updates" / ko.name).is_file()
    wrong = colo_proxy("install", "--ko", str(ko), "--kernel", "0.0.0-colot",
                       "--destdir", str(tmp_path / "wrong"))
    assert wrong.returncode == 1
    assert f"was built for kernel {kver}, not 0.0.0-colot" in one_error_line(wrong)
