"""``--plot FILE.png``: request latency over time with the checkpoints marked, and
the unprotected baseline beside it (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..errors import ColoError, InputError
from .latency import fmt_ms
from .state import DemoSnapshot


def check_plot(path: str) -> None:
    """Before the run: matplotlib is there and the file can be written."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ColoError("demo: --plot needs matplotlib: pip install 'colo-proxy[plot]'")
    if not path.lower().endswith(".png"):
        raise InputError(f"demo: --plot {path!r}: the file name must end in .png")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"demo: --plot {path!r}: no directory {parent}")


def _points(requests: list[dict[str, Any]], clock: str,
            kinds: set[str]) -> tuple[list[float], list[float]]:
    pts = [(float(r.get(clock, r["t"])), float(r["ms"])) for r in requests
           if r.get("ok") and r.get("kind") in kinds]
    return [p[0] for p in pts], [max(p[1], 0.01) for p in pts]


def write_plot(path: str, snap: DemoSnapshot, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = snap.baseline
    # Time runs at the same scale in both panels, but the baseline's keeps room for
    # its title.
    prot_width = max(snap.elapsed, 1.0)
    widths = [prot_width] + ([max(float(base[-1]["baseline_t"]), 0.3 * prot_width)] if base else [])
    fig, axes = plt.subplots(1, len(widths), sharey=True, figsize=(11, 5),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    prot_ax = axes[0][0]
    lat = summary["request_latency_ms"]
    for ax, requests, clock, name, stats in (
            (prot_ax, snap.requests, "demo_t", f"protected ({summary['datapath']} datapath)",
             lat["protected"]),
            *([(axes[0][1], base, "baseline_t", "unprotected (no datapath)",
                 lat["baseline"])]
              if base else [])):
        title = name
        first = ax is prot_ax  # one legend for the figure: label the first panel's
        x, y = _points(requests, clock, {"keepalive", "new"})
        ax.scatter(x, y, s=8, color="tab:blue", alpha=0.6,
                   label="deterministic request" if first else None)
        x, y = _points(requests, clock, {"token"})
        ax.scatter(x, y, s=40, marker="^", color="tab:orange",
                   label="/session request (random token)" if first else None)
        if stats.get("p50") is not None:
            ax.axhline(stats["p50"], color="tab:green", linestyle="--", linewidth=1,
                       label="median" if first else None)
            title += f"\np50 {fmt_ms(stats['p50'])}, p99 {fmt_ms(stats.get('p99'))}"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("seconds")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for i, t in enumerate(snap.checkpoint_times):
        prot_ax.axvline(t, color="tab:red", alpha=0.7, linewidth=1,
                        label="checkpoint request (flush)" if i == 0 else None)
    prot_ax.set_ylabel("request latency, ms (log scale)")
    handles, labels = prot_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    fig.suptitle("colo-proxy demo: client request latency (request sent to last byte)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise ColoError(f"demo: --plot {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
