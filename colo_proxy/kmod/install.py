"""``colo-proxy install``: build the module against a kernel's headers and install it."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ColoError, InputError
from . import MODULE, tools
from .modinfo import not_a_module, vermagic_release

_BUILD_PRODUCTS = ("*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd", "modules.order",
                   "Module.symvers", "*.yaml", ".tmp_versions")


def default_source() -> Path:
    """The module source shipped with the package: ``colo_proxy/kmod/source``, a symlink
    to kmod/nfnetlink_colo in a checkout, a copy of it in a wheel (package data)."""
    return Path(__file__).resolve().parent / "source"


def default_kdir(kver: str) -> Path:
    return Path("/lib/modules") / kver / "build"


def _error_line(lines: list[str]) -> str:
    for line in lines:
        if "error:" in line or "Error " in line or "No such file" in line:
            return line.strip()
    return tools.last_line("\n".join(lines))


def _check_inputs(kver: str, kdir: Path, src: Path) -> None:
    if not (kdir / "Makefile").is_file():
        raise ColoError(f"kernel headers for {kver} not found in {kdir}: install them "
                        f"(apt-get install linux-headers-{kver}) or pass --kdir")
    if not (src / "Kbuild").is_file():
        raise InputError(f"module source not found in {src} (no Kbuild file): pass --src "
                         "(kmod/nfnetlink_colo of a colo-proxy checkout)")


def _build(kver: str, kdir: Path, src: Path, workdir: Path,
           echo: Callable[[str], None]) -> list[Path]:
    build = workdir / MODULE
    shutil.copytree(src, build, ignore=shutil.ignore_patterns(*_BUILD_PRODUCTS))
    jobs = min(4, os.cpu_count() or 1)
    echo(f"building {MODULE} for {kver} against {kdir}")
    code, lines = tools.stream(["make", f"-j{jobs}", "-C", kdir, f"M={build}", "modules"],
                               echo=lambda line: echo(f"  {line}"))
    if code != 0:
        raise ColoError(f"building {MODULE} for {kver} failed: {_error_line(lines)}")
    built = sorted(build.glob("*.ko"))
    if not built:
        raise ColoError(f"building {MODULE} for {kver} produced no .ko file")
    for ko in built:
        vermagic = _vermagic(ko)
        if vermagic != kver:
            raise ColoError(f"the headers in {kdir} are for kernel {vermagic}, not {kver}: "
                            "pass the matching --kdir")
    return built


_RELEASE = re.compile(r"[0-9][A-Za-z0-9._+~-]*")
"""A kernel release as uname -r prints it: no slash, no leading dot (no path tricks)."""


def check_release(kver: str, what: str = "--kernel") -> str:
    if not _RELEASE.fullmatch(kver) or ".." in kver:
        raise InputError(f"{what} {kver!r} is not a kernel release "
                         f"(like {os.uname().release})")
    return kver


def _vermagic(ko: Path) -> str:
    release = vermagic_release(ko)
    if not _RELEASE.fullmatch(release) or ".." in release:
        raise not_a_module(ko)
    return release


def _prebuilt(ko: Path, kver: str | None) -> tuple[str, list[Path]]:
    if not ko.exists():
        raise InputError(f"{ko}: no such module file")
    built_for = _vermagic(ko)
    if kver is not None and built_for != kver:
        raise ColoError(f"{ko} was built for kernel {built_for}, not {kver}")
    return built_for, [ko]


def _place(built: list[Path], kver: str, destdir: Path | None,
           echo: Callable[[str], None]) -> list[Path]:
    target = (destdir or Path("/")) / "lib" / "modules" / kver / "updates"
    try:
        target.mkdir(parents=True, exist_ok=True)
        installed = [Path(shutil.copy2(ko, target / ko.name)) for ko in built]
    except OSError as exc:
        raise ColoError(f"cannot install into {target}: {exc.strerror}") from None
    for path in installed:
        echo(f"installed {path}")
    base = ["-b", str(destdir)] if destdir is not None else []
    echo(f"depmod {' '.join([*base, kver])}")
    result = tools.run(["depmod", *base, kver])
    if result.returncode != 0:
        raise ColoError(f"depmod for {kver} failed: {tools.last_line(result.stderr)}")
    return installed


def install(*, kver: str | None = None, kdir: Path | None = None, destdir: Path | None = None,
            src: Path | None = None, ko: Path | None = None,
            echo: Callable[[str], None] = print) -> list[Path]:
    """Build the module for ``kver`` (default: the running kernel) with the headers in
    ``kdir`` -- or take the already built file ``ko`` (KVER then defaults to the kernel it was
    built for) -- copy it to [destdir]/lib/modules/KVER/updates and run depmod for that
    kernel.  Returns the installed files."""
    if destdir is None and os.geteuid() != 0:
        raise ColoError("installing into /lib/modules needs root; run with sudo "
                        "or install into a staging tree with --destdir")
    if kver is not None:
        check_release(kver)
    if ko is not None:
        if kdir is not None or src is not None:
            raise InputError("--ko installs a built file: --kdir and --src do not apply")
        kver, built = _prebuilt(ko, kver)
        return _place(built, kver, destdir, echo)
    kver = kver or os.uname().release
    kdir = kdir or default_kdir(kver)
    src = src or default_source()
    _check_inputs(kver, kdir, src)
    with tempfile.TemporaryDirectory(prefix="colo-kmod-") as tmp:
        built = _build(kver, kdir, src, Path(tmp), echo)
        return _place(built, kver, destdir, echo)
