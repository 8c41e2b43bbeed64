"""``colo-proxy diff`` end to end: read, select the VM output, pair, replay, report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ..compare.engine import Engine
from ..compare.model import Config, ConnKey, PassthroughRule, Side
from ..errors import InputError
from .capture import Capture, read_capture
from .headers import Headers, parse
from .pairing import Normalizer, pair, tcp_connections
from .replay import Output, Replay
from .report import CaptureInfo, Report, build_report, diverged_keys
from .vm import VmSelector, choose_vm


@dataclasses.dataclass(frozen=True)
class DiffOptions:
    vm_ips: Sequence[str] = ()
    vm_macs: Sequence[str] = ()
    checkpoint_latency_ms: float = 50.0
    exact_keys: bool = False
    """Do not pair connections or shift ACK numbers (captures of one real COLO pair)."""
    absolute_time: bool = False
    """Keep the captures' own timestamps (one clock) instead of aligning their starts."""


def alternative_latencies(latency: float) -> list[float]:
    """The other checkpoint latencies replayed to show how much the verdict depends on the
    model: none at all, and twice the given one (50 ms when it is 0)."""
    return [0.0, 2 * latency] if latency > 0 else [50.0]


def _config_dict(config: Config) -> dict[str, object]:
    def rule(r: PassthroughRule) -> dict[str, object]:
        return {"proto": r.proto, "net": str(r.net) if r.net else None, "port": r.port}

    return {
        "compare_timeout_ms": config.compare_timeout_ms,
        "max_queue_per_conn": config.max_queue_per_conn,
        "max_held_bytes": config.max_held_bytes,
        "max_connections": config.max_connections,
        "passthrough": [rule(r) for r in config.passthrough],
    }


def diff_captures(primary_path: str, secondary_path: str, config: Config,
                  options: DiffOptions) -> Report:
    primary = read_capture(primary_path)
    secondary = read_capture(secondary_path)
    try:
        return _diff(primary, secondary, config, options)
    except InputError as exc:
        cut = [f"{c.path} is cut short after frame #{len(c.frames)}"
               for c in (primary, secondary) if c.cut_short is not None]
        if not cut:
            raise
        raise InputError(f"{exc} (note: {'; '.join(cut)})") from None


def _diff(primary: Capture, secondary: Capture, config: Config,
          options: DiffOptions) -> Report:
    primary_path, secondary_path = primary.path, secondary.path
    p_headers = [parse(f.data) for f in primary.frames]
    s_headers = [parse(f.data) for f in secondary.frames]
    selector = choose_vm(p_headers, s_headers, options.vm_ips, options.vm_macs,
                         (primary_path, secondary_path))
    is_output = selector.is_output

    p_conns = tcp_connections(p_headers, is_output)
    s_conns = tcp_connections(s_headers, is_output)
    mapping = {} if options.exact_keys else pair(p_conns, s_conns)
    normalize = None if options.exact_keys else Normalizer(p_conns, mapping, is_output)

    base = min(primary.start, secondary.start)
    shifts = ((primary.start - base) * 1000.0, (secondary.start - base) * 1000.0) \
        if options.absolute_time else (0.0, 0.0)
    p_out = _outputs(primary, p_headers, Side.PRIMARY, is_output, None, shift_ms=shifts[0])
    s_out = _outputs(secondary, s_headers, Side.SECONDARY, is_output, normalize,
                     shift_ms=shifts[1])
    for cap, outs in ((primary, p_out), (secondary, s_out)):
        if not outs:
            raise InputError(f"{cap.path}: no frames sent by the VM "
                             f"({_describe(selector)}); wrong capture or --vm-ip?")
    p_keys = {o.headers.key for o in p_out}
    if not p_keys & {o.headers.key for o in s_out}:
        raise InputError("the captures share no connection of the VM's output: "
                         "mismatched captures (different services or clients?)")

    engine = Engine(config)
    result = Replay(engine, options.checkpoint_latency_ms).run(p_out, s_out)
    stats = engine.stats
    sensitivity: dict[float, set[ConnKey]] = {options.checkpoint_latency_ms: diverged_keys(result)}
    for latency in alternative_latencies(options.checkpoint_latency_ms):
        sensitivity[latency] = diverged_keys(Replay(Engine(config), latency).run(p_out, s_out))
    return build_report(
        result,
        primary=_info(primary, len(p_out)),
        secondary=_info(secondary, len(s_out)),
        vm=selector.describe(),
        config=_config_dict(config),
        latency=options.checkpoint_latency_ms,
        align="absolute" if options.absolute_time else "start",
        rewritten=normalize.rewritten if normalize else 0,
        paired_from={pkey: skey for skey, pkey in mapping.items()},
        suppressed=stats.requests_suppressed,
        checkpoints_done=stats.checkpoints_done,
        sensitivity=sensitivity,
        counters=stats.as_dict(),
    )


def _describe(selector: VmSelector) -> str:
    vm = selector.describe()
    parts = [str(x) for key in ("ips", "macs") for x in _strings(vm[key])]
    return "VM " + ", ".join(parts) if parts else "no VM address"


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _info(cap: Capture, vm_frames: int) -> CaptureInfo:
    return CaptureInfo(cap.path, cap.format, len(cap.frames), vm_frames, cap.start,
                       cap.duration_ms, cap.truncated, cap.cut_short)


def _outputs(cap: Capture, headers: list[Headers | None], side: Side,
             is_output: Callable[[Headers], bool],
             normalize: Normalizer | None, *, shift_ms: float) -> list[Output]:
    outs = []
    for frame, parsed in zip(cap.frames, headers, strict=True):
        if parsed is None:
            continue
        h, data = parsed, frame.data
        if normalize is not None:
            h, data = normalize(h, data)
        if is_output(h):
            outs.append(Output(frame.time_ms + shift_ms, side, frame.index, data, h))
    outs.sort(key=lambda o: o.time_ms)
    return outs
