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

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "kmod" / "nfnetlink_colo"
CFLAGS = ["-std=gnu11", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
          "-Wno-unused-parameter", "-fno-strict-aliasing"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def sources() -> list[Path]:
    return sorted(SRC.glob("cmp_*.c"))


def build(sanitize: bool = False) -> Path:
    """Compile the core; return the shared library's path."""
    flags = CFLAGS + (SANITIZE if sanitize else [])
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in sorted(SRC.glob("cmp*.[ch]")):
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
    """Environment for a child process that loads the sanitizer build."""
    asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()
    return dict(os.environ, LD_PRELOAD=asan,
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


@cache
def library(sanitize: bool = False) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build(sanitize)))
    lib.colo_cmp_parse.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int32,
                              ctypes.POINTER(Pkt)]
    lib.colo_cmp_parse.restype = None
    return lib


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
