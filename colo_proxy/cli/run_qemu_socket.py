"""``colo-proxy run --datapath qemu-socket``: options and entry point (docs/qemu.md)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from ..compare.model import Config
from ..datapath.endpoints import parse_endpoint
from ..errors import ColoError, InputError
from .types import finite_float

_VNET_NAMES = ("primary-in", "secondary-in", "outdev")

OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--primary-in", metavar="ENDPOINT",
                 help="[qemu-socket] Primary guest output from filter-redirector: "
                      "tcp:HOST:PORT or unix:PATH, add ',server' to listen."),
    click.option("--secondary-in", metavar="ENDPOINT",
                 help="[qemu-socket] Secondary guest output (same syntax)."),
    click.option("--outdev", metavar="ENDPOINT",
                 help="[qemu-socket] Where released primary frames go (same syntax)."),
    click.option("--notify-dev", metavar="ENDPOINT",
                 help="[qemu-socket] colo-compare notify_dev protocol: send DO_CHECKPOINT, "
                      "receive COLO_CHECKPOINT (same syntax)."),
    click.option("--vnet-hdr", "vnet_hdr", multiple=True,
                 type=click.Choice(["all", *_VNET_NAMES]),
                 help="[qemu-socket] Endpoint(s) with vnet_hdr_support=on framing "
                      "(repeatable; 'all' = the three data endpoints)."),
    click.option("--on-checkpoint", metavar="CMD",
                 help="[qemu-socket] Shell command run per checkpoint request; without "
                      "--notify-dev its exit status 0 means the checkpoint is done."),
    click.option("--expired-scan-cycle", type=finite_float(min=1.0), default=100.0,
                 show_default=True,
                 help="[qemu-socket] ms between timeout scans of the held frames."),
    click.option("--held-on-exit", type=click.Choice(["flush", "drop"]), default="flush",
                 show_default=True,
                 help="[qemu-socket] On SIGTERM/SIGINT release held primary frames to "
                      "outdev (flush) or discard them (drop)."),
]


def settings_from_params(params: dict[str, Any]) -> Any:
    """Validate the qemu-socket options into QemuSocketSettings (InputError if bad)."""
    from ..datapath.qemu_socket import QemuSocketSettings

    missing = [f"--{name.replace('_', '-')}" for name in ("primary_in", "secondary_in", "outdev")
               if not params.get(name)]
    if missing:
        raise InputError(f"--datapath qemu-socket needs {', '.join(missing)}")
    primary = parse_endpoint(params["primary_in"], "--primary-in")
    secondary = parse_endpoint(params["secondary_in"], "--secondary-in")
    outdev = parse_endpoint(params["outdev"], "--outdev")
    notify = (parse_endpoint(params["notify_dev"], "--notify-dev")
              if params.get("notify_dev") else None)
    named = {"--primary-in": primary, "--secondary-in": secondary, "--outdev": outdev}
    if notify is not None:
        named["--notify-dev"] = notify
    seen: dict[str, str] = {}
    for opt, ep in named.items():
        key = str(ep).removesuffix(",server")
        if key in seen:
            raise InputError(f"{opt} and {seen[key]} use the same endpoint {key}")
        seen[key] = opt
    chosen = set(params.get("vnet_hdr") or ())
    if "all" in chosen:
        chosen = set(_VNET_NAMES)
    return QemuSocketSettings(
        primary_in=primary, secondary_in=secondary, outdev=outdev, notify=notify,
        vnet_hdr=frozenset(name.replace("-", "_") for name in chosen),
        on_checkpoint=params.get("on_checkpoint") or None,
        scan_interval_ms=float(params.get("expired_scan_cycle") or 100.0),
        held_on_exit=params.get("held_on_exit") or "flush",
    )


def run(params: dict[str, Any], config: Config) -> None:
    from ..compare.engine import Engine
    from ..datapath.qemu_socket import QemuSocketDatapath

    settings = settings_from_params(params)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="colo-proxy: %(message)s")
    datapath = QemuSocketDatapath(Engine(config), settings)
    try:
        asyncio.run(datapath.run())
    except OSError as exc:
        raise ColoError(f"qemu-socket: {exc.strerror or exc}") from None
