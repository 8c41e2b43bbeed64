"""``colo-proxy run kernel``: options and entry point (docs/architecture.md, "The control
side in Python")."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from ..compare.model import Config
from .run_options import (
    checkpoint_from_params,
    checkpoint_options,
    interfaces_from_params,
    run_command,
)

POLICIES = ["flush", "cmd"]

OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--netns", metavar="NAME",
                 help="Network namespace of the node and its devices (phost)."),
    click.option("--pvm-if", metavar="IF",
                 help="The PVM's tap: phost interface the PVM's output arrives on."),
    click.option("--fwd-if", metavar="IF",
                 help="phost interface of the forward link (SVM output arrives here)."),
    click.option("--owner-loss", type=click.Choice(["release", "drop"]), default="release",
                 show_default=True,
                 help="What the kernel does with held PVM output when the node goes "
                      "(exit, crash of this process): release it (the PVM is "
                      "authoritative) or drop it."),
    *checkpoint_options(POLICIES, "flush (default): no VM state, a checkpoint is an "
                                  "immediate DO_CHECKPOINT; cmd: run --checkpoint-cmd and "
                                  "send DO_CHECKPOINT when it exits 0."),
]


def settings_from_params(params: dict[str, Any]) -> Any:
    """Validate the kernel options into KernelSettings (InputError if bad)."""
    from ..datapath.kernel import KernelSettings

    interfaces_from_params(params, "run kernel")
    policy, cmd = checkpoint_from_params(params)
    return KernelSettings(
        pvm_if=params["pvm_if"], fwd_if=params["fwd_if"], netns=params.get("netns") or None,
        owner_loss=params.get("owner_loss") or "release",
        checkpoint=policy, checkpoint_cmd=cmd,
        events=params.get("events") or None,
        stats_interval=float(params.get("stats_interval") or 0.5),
    )


def run(params: dict[str, Any], config: Config) -> None:
    from ..datapath.kernel import KernelDatapath

    settings = settings_from_params(params)
    datapath = KernelDatapath(settings, config)  # InputError before any log line
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="colo-proxy: %(message)s")
    datapath.run()


COMMAND = run_command("kernel", OPTIONS, run, """Attach a PMYCOLO node of the nf_colo module:
    the kernel holds PVM output until the SVM produced the same bytes; this process
    turns its checkpoint requests into checkpoints (root; docs/architecture.md).""")
