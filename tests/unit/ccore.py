"""The C compare core (kmod/nfnetlink_colo/cmp*.[ch]) as a userspace library, for the tests
that check it decides exactly like the Python engine.

``library(sanitize=False)`` compiles the core with the host's gcc into
``build/ccore/<hash>/`` (keyed by the sources and flags, so reruns reuse it) and loads it
with ctypes.  ``sanitize=True`` builds with ASan and UBSan; such a library only loads in
a process started with libasan preloaded (see ``sanitizer_env``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from functools import cache
from pathlib import Path

from colo_proxy.compare.model import (
    Config,
    Counters,
    Decision,
    Drop,
    DropReason,
    Reason,
    Release,
)

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "kmod" / "nfnetlink_colo"
CFLAGS = ["-std=gnu11", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
          "-Wno-unused-parameter", "-fno-strict-aliasing"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def sources() -> list[Path]:
    return [*sorted(SRC.glob("cmp_*.c")), SRC / "xlate.c"]


def build(sanitize: bool = False) -> Path:
    """Compile the core; return the shared library's path."""
    flags = CFLAGS + (SANITIZE if sanitize else [])
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in [*sorted(SRC.glob("cmp*.[ch]")), SRC / "xlate.c", SRC / "xlate.h"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = REPO / "build" / "ccore" / digest.hexdigest()[:16]
    lib = out / ("libcolocmp-san.so" if sanitize else "libcolocmp.so")
    if not lib.exists():
        out.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".tmp{os.getpid()}")
        subprocess.run(["gcc", *flags, "-o", str(tmp), *map(str, sources())], check=True)
        tmp.replace(lib)
    return lib


def sanitizer_env() -> dict[str, str]:
    """Environment for a child process that loads the sanitizer build (every Python
    allocation through malloc, so that buffers handed to the core have redzones)."""
    asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()
    return dict(os.environ, LD_PRELOAD=asan, PYTHONMALLOC="malloc",
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")


class Key(ctypes.Structure):
    _fields_ = [("vlan", ctypes.c_int64), ("l3", ctypes.c_uint16), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("frag", ctypes.c_uint8),
                ("alen", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 7),
                ("src", ctypes.c_uint8 * 16), ("dst", ctypes.c_uint8 * 16)]

    def as_tuple(self) -> tuple[int, int, bytes, bytes, int, int, int, bool]:
        """The Python engine's key tuple (parse.py / model.ConnKey layout)."""
        n = self.alen
        return (self.vlan, self.l3, bytes(self.src[:n]), bytes(self.dst[:n]), self.proto,
                self.sport, self.dport, bool(self.frag))


class Pkt(ctypes.Structure):
    _fields_ = [("cls", ctypes.c_uint8), ("malformed", ctypes.c_bool),
                ("flags", ctypes.c_uint8), ("head_len", ctypes.c_uint8),
                ("seq", ctypes.c_uint32), ("ack", ctypes.c_uint32), ("key", Key),
                ("payload", ctypes.c_void_p), ("plen", ctypes.c_uint32),
                ("head", ctypes.c_uint8 * 12), ("body", ctypes.c_void_p),
                ("body_len", ctypes.c_uint32)]


class CDecision(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint8), ("side", ctypes.c_uint8), ("reason", ctypes.c_uint8),
                ("has_key", ctypes.c_uint8), ("has_div", ctypes.c_uint8),
                ("div_plen", ctypes.c_uint8), ("div_slen", ctypes.c_uint8),
                ("pad", ctypes.c_uint8), ("tag", ctypes.c_uint64), ("time_us", ctypes.c_int64),
                ("div_offset", ctypes.c_int64), ("key", Key),
                ("div_p", ctypes.c_uint8 * 64), ("div_s", ctypes.c_uint8 * 64)]


class CRule(ctypes.Structure):
    _fields_ = [("proto", ctypes.c_int16), ("port", ctypes.c_int32), ("family", ctypes.c_int8),
                ("prefix", ctypes.c_uint8), ("net", ctypes.c_uint8 * 16)]


class CConfig(ctypes.Structure):
    _fields_ = [("compare_timeout_us", ctypes.c_int64), ("max_queue_per_conn", ctypes.c_uint32),
                ("max_held_bytes", ctypes.c_uint64), ("max_connections", ctypes.c_uint32),
                ("nrules", ctypes.c_uint32), ("rules", CRule * 16)]


COUNTER_FIELDS = ["frames", "bytes", "released", "dropped", "pairs_matched", "bytes_compared",
                  "checkpoint_requests", "requests_suppressed", "checkpoints_done",
                  "passthrough", "control_passed", "malformed", "overflow",
                  "connections_evicted", "connections_now", "held_frames_now",
                  "held_bytes_now"]


class CCounters(ctypes.Structure):
    _fields_ = [("frames", ctypes.c_uint64 * 2), ("bytes", ctypes.c_uint64 * 2),
                ("released", ctypes.c_uint64), ("dropped", ctypes.c_uint64 * 8),
                ("pairs_matched", ctypes.c_uint64), ("bytes_compared", ctypes.c_uint64),
                ("checkpoint_requests", ctypes.c_uint64 * 6),
                ("requests_suppressed", ctypes.c_uint64), ("checkpoints_done", ctypes.c_uint64),
                ("passthrough", ctypes.c_uint64), ("control_passed", ctypes.c_uint64),
                ("malformed", ctypes.c_uint64), ("overflow", ctypes.c_uint64),
                ("connections_evicted", ctypes.c_uint64), ("connections_now", ctypes.c_int64),
                ("held_frames_now", ctypes.c_int64), ("held_bytes_now", ctypes.c_int64)]


@cache
def library(sanitize: bool = False) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build(sanitize)))
    lib.colo_cmp_parse.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int32,
                                   ctypes.POINTER(Pkt)]
    lib.colo_cmp_parse.restype = None
    lib.colo_cmp_engine_new.argtypes = [ctypes.POINTER(CConfig)]
    lib.colo_cmp_engine_new.restype = ctypes.c_void_p
    lib.colo_cmp_engine_push.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_char_p,
                                         ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64,
                                         ctypes.c_int32]
    lib.colo_cmp_engine_push.restype = ctypes.c_int
    for name in ("colo_cmp_engine_tick", "colo_cmp_engine_checkpoint_done"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int64]
        getattr(lib, name).restype = None
    lib.colo_cmp_engine_take.argtypes = [ctypes.c_void_p,
                                         ctypes.POINTER(ctypes.POINTER(CDecision))]
    lib.colo_cmp_engine_take.restype = ctypes.c_size_t
    lib.colo_cmp_engine_counters.argtypes = [ctypes.c_void_p]
    lib.colo_cmp_engine_counters.restype = ctypes.POINTER(CCounters)
    lib.colo_cmp_engine_pending.argtypes = [ctypes.c_void_p]
    lib.colo_cmp_engine_pending.restype = ctypes.c_bool
    lib.colo_cmp_engine_set_retired_max.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.colo_cmp_engine_set_retired_max.restype = None
    lib.colo_cmp_engine_retired_now.argtypes = [ctypes.c_void_p]
    lib.colo_cmp_engine_retired_now.restype = ctypes.c_uint32
    lib.colo_cmp_engine_fail_alloc.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.colo_cmp_engine_fail_alloc.restype = None
    lib.colo_cmp_engine_free.argtypes = [ctypes.c_void_p]
    lib.colo_cmp_engine_free.restype = None
    for name in ("colo_xlate_from_svm", "colo_xlate_to_svm"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(XlateFlow), ctypes.c_char_p, ctypes.c_uint32,
                       ctypes.POINTER(XlateEdit), ctypes.POINTER(ctypes.c_uint)]
        fn.restype = ctypes.c_int
    return lib


class XlateFlow(ctypes.Structure):
    _fields_ = [("sec_isn", ctypes.c_uint32), ("pri_isn", ctypes.c_uint32),
                ("offset", ctypes.c_uint32), ("have_sec", ctypes.c_bool),
                ("have_pri", ctypes.c_bool), ("active", ctypes.c_bool),
                ("translated", ctypes.c_uint64)]


class XlateEdit(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint16), ("from_", ctypes.c_uint32), ("to", ctypes.c_uint32)]


XLATE_PASS, XLATE_HOLD, XLATE_BAD = 0, 1, 2


def xlate(direction: str, flow: XlateFlow, tcp_header: bytes,
          lib: ctypes.CDLL | None = None) -> tuple[int, list[tuple[int, int, int]]]:
    """Run colo_xlate_from_svm ("from_svm") or colo_xlate_to_svm ("to_svm") on a TCP
    header (and whatever follows it); returns the verdict and the edits
    ``(offset, from, to)``."""
    lib = lib or library()
    edits = (XlateEdit * 10)()
    n = ctypes.c_uint()
    fn = getattr(lib, f"colo_xlate_{direction}")
    verdict = fn(ctypes.byref(flow), tcp_header, len(tcp_header), edits, ctypes.byref(n))
    return verdict, [(e.off, e.from_, e.to) for e in edits[:n.value]]


REASONS = [r.value for r in Reason]
DROPS = [r.value for r in DropReason]


def _key(k: Key, present: int) -> tuple[object, ...] | None:
    return k.as_tuple() if present else None


def c_config(config: Config) -> CConfig:
    cfg = CConfig(compare_timeout_us=round(config.compare_timeout_ms * 1000),
                  max_queue_per_conn=config.max_queue_per_conn,
                  max_held_bytes=config.max_held_bytes,
                  max_connections=config.max_connections, nrules=len(config.passthrough))
    for i, rule in enumerate(config.passthrough):
        c = cfg.rules[i]
        c.proto = -1 if rule.proto is None else rule.proto
        c.port = -1 if rule.port is None else rule.port
        c.family = -1
        if rule.net is not None:
            c.family = rule.net.version
            c.prefix = rule.net.prefixlen
            packed = rule.net.network_address.packed
            c.net[:len(packed)] = list(packed)
    return cfg


class CEngine:
    """The C engine behind the Python engine's interface; decisions as plain tuples
    (``normalise`` turns the Python engine's into the same shape).  Times are in
    whole milliseconds here, so both engines see exactly the same clock."""

    def __init__(self, config: Config, lib: ctypes.CDLL | None = None) -> None:
        self.lib = lib or library()
        self._cfg = c_config(config)
        self.handle = self.lib.colo_cmp_engine_new(ctypes.byref(self._cfg))
        if not self.handle:
            raise MemoryError("colo_cmp_engine_new")

    def close(self) -> None:
        if self.handle:
            self.lib.colo_cmp_engine_free(self.handle)
            self.handle = None

    def _take(self) -> list[tuple[object, ...]]:
        ptr = ctypes.POINTER(CDecision)()
        n = self.lib.colo_cmp_engine_take(self.handle, ctypes.byref(ptr))
        out: list[tuple[object, ...]] = []
        for i in range(n):
            d = ptr[i]
            key = _key(d.key, d.has_key)
            if d.kind == 0:
                out.append(("release", d.tag, key, d.time_us / 1000))
            elif d.kind == 1:
                out.append(("drop", d.side, d.tag, key, DROPS[d.reason]))
            else:
                div = None
                if d.has_div:
                    div = (d.div_offset, bytes(d.div_p[:d.div_plen]),
                           bytes(d.div_s[:d.div_slen]))
                out.append(("request", REASONS[d.reason], key, d.time_us / 1000, div))
        return out

    def push(self, side: int, frame: bytes, now_ms: int, tag: int,
             vnet_hdr_len: int = 0) -> list[tuple[object, ...]]:
        rc = self.lib.colo_cmp_engine_push(self.handle, side, frame, len(frame), now_ms * 1000,
                                           tag, vnet_hdr_len)
        if rc:
            raise RuntimeError(f"colo_cmp_engine_push: {rc}")
        return self._take()

    def tick(self, now_ms: int) -> list[tuple[object, ...]]:
        self.lib.colo_cmp_engine_tick(self.handle, now_ms * 1000)
        return self._take()

    def checkpoint_done(self, now_ms: int) -> list[tuple[object, ...]]:
        self.lib.colo_cmp_engine_checkpoint_done(self.handle, now_ms * 1000)
        return self._take()

    def set_retired_max(self, n: int) -> None:
        self.lib.colo_cmp_engine_set_retired_max(self.handle, n)

    def fail_alloc(self, after: int) -> None:
        """The per-connection allocation after ``after`` more fails (-1: none)."""
        self.lib.colo_cmp_engine_fail_alloc(self.handle, after)

    @property
    def retired_now(self) -> int:
        return int(self.lib.colo_cmp_engine_retired_now(self.handle))

    @property
    def checkpoint_pending(self) -> bool:
        return bool(self.lib.colo_cmp_engine_pending(self.handle))

    def counters(self) -> dict[str, object]:
        c = self.lib.colo_cmp_engine_counters(self.handle).contents
        out: dict[str, object] = {}
        for name in COUNTER_FIELDS:
            value = getattr(c, name)
            if name == "dropped":
                out[name] = {DROPS[i]: v for i, v in enumerate(value) if v}
            elif name == "checkpoint_requests":
                out[name] = {REASONS[i]: v for i, v in enumerate(value) if v}
            elif name in ("frames", "bytes"):
                out[name] = list(value)
            else:
                out[name] = value
        return out


def normalise(decisions: list[Decision]) -> list[tuple[object, ...]]:
    """The Python engine's decisions in CEngine's tuple shape."""
    out: list[tuple[object, ...]] = []
    for d in decisions:
        key = tuple(d.key) if d.key is not None else None
        if isinstance(d, Release):
            out.append(("release", d.tag, key, d.held_ms))
        elif isinstance(d, Drop):
            out.append(("drop", int(d.side), d.tag, key, str(d.reason)))
        else:
            div = tuple(d.divergence) if d.divergence is not None else None
            out.append(("request", str(d.reason), key, d.time_ms, div))
    return out


def py_counters(c: Counters) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in COUNTER_FIELDS:
        value = getattr(c, name)
        if name in ("dropped", "checkpoint_requests"):
            out[name] = {str(k): v for k, v in value.items() if v}
        elif name in ("frames", "bytes"):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def _at(base: int, frame: bytes, ptr: int | None, n: int) -> bytes:
    if not n:
        return b""
    assert ptr is not None
    start = ptr - base
    assert start >= 0 and start + n <= len(frame), "pointer outside the frame"
    return frame[start:start + n]


def parse(frame: bytes, vnet_hdr_len: int, lib: ctypes.CDLL | None = None) -> tuple[object, ...]:
    """The C parser's result in parse.py's six-item shape."""
    lib = lib or library()
    buf = ctypes.create_string_buffer(frame, len(frame))
    base = ctypes.addressof(buf)
    pkt = Pkt()
    lib.colo_cmp_parse(buf, len(frame), vnet_hdr_len, ctypes.byref(pkt))
    raw = buf.raw[:len(frame)]
    if pkt.cls == 3:
        return (3, None, 0, 0, 0, b"")
    key = pkt.key.as_tuple()
    if pkt.cls == 0:
        return (0, key, pkt.seq, pkt.ack, pkt.flags, _at(base, raw, pkt.payload, pkt.plen))
    if pkt.cls == 2:
        return (2, key, 0, 0, 0, b"")
    data = bytes(pkt.head[:pkt.head_len]) + _at(base, raw, pkt.body, pkt.body_len)
    return (1, key, data, bool(pkt.malformed), 0, b"")
