"""Apply and remove the rule set with ONE ``iptables-restore --noflush`` transaction
per address family, in a given network namespace, with either iptables backend."""

from __future__ import annotations

import shutil
import subprocess

from ..errors import ColoError, InputError
from .spec import CHAIN_PREFIX, COMMENT, RuleSpec, restore_text

BACKENDS = ("nft", "legacy")
FAMILIES = ("ipv4", "ipv6")


def _tool(backend: str, family: str, kind: str) -> str:
    """e.g. ``iptables-nft-restore`` or ``ip6tables-legacy-save``."""
    if backend not in BACKENDS:
        raise InputError(f"iptables backend {backend!r}: use one of {', '.join(BACKENDS)}")
    base = "iptables" if family == "ipv4" else "ip6tables"
    name = f"{base}-{backend}-{kind}"
    if shutil.which(name) is None:
        raise ColoError(f"{name} not found (install the iptables package)")
    return name


def _prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def _run(argv: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ColoError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def save(backend: str, family: str, netns: str | None) -> str:
    """The namespace's ruleset as ``iptables-save`` prints it."""
    return _run([*_prefix(netns), _tool(backend, family, "save")])


def apply(spec: RuleSpec, backend: str, family: str, netns: str | None) -> None:
    """Install ``spec`` (after removing any leftovers of ours) in one transaction."""
    remove(backend, family, netns)
    _run([*_prefix(netns), _tool(backend, family, "restore"), "--noflush"], restore_text(spec))


def removal_text(saved: str) -> str:
    """Restore input that deletes exactly our jumps and chains found in ``saved``."""
    out: list[str] = []
    table = ""
    deletes: list[str] = []
    ours: list[str] = []

    def flush_table() -> None:
        if deletes or ours:
            out.append(f"*{table}")
            out.extend(deletes)
            out.extend(f"-F {c}" for c in ours)
            out.extend(f"-X {c}" for c in ours)
            out.append("COMMIT")

    for line in saved.splitlines():
        if line.startswith("*"):
            table, deletes, ours = line[1:].strip(), [], []
        elif line.startswith(f":{CHAIN_PREFIX}"):
            ours.append(line[1:].split()[0])
        elif line.startswith("-A ") and f"--comment {COMMENT}" in line:
            deletes.append("-D " + line[3:])
        elif line.strip() == "COMMIT":
            flush_table()
            deletes, ours = [], []
    return "\n".join(out) + "\n" if out else ""


def remove(backend: str, family: str, netns: str | None) -> bool:
    """Remove our jumps and chains; True if there was anything to remove."""
    text = removal_text(save(backend, family, netns))
    if not text:
        return False
    _run([*_prefix(netns), _tool(backend, family, "restore"), "--noflush"], text)
    return True
