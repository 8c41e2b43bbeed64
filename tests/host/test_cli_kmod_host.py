"""colo-proxy install/load/unload on the host: its kernel has no module support (CONFIG_MODULES
off); building and installing for another kernel into a staging tree still works."""

from __future__ import annotations

import os
import shutil
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


@pytest.mark.parametrize("kver", ["../../etc", "6.1/../../x", "", " 6.1", ".hidden", "6.1..2"])
def test_install_rejects_a_kernel_that_is_not_a_release(kver: str, tmp_path: Path) -> None:
    result = colo_proxy("install", "--kernel", kver, "--destdir", str(tmp_path))
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"--kernel {kver!r} is not a kernel release" in line
    assert list(tmp_path.iterdir()) == []


def test_install_of_a_non_module_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "text.ko").write_text("not a module\n")
    (tmp_path / "empty.ko").write_bytes(b"")
    (tmp_path / "elf.ko").write_bytes(Path(sys.executable).resolve().read_bytes())
    (tmp_path / "dir.ko").mkdir()
    messages = set()
    for name in ("text.ko", "empty.ko", "elf.ko", "dir.ko"):
        # relative paths too: modinfo(8) took "text.ko" for the module named "text"
        for arg in (name, str(tmp_path / name)):
            result = subprocess.run([str(CLI), "install", "--ko", arg, "--destdir",
                                     str(tmp_path / "dest")], capture_output=True, text=True,
                                    check=False, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            messages.add(one_error_line(result).replace(arg, "FILE"))
    assert messages == {"colo-proxy: error: FILE: not a kernel module (no ELF .modinfo section "
                        "with a vermagic; pass a built .ko file)"}
    assert not (tmp_path / "dest").exists()


def test_install_works_from_an_installed_wheel(tmp_path: Path) -> None:
    kvers = _installed_headers()
    if not kvers:
        pytest.skip("no kernel headers installed under /lib/modules/*/build")
    repo = Path(__file__).resolve().parents[2]
    tree = tmp_path / "tree"  # a copy: setuptools writes its build/ next to pyproject.toml
    for name in ("pyproject.toml", "README.md"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, tree / name)
    for name in ("colo_proxy", "kmod"):
        shutil.copytree(repo / name, tree / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.ko", ".*.cmd"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(tree)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("colo_proxy-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site] = venv.glob("lib/python3*/site-packages")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    # the dependencies from the test venv; its editable colo_proxy stays out (a path entry
    # in a .pth file does not run the .pth files of that directory)
    import click
    (site / "deps.pth").write_text(str(Path(click.__file__).parents[1]) + "\n")
    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import colo_proxy; print(colo_proxy.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(site))
    result = subprocess.run([str(python), "-c", "from colo_proxy.cli import main; main()",
                             "install", "--kernel", kvers[-1], "--destdir", str(tmp_path / "d")],
                            capture_output=True, text=True, check=False, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "d" / "lib" / "modules" / kvers[-1] / "updates" / "nf_colo.ko").is_file()
