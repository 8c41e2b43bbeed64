"""``colo-proxy load`` / ``unload``: modprobe/insmod and rmmod with one-line diagnostics."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ColoError, InputError
from . import MODULE, system, tools
from .modinfo import modinfo


def _modinfo(ko: Path, field: str) -> str:
    return modinfo(ko).get(field, "")



def _load_dependencies(ko: Path) -> None:
    deps = [d for d in _modinfo(ko, "depends").split(",") if d]
    if not deps:
        return
    result = tools.run(["modprobe", "-a", *deps])
    if result.returncode != 0:
        raise ColoError(f"cannot load the modules {MODULE} needs ({', '.join(deps)}): "
                        f"{tools.last_line(result.stderr)}")


def _refused(stderr: str, what: str) -> ColoError:
    """The one-line error for a failed modprobe/insmod."""
    kver = os.uname().release
    last = tools.last_line(stderr)
    if "Key was rejected by service" in stderr:
        return ColoError(
            f"the kernel refused the unsigned {what} ({system.signature_policy()}): sign it "
            "with a key the kernel trusts (e.g. enrolled with mokutil) or turn Secure Boot off")
    if "Operation not permitted" in stderr:
        mode = system.lockdown()
        if mode and mode != "none":
            return ColoError(
                f"the kernel refused the unsigned {what} (kernel lockdown is '{mode}', "
                "usually because of Secure Boot): sign it with a key the kernel trusts "
                "or turn Secure Boot off")
        disabled = system.PROC / "sys" / "kernel" / "modules_disabled"
        if disabled.exists() and disabled.read_text().strip() == "1":
            return ColoError("module loading is disabled until reboot (kernel.modules_disabled=1)")
        return ColoError(f"not permitted to load {what}: needs root (CAP_SYS_MODULE)")
    if "not found in directory" in stderr:
        return ColoError(f"module {MODULE} is not installed for kernel {kver}: run "
                         "`colo-proxy install` (or load a built file with --ko)")
    if "Invalid module format" in stderr or "Exec format error" in stderr:
        return ColoError(f"{what} does not match the running kernel {kver} (see dmesg): "
                         "rebuild it with `colo-proxy install`")
    if "Unknown symbol" in stderr:
        return ColoError(f"{what} has unresolved symbols (see dmesg): it was built for another "
                         f"kernel build than {kver} or a module it needs is missing")
    return ColoError(f"loading {what} failed: {last}")


def load(ko: Path | None = None, root: Path | None = None) -> str:
    """Load the module: a built file (``ko``) or the installed one (modprobe, optionally
    from ``root``/lib/modules).  Returns what happened, in one line."""
    system.require_module_support()
    system.require_cap_sys_module("loading")
    if ko is not None and not ko.exists():
        raise InputError(f"{ko}: no such module file")
    if root is not None and not (root / "lib" / "modules").is_dir():
        raise InputError(f"{root}: no lib/modules directory under it")
    if system.is_loaded(MODULE):
        return f"{MODULE} is already loaded"
    if ko is not None:
        kver, built_for = os.uname().release, _modinfo(ko, "vermagic").split(" ", 1)[0]
        if built_for != kver:
            raise ColoError(f"{ko} was built for kernel {built_for}, but {kver} is running: "
                            "rebuild it with `colo-proxy install`")
        _load_dependencies(ko)
        result = tools.run(["insmod", ko])
        what = f"module {ko}"
    else:
        where = ["-d", str(root)] if root is not None else []
        result = tools.run(["modprobe", *where, MODULE])
        what = f"module {MODULE}"
    if result.returncode != 0 and "File exists" not in result.stderr:
        raise _refused(result.stderr, what)
    if not system.is_loaded(MODULE):
        raise ColoError(f"{MODULE} did not show up in /proc/modules after loading {what}")
    return f"loaded {MODULE}" + (f" from {ko}" if ko is not None else "")


def _in_use() -> ColoError:
    refs, holders = system.refcount(MODULE), system.holders(MODULE)
    users = f"{refs} reference(s)" + (f", needed by {', '.join(holders)}" if holders else "")
    return ColoError(f"{MODULE} is in use ({users}): stop what uses it (a running colo-proxy, "
                     "an unfinished netlink dump, dependent modules) and retry")


def unload() -> str:
    """Remove the module.  Returns what happened, in one line."""
    system.require_module_support()
    system.require_cap_sys_module("unloading")
    if not system.is_loaded(MODULE):
        return f"{MODULE} is not loaded"
    if system.refcount(MODULE) > 0 or system.holders(MODULE):
        raise _in_use()
    result = tools.run(["rmmod", MODULE])
    if result.returncode != 0:
        if "in use" in result.stderr or "Resource temporarily unavailable" in result.stderr:
            raise _in_use()
        if "Operation not permitted" in result.stderr:
            raise ColoError(f"not permitted to unload {MODULE}: needs root (CAP_SYS_MODULE)")
        raise ColoError(f"unloading {MODULE} failed: {tools.last_line(result.stderr)}")
    return f"unloaded {MODULE}"
