"""``colo-proxy demo``: the README's main job."""

from __future__ import annotations

import click

from ..demo.datapaths import DATAPATHS
from ..demo.interrupts import Interrupts
from .types import finite_float


@click.command()
@click.option("--duration", type=finite_float(min=1.0), default=20.0, show_default=True,
              help="Seconds of protected traffic.")
@click.option("--datapath", type=click.Choice(sorted(DATAPATHS)), default="nfqueue",
              show_default=True, help="Which datapath protects the traffic.")
@click.option("--prefix", default="colo", show_default=True,
              help="Namespace name prefix (<prefix>-client, -phost, -pvm, -shost, -svm).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable summary on stdout (the view goes to stderr).")
@click.option("--live/--plain", "live", default=None,
              help="Rich live view or plain progress lines [default: live on a terminal].")
@click.option("--token-interval", type=finite_float(min=0.0), default=2.0,
              show_default=True, help="Seconds between /session (random token) requests; 0: none.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the children's output here (datapath events, driver lines, stderr).")
@click.option("--baseline", type=finite_float(min=0.0), default=5.0, show_default=True,
              help="Seconds of the same traffic without the datapath (half before, half "
                   "after the protected run), for the unprotected request latency; 0: none.")
@click.option("--save-captures", type=click.Path(file_okay=False), default=None,
              metavar="DIR", help="tcpdump the PVM's and the SVM's interface into "
                                  "DIR/primary.pcap and DIR/secondary.pcap (for colo-proxy "
                                  "diff).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="Draw request latency over time, checkpoints marked (needs matplotlib: "
                   "the 'plot' extra).")
@click.option("--ready-timeout", type=finite_float(min=1.0), default=30.0, show_default=True,
              help="Seconds the services, the datapath and the captures may take to start "
                   "(raise it under emulation).")
def demo(*, duration: float, datapath: str, prefix: str, as_json: bool, live: bool | None,
         token_interval: float, log_dir: str | None, baseline: float,
         save_captures: str | None, plot: str | None, ready_timeout: float) -> None:
    """COLO output comparison protecting real HTTP traffic between namespaces (root).

    Builds client, primary host, PVM, secondary host and SVM namespaces, runs the
    same HTTP service in the PVM and the SVM, the chosen datapath in the primary
    host, and an HTTP client; shows a live view, explains every checkpoint, measures
    the same traffic without the datapath, and ends on the summary.
    """
    # Ctrl-C belongs to the demo from here to the end of the process (the session's
    # imports take a while and a second Ctrl-C must not kill the exit either).
    interrupts = Interrupts()
    interrupts.install()
    try:
        from ..demo.session import DemoOptions, run_demo

        run_demo(DemoOptions(duration=duration, datapath=datapath, prefix=prefix,
                             as_json=as_json, live=live, token_interval=token_interval,
                             log_dir=log_dir, baseline=baseline,
                             save_captures=save_captures, plot=plot,
                             ready_timeout=ready_timeout), interrupts)
    finally:
        interrupts.finish()


COMMANDS = [demo]
