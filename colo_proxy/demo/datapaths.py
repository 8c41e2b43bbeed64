"""How the demo starts each datapath: ``nfqueue`` (userspace) and ``kernel`` (the
nf_colo module's PMYCOLO node).  Both write the same event stream."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..topology import Topology

CLI = [sys.executable, "-c", "from colo_proxy.cli import main; main()"]
"""``colo-proxy`` of this very interpreter (works from a venv and from a checkout)."""


def nfqueue_argv(topo: Topology, stats_interval: float) -> list[str]:
    return [*CLI, "run", "nfqueue", "--netns", topo.phost,
            "--pvm-if", topo.phost_pvm_if, "--fwd-if", topo.phost_fwd_if,
            # Fail closed: when the queue is full the kernel drops (TCP retransmits)
            # instead of letting PVM frames past the comparison.
            "--fail-closed", "--queue-maxlen", "4096",
            "--checkpoint", "flush", "--events", "-", "--stats-interval", str(stats_interval)]


def kernel_argv(topo: Topology, stats_interval: float) -> list[str]:
    # The PVM's output arrives on phost's to-pvm (the "tap"), the SVM's on the forward
    # link; the kernel holds, compares and releases, this process only drives it.
    return [*CLI, "run", "kernel", "--netns", topo.phost,
            "--pvm-if", topo.phost_pvm_if, "--fwd-if", topo.phost_fwd_if,
            "--checkpoint", "flush", "--events", "-", "--stats-interval", str(stats_interval)]


DATAPATHS: dict[str, Callable[[Topology, float], list[str]]] = {
    "nfqueue": nfqueue_argv,
    "kernel": kernel_argv,
}

KERNEL_MODULE = "nf_colo"
NEEDS_MODULE = {"kernel"}
"""Datapaths that need the kernel module loaded (the demo checks it first)."""
