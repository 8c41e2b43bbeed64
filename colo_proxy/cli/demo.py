"""``colo-proxy demo``: the README's main job."""

from __future__ import annotations

import click

from ..demo.datapaths import DATAPATHS
from ..demo.interrupts import Interrupts


@click.command()
@click.option("--duration", type=click.FloatRange(min=1.0), default=20.0, show_default=True,
              help="Seconds of traffic.")
@click.option("--datapath", type=click.Choice(sorted(DATAPATHS)), default="nfqueue",
              show_default=True, help="Which datapath protects the traffic.")
@click.option("--prefix", default="colo", show_default=True,
              help="Namespace name prefix (<prefix>-client, -phost, -pvm, -shost, -svm).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable summary on stdout (the view goes to stderr).")
@click.option("--live/--plain", "live", default=None,
              help="Rich live view or plain progress lines [default: live on a terminal].")
@click.option("--token-interval", type=click.FloatRange(min=0.0), default=2.0,
              show_default=True, help="Seconds between /session (random token) requests; 0: none.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the children's output here (datapath events, driver lines, stderr).")
def demo(*, duration: float, datapath: str, prefix: str, as_json: bool, live: bool | None,
         token_interval: float, log_dir: str | None) -> None:
    """COLO output comparison protecting real HTTP traffic between namespaces (root).

    Builds client, primary host, PVM, secondary host and SVM namespaces, runs the
    same HTTP service in the PVM and the SVM, the chosen datapath in the primary
    host, and an HTTP client; shows a live view, then explains every checkpoint.
    """
    # Ctrl-C belongs to the demo from here to the end of the process (the session's
    # imports take a while and a second Ctrl-C must not kill the exit either).
    interrupts = Interrupts()
    interrupts.install()
    try:
        from ..demo.session import DemoOptions, run_demo

        run_demo(DemoOptions(duration=duration, datapath=datapath, prefix=prefix,
                             as_json=as_json, live=live, token_interval=token_interval,
                             log_dir=log_dir), interrupts)
    finally:
        interrupts.finish()


COMMANDS = [demo]
