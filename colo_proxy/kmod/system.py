"""What the running kernel allows: module support, privileges, lockdown, loaded modules."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ColoError

PROC = Path("/proc")
SYS = Path("/sys")
_CAP_SYS_MODULE = 16
_SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-e98c0e5c3f2c"


def has_module_support() -> bool:
    """False on a kernel built without CONFIG_MODULES (no /proc/modules)."""
    return (PROC / "modules").exists()


def require_module_support() -> None:
    if not has_module_support():
        raise ColoError(
            f"kernel {os.uname().release} has no loadable module support (no /proc/modules): "
            "the kernel module cannot be used here; use a userspace datapath "
            "(colo-proxy run ...)"
        )


def has_cap_sys_module() -> bool:
    """True when this process may load and unload modules (CAP_SYS_MODULE effective)."""
    try:
        status = (PROC / "self" / "status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_MODULE & 1)
    return os.geteuid() == 0


def require_cap_sys_module(action: str) -> None:
    if not has_cap_sys_module():
        raise ColoError(f"{action} a kernel module needs root (CAP_SYS_MODULE); run with sudo")


def lockdown() -> str | None:
    """The kernel lockdown mode (none, integrity, confidentiality), None if not available."""
    try:
        text = (SYS / "kernel" / "security" / "lockdown").read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def sig_enforce() -> bool:
    """True when the kernel only loads modules with a trusted signature (module.sig_enforce)."""
    try:
        return (SYS / "module" / "module" / "parameters" / "sig_enforce").read_text().strip() == "Y"
    except OSError:
        return False


def secure_boot() -> bool | None:
    """UEFI Secure Boot state; None when not booted through UEFI."""
    try:
        data = (SYS / "firmware" / "efi" / "efivars" / _SECURE_BOOT_VAR).read_bytes()
    except OSError:
        return None
    return bool(data[4]) if len(data) >= 5 else None


def signature_policy() -> str:
    """One phrase describing why unsigned modules are refused (for error messages)."""
    parts = []
    if secure_boot():
        parts.append("Secure Boot is on")
    mode = lockdown()
    if mode and mode != "none":
        parts.append(f"kernel lockdown is '{mode}'")
    if sig_enforce():
        parts.append("module.sig_enforce is set")
    return ", ".join(parts) if parts else "the kernel requires signed modules"


def is_loaded(name: str) -> bool:
    try:
        return any(line.split(" ", 1)[0] == name
                   for line in (PROC / "modules").read_text().splitlines())
    except OSError:
        return False


def refcount(name: str) -> int:
    """The module's reference count (0 when unknown)."""
    try:
        return int((SYS / "module" / name / "refcnt").read_text())
    except (OSError, ValueError):
        return 0


def holders(name: str) -> list[str]:
    """Modules that depend on ``name`` and are loaded."""
    try:
        return sorted(p.name for p in (SYS / "module" / name / "holders").iterdir())
    except OSError:
        return []
