"""``colo-proxy agent CONFIG``: the per-host COLO agent (docs/operations.md)."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import sys

import click

from ..agent.config import ConfigErrors, load
from .engine_options import config_from_options, engine_options


@click.command(name="agent")
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", count=True, help="-v: debug logging (every checkpoint).")
@engine_options
def agent(config_file: str, verbose: int, **engine: object) -> None:
    """Run the agent for every VM of CONFIG until SIGTERM/SIGINT."""
    from ..agent.runner import AgentRunner

    try:
        cfg = load(config_file)
    except ConfigErrors as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for line in cfg.warnings:
        logging.getLogger("colo_proxy.agent").warning("%s", line)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1: every thread's stack on stderr
    runner = AgentRunner(cfg, config_from_options(dict(engine)))
    asyncio.run(runner.run())


COMMANDS: list[click.Command] = [agent]
