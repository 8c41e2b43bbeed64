"""Checks before the demo touches anything: root, tools, kernel features.

Kernel features are probed for real in a throw-away namespace (``<prefix>-probe``)
with the same tools the topology and the datapath use, so a missing feature is
reported by name instead of surfacing later as an obscure failure.  On a kernel
with modules every feature used here loads on demand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence

from ..errors import ColoError, InputError

TOOLS = {
    "ip": "iproute2",
    "tc": "iproute2",
    "iptables": "iptables",
}

# (feature, kernel config, command run inside the probe namespace)
PROBES: list[tuple[str, str, list[str]]] = [
    ("veth pairs", "CONFIG_VETH", ["ip", "link", "add", "cp0", "type", "veth",
                                   "peer", "name", "cp1"]),
    ("bridges", "CONFIG_BRIDGE", ["ip", "link", "add", "cpbr", "type", "bridge"]),
    ("tc clsact qdisc", "CONFIG_NET_SCH_INGRESS",
     ["tc", "qdisc", "add", "dev", "cp0", "clsact"]),
    ("tc u32 filter with mirred action", "CONFIG_NET_CLS_U32 / CONFIG_NET_ACT_MIRRED",
     ["tc", "filter", "add", "dev", "cp0", "egress", "protocol", "all", "u32",
      "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "cp1"]),
    ("iptables raw table", "CONFIG_IP_NF_RAW",
     ["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-i", "cp1", "-j", "DROP"]),
]
NFQUEUE_PROBE = ("iptables NFQUEUE target", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE",
                 ["iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-i", "cp0",
                  "-j", "NFQUEUE", "--queue-num", "7"])
DATAPATH_PROBES: dict[str, list[tuple[str, str, list[str]]]] = {"nfqueue": [NFQUEUE_PROBE]}
"""What only one datapath needs (the raw table: every demo's baseline)."""


_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
"""The topology's rule for a prefix (``topology.build`` checks it too, but only
after the kernel probe has used the prefix for its namespace)."""


def check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise InputError(f"demo: --prefix {prefix!r}: use 1-40 of a-z, 0-9, '-' "
                         "(not starting with '-')")


def check_root() -> None:
    if os.geteuid() != 0:
        raise ColoError("demo: must run as root (it creates network namespaces and "
                        "netfilter rules); try: sudo make demo")


def check_tools() -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items()
               if shutil.which(tool) is None]
    if missing:
        raise ColoError("demo: missing tools: " + ", ".join(missing) + "; run: make deps")


def require_tool(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise ColoError(f"demo: missing tools: {tool} (Debian package {package}); "
                        "run: make deps")


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)


def probe_namespace(prefix: str) -> str:
    return f"{prefix}-probe"


def check_module(module: str = "nf_colo") -> None:
    """The kernel datapath needs the module loaded (``colo-proxy load``)."""
    if not os.path.isdir(f"/sys/module/{module}"):
        raise ColoError(f"demo: the kernel datapath needs the {module} module, which is not "
                        "loaded; run: colo-proxy load (on a host that cannot load modules: "
                        "make demo-kernel runs the demo in a guest kernel)")


def check_kernel(prefix: str, datapath: str = "nfqueue") -> None:
    """Probe the kernel features in ``<prefix>-probe`` (always removed again) that the
    topology, the baseline and ``datapath`` use."""
    if not os.path.exists("/proc/self/ns/net"):
        raise ColoError("demo: the kernel lacks network namespaces (CONFIG_NET_NS)")
    probe = probe_namespace(prefix)
    _run(["ip", "netns", "del", probe])
    made = _run(["ip", "netns", "add", probe])
    if made.returncode != 0:
        raise ColoError(f"demo: cannot create a network namespace: {made.stderr.strip()}")
    try:
        for feature, config, argv in [*PROBES, *DATAPATH_PROBES.get(datapath, [])]:
            res = _run(["ip", "netns", "exec", probe, *argv])
            if res.returncode != 0:
                why = res.stderr.strip().splitlines()[-1:] or ["failed"]
                raise ColoError(f"demo: kernel feature missing: {feature} ({config}): "
                                f"`{' '.join(argv)}`: {why[0]}")
    finally:
        _run(["ip", "netns", "del", probe])
