"""``colo-proxy run nfqueue``: options and entry point (docs/datapaths.md)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from ..compare.model import Config
from ..errors import InputError
from .run_options import (
    checkpoint_from_params,
    checkpoint_options,
    interfaces_from_params,
    run_command,
)

POLICIES = ["flush", "cmd"]

OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--netns", metavar="NAME",
                 help="Network namespace of the queues and rules (phost)."),
    click.option("--pvm-if", metavar="IF",
                 help="phost interface facing the PVM."),
    click.option("--fwd-if", metavar="IF",
                 help="phost interface of the forward link (SVM output arrives here)."),
    click.option("--queue-primary", type=click.IntRange(0, 65535), default=0, show_default=True,
                 help="NFQUEUE number for PVM output."),
    click.option("--queue-secondary", type=click.IntRange(0, 65535), default=1,
                 show_default=True, help="NFQUEUE number for SVM output."),
    click.option("--queue-maxlen", type=click.IntRange(1, 1 << 20), default=1024,
                 show_default=True, help="Packets each queue may hold in the kernel."),
    click.option("--fail-closed", is_flag=True,
                 help="Stop PVM traffic while no consumer runs (default: fail open)."),
    click.option("--rules", "nfq_rules", type=click.Choice(["iptables", "nft", "none"]),
                 default="iptables", show_default=True,
                 help="Install the rules: all with iptables-restore, guard in an nft "
                      "table (queue rules stay iptables), or none (managed by the operator)."),
    click.option("--iptables-backend", type=click.Choice(["nft", "legacy"]), default="nft",
                 show_default=True, help="iptables-nft-restore or iptables-legacy."),
    *checkpoint_options(POLICIES, "flush (default): no VM state, a checkpoint is an "
                                  "immediate flush; cmd: run --checkpoint-cmd and flush when "
                                  "it exits 0."),
]


def settings_from_params(params: dict[str, Any]) -> Any:
    """Validate the nfqueue options into NfqueueSettings (InputError if bad)."""
    from ..datapath.nfqueue import NfqueueSettings

    interfaces_from_params(params, "run nfqueue")
    qp, qs = params.get("queue_primary", 0), params.get("queue_secondary", 1)
    if qp == qs:
        raise InputError("--queue-primary and --queue-secondary must differ")
    policy, cmd = checkpoint_from_params(params)
    return NfqueueSettings(
        pvm_if=params["pvm_if"], fwd_if=params["fwd_if"], netns=params.get("netns") or None,
        queue_primary=qp, queue_secondary=qs,
        queue_maxlen=params.get("queue_maxlen") or 1024,
        fail_closed=bool(params.get("fail_closed")),
        rules=params.get("nfq_rules") or "iptables",
        iptables_backend=params.get("iptables_backend") or "nft",
        checkpoint=policy, checkpoint_cmd=cmd,
        events=params.get("events") or None,
        stats_interval=float(params.get("stats_interval") or 0.5),
    )


def run(params: dict[str, Any], config: Config) -> None:
    from ..datapath.nfqueue import NfqueueDatapath

    settings = settings_from_params(params)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="colo-proxy: %(message)s")
    NfqueueDatapath(settings, config).run()


COMMAND = run_command("nfqueue", OPTIONS, run, """Hold PVM output in an NFQUEUE queue until the
    SVM produced the same bytes (root; docs/datapaths.md).""")
