"""Text rendering of a diff report: rich styling on a terminal, plain markers otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..compare.model import format_key
from .context import Context, marker_line
from .hexdump import DIFF_STYLE, render_plain, render_rich
from .replay import Checkpoint
from .report import HEX_WIDTH, CaptureInfo, ConnReport, DivergenceReport, Report


def _when(ms: float | None) -> str:
    return "?" if ms is None else f"+{ms / 1000.0:.6f}s"


def _capture_line(label: str, cap: CaptureInfo) -> str:
    text = (f"{label:<9} {cap.path} ({cap.format}, {cap.frames} frames over "
            f"{cap.duration_ms / 1000.0:.3f}s, {cap.vm_frames} sent by the VM)")
    if cap.cut_short is not None:
        text += (f"  WARNING: the file is cut short (it ends inside a record at byte "
                 f"{cap.cut_short}); frames after #{cap.frames} are lost")
    if cap.truncated:
        text += f"  WARNING: {cap.truncated} frames truncated by the capture's snap length"
    return text


def _checkpoint_line(c: Checkpoint, with_key: bool) -> str:
    r = c.request
    text = f"{_when(c.time_ms):>14}  {r.reason!s:<16}"
    if with_key:
        text += f" {format_key(r.key) if r.key is not None else '(no connection)'}"
    if r.divergence is not None:
        text += f" engine offset {r.divergence.offset}"
    if r.detail:
        text += f"  {r.detail}"
    if c.trigger is not None:
        text += f"  [on {c.trigger.side} frame #{c.trigger.index}]"
    return text


_LOSS = ("overflow",)


def _dropped(conn: ConnReport) -> str:
    lost = {k: v for k, v in conn.tally.dropped.items() if k in _LOSS}
    if not lost:
        return ""
    return "; dropped " + ", ".join(f"{v} ({k})" for k, v in sorted(lost.items()))


class Renderer:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.styled = console.is_terminal

    def line(self, text: str | Text = "", style: str = "") -> None:
        if isinstance(text, Text):
            self.console.print(text if self.styled else text.plain, highlight=False,
                               soft_wrap=True, markup=False)
        else:
            self.console.print(text, style=style if self.styled else "", markup=False,
                               highlight=False, soft_wrap=True)

    def report(self, rep: Report) -> None:
        self.line(_capture_line("primary", rep.primary))
        self.line(_capture_line("secondary", rep.secondary))
        vm = rep.vm
        addrs = ", ".join(rep.vm_addresses())
        self.line(f"VM output: {addrs} ({vm['selected_by']}); checkpoint latency "
                  f"{rep.checkpoint_latency_ms:g} ms; compare timeout "
                  f"{rep.config['compare_timeout_ms']:g} ms; time aligned on "
                  + ("the captures' starts" if rep.align == "start" else "absolute timestamps"))
        if rep.rewritten:
            self.line(f"{rep.rewritten} secondary frames re-keyed to the primary's client "
                      "(port pairing / ACK shift)")
        self.line()
        for conn in rep.connections:
            self.connection(conn)
        self.summary(rep)

    def latency_note(self, rep: Report) -> None:
        if len(rep.sensitivity) < 2:
            return
        counts = ", ".join(f"{k:g} ms: {v}" for k, v in sorted(rep.sensitivity.items()))
        dependent = sum(1 for c in rep.connections if c.latency_dependent)
        if not dependent and len(set(rep.sensitivity.values())) == 1:
            self.line(f"  replayed with checkpoint latencies {counts} diverged: the verdict "
                      "does not depend on --checkpoint-latency")
            return
        self.line(f"  WARNING: the verdict depends on the modelled checkpoint latency "
                  f"(connections diverged at {counts}); {dependent} connections marked "
                  "[depends on --checkpoint-latency] may be artefacts of the replay: pass "
                  "the pair's measured latency", style="bold yellow")

    def connection(self, conn: ConnReport) -> None:
        verdict = conn.verdict()
        status = f"DIVERGED ({', '.join(verdict)})" if verdict else "match"
        if conn.latency_dependent:
            status += ("  [depends on --checkpoint-latency: may be an artefact of the "
                       "replay]")
        self.line(Text.assemble((format_key(conn.key), "bold"), "  ",
                                (status, "bold red" if verdict else "green")))
        if conn.paired_from is not None:
            self.line(f"  secondary connection {format_key(conn.paired_from)} paired by order")
        self.line(f"  primary {conn.frames[0]} frames / {conn.bytes[0]} B, secondary "
                  f"{conn.frames[1]} frames / {conn.bytes[1]} B; matched "
                  f"{conn.matched_frames} packets / {conn.matched_bytes} B"
                  + (f"; {conn.tally.released_by_checkpoint} released by a checkpoint"
                     if conn.tally.released_by_checkpoint else "")
                  + (f"; {conn.tally.covered} secondary frames covered by a checkpoint"
                     if conn.tally.covered else "")
                  + (f"; {conn.tally.trimmed} trimmed to the primary's progress at a "
                     "checkpoint" if conn.tally.trimmed else "")
                  + (f"; {conn.tally.resent} resent after a checkpoint"
                     if conn.tally.resent else "")
                  + _dropped(conn))
        if conn.first_divergence is not None:
            self.divergence(conn.first_divergence)
        elif conn.stream_first_difference is not None:
            self.line(f"  streams differ from offset {conn.stream_first_difference}")
        if conn.checkpoints:
            self.line(f"  checkpoints ({len(conn.checkpoints)}):")
            for c in conn.checkpoints:
                self.line("  " + _checkpoint_line(c, with_key=False))
        self.line()

    def divergence(self, d: DivergenceReport) -> None:
        where = f"stream offset {d.offset}" if d.offset is not None else "unknown stream offset"
        if d.engine_offset is not None and d.engine_offset != d.offset:
            where += f" (engine offset {d.engine_offset}, relative to its last re-base)"
        if d.secondary_offset is not None and d.secondary_offset != d.offset:
            where += f", secondary stream offset {d.secondary_offset}"
        head = (f"  first divergence: {d.reason} at {where}, {_when(d.time_ms)}"
                if d.source == "engine" else
                f"  first divergence (reassembled streams; the engine gave no offset): {where}")
        self.line(head)
        if self.styled:
            for text in render_rich(d.rows, HEX_WIDTH):
                self.line(Text("    ").append_text(text))
        else:
            for text_line in render_plain(d.rows, HEX_WIDTH):
                self.line("    " + text_line)
        for label, ctx in (("primary", d.primary_context), ("secondary", d.secondary_context)):
            if ctx is not None:
                self.context(label, ctx)

    def context(self, side: str, ctx: Context) -> None:
        prefix = f"    {side:<9} {ctx.label}: "
        if self.styled:
            text = Text(prefix)
            body = Text(ctx.text)
            for start, end in ctx.marks:
                body.stylize(DIFF_STYLE, start, end)
            self.line(text.append_text(body))
        else:
            self.line(prefix + ctx.text)
            self.line(" " * len(prefix) + marker_line(ctx))

    def summary(self, rep: Report) -> None:
        diverged = sum(1 for c in rep.connections if c.diverged)
        self.line(Text("Summary", style="bold"))
        self.line(f"  {len(rep.connections)} connections, {diverged} diverged; matched "
                  f"{sum(c.matched_frames for c in rep.connections)} packets / "
                  f"{sum(c.matched_bytes for c in rep.connections)} B")
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(rep.reasons().items()))
        self.line(f"  {len(rep.checkpoints)} checkpoints requested"
                  + (f" ({reasons})" if reasons else "")
                  + f"; {rep.suppressed} further requests suppressed while one was pending")
        if rep.still_held:
            self.line(f"  {rep.still_held} frames were never released or dropped by the engine")
        self.latency_note(rep)
        keyless = rep.keyless()
        if keyless:
            self.line("  checkpoints not tied to a connection:")
            for c in keyless:
                self.line("  " + _checkpoint_line(c, with_key=True))
