"""``colo-proxy run qemu-socket``: options and entry point (docs/qemu.md)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import click

from ..compare.model import Config
from ..datapath.endpoints import Endpoint, parse_endpoint
from ..errors import ColoError, InputError
from .run_options import checkpoint_options, run_command
from .types import finite_float

_VNET_NAMES = ("primary-in", "secondary-in", "outdev")
POLICIES = ["notify", "cmd", "flush", "none"]

OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--primary-in", metavar="ENDPOINT",
                 help="Primary guest output from filter-redirector: "
                      "tcp:HOST:PORT or unix:PATH, add ',server' to listen."),
    click.option("--secondary-in", metavar="ENDPOINT",
                 help="Secondary guest output (same syntax)."),
    click.option("--outdev", metavar="ENDPOINT",
                 help="Where released primary frames go (same syntax)."),
    click.option("--notify-dev", metavar="ENDPOINT",
                 help="colo-compare notify_dev protocol: send DO_CHECKPOINT, "
                      "receive COLO_CHECKPOINT (same syntax)."),
    click.option("--vnet-hdr", "vnet_hdr", multiple=True,
                 type=click.Choice(["all", *_VNET_NAMES]),
                 help="Endpoint(s) with vnet_hdr_support=on framing "
                      "(repeatable; 'all' = the three data endpoints)."),
    *checkpoint_options(POLICIES, "Default: notify with --notify-dev (a --checkpoint-cmd "
                                  "then only notifies), else cmd with --checkpoint-cmd, "
                                  "else none (requests are reported, held frames wait)."),
    click.option("--expired-scan-cycle", type=finite_float(min=1.0), default=100.0,
                 show_default=True, help="ms between timeout scans of the held frames."),
    click.option("--held-on-exit", type=click.Choice(["flush", "drop"]), default="flush",
                 show_default=True,
                 help="On SIGTERM/SIGINT release held primary frames to "
                      "outdev (flush) or discard them (drop)."),
]


def _resolve(option: str, ep: Endpoint) -> None:
    """A TCP host name that does not resolve is bad input, not an endless retry."""
    if ep.kind != "tcp":
        return
    try:
        socket.getaddrinfo(ep.address, ep.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"{option} {ep}: cannot resolve {ep.address!r}: {exc.strerror}") \
            from None


def settings_from_params(params: dict[str, Any]) -> Any:
    """Validate the qemu-socket options into QemuSocketSettings (InputError if bad)."""
    from ..datapath.qemu_socket import QemuSocketSettings

    missing = [f"--{name.replace('_', '-')}" for name in ("primary_in", "secondary_in", "outdev")
               if not params.get(name)]
    if missing:
        raise InputError(f"run qemu-socket needs {', '.join(missing)}")
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
    cmd = params.get("checkpoint_cmd") or None
    policy = params.get("checkpoint_policy") or None
    if policy == "notify" and notify is None:
        raise InputError("--checkpoint notify needs --notify-dev ENDPOINT")
    if policy == "cmd" and not cmd:
        raise InputError("--checkpoint cmd needs --checkpoint-cmd CMD")
    if policy in ("flush", "none") and cmd:
        raise InputError(f"--checkpoint-cmd is not used with --checkpoint {policy}")
    for opt, ep in named.items():
        _resolve(opt, ep)
    chosen = set(params.get("vnet_hdr") or ())
    if "all" in chosen:
        chosen = set(_VNET_NAMES)
    return QemuSocketSettings(
        primary_in=primary, secondary_in=secondary, outdev=outdev, notify=notify,
        vnet_hdr=frozenset(name.replace("-", "_") for name in chosen),
        checkpoint_cmd=cmd, checkpoint=policy,
        scan_interval_ms=float(params.get("expired_scan_cycle") or 100.0),
        held_on_exit=params.get("held_on_exit") or "flush",
        events=params.get("events") or None,
        stats_interval=float(params.get("stats_interval") or 0.5),
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


COMMAND = run_command("qemu-socket", OPTIONS, run, """Replace QEMU's -object colo-compare:
    compare the frames of QEMU's filter-redirectors (docs/qemu.md).""")
