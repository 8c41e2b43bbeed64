"""The C compare core under AddressSanitizer and UndefinedBehaviorSanitizer: random and
mangled frames of every protocol through the parser and the engine, TCP streams (the
differential's generator) with failing allocations and a small retired table, and random TCP
headers through the secondary's sequence translation, in a child process that preloads
libasan (a sanitizer report aborts it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import ccore

HERE = Path(__file__).resolve().parent

FUZZ = textwrap.dedent("""
    import random, sys
    sys.path[:0] = [{here!r}]
    import ccore
    from test_ccore_engine import ALL_SEEDS, flow_frames
    from test_ccore_parse import SEEDS
    from colo_proxy.compare import Config
    lib = ccore.library(sanitize=True)
    rng = random.Random(20261202)
    seeds = SEEDS + ALL_SEEDS
    flows = []
    def mangled():
        if rng.random() < 0.3:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        f = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(6)):
            if f:
                f[rng.randrange(len(f))] = rng.randrange(256)
        if f and rng.random() < 0.5:
            f = f[:rng.randrange(len(f))]
        return bytes(f)
    for i in range({frames}):
        ccore.parse(mangled(), rng.choice([0, 0, 12, 300, -1]), lib)
    engine = ccore.CEngine(Config(compare_timeout_ms=30, max_queue_per_conn=3,
                                  max_held_bytes=2000, max_connections=5), lib)
    engine.set_retired_max(3)
    now = 0
    for i in range({frames}):
        now += rng.randrange(20)
        r = rng.random()
        if r < 0.6:
            engine.push(rng.randrange(2), mangled(), now, i, 0)
        elif r < 0.9:
            if not flows:
                flows.extend(flow_frames(rng, rng.choice([80, 81]), rng.random() < 0.3,
                                         None))
            side, frame = flows.pop(0)
            engine.push(side, frame, now, i, 0)
        elif r < 0.92:
            engine.fail_alloc(rng.randrange(4))
        elif r < 0.95:
            engine.tick(now)
        else:
            engine.checkpoint_done(now)
    engine.checkpoint_done(now + 1)
    engine.close()
    for i in range({frames}):
        flow = ccore.XlateFlow(sec_isn=rng.randrange(1 << 32), pri_isn=rng.randrange(1 << 32),
                               offset=rng.randrange(1 << 32), have_sec=rng.random() < 0.5,
                               have_pri=rng.random() < 0.5, active=rng.random() < 0.5)
        header = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        ccore.xlate(rng.choice(["to_svm", "from_svm"]), flow, header, lib)
    print("sanitized frames:", {frames})
""")


def run_sanitized(code: str) -> subprocess.CompletedProcess[str]:
    ccore.build(sanitize=True)
    return subprocess.run([sys.executable, "-c", code], env=ccore.sanitizer_env(),
                          capture_output=True, text=True, timeout=600, check=False)


def test_fuzz_under_asan_and_ubsan() -> None:
    result = run_sanitized(FUZZ.format(here=str(HERE), frames=20_000))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sanitized frames: 20000" in result.stdout


def test_the_sanitizers_report(tmp_path: Path) -> None:
    """The same flags and preload do catch an out-of-bounds read (so a clean run above
    means something)."""
    src = tmp_path / "oob.c"
    src.write_text("int oob(const unsigned char *p, int n) { return p[n]; }\n")
    lib = tmp_path / "liboob.so"
    subprocess.run(["gcc", *ccore.CFLAGS, *ccore.SANITIZE, "-o", str(lib), str(src)],
                   check=True)
    code = (f"import ctypes; lib = ctypes.CDLL({str(lib)!r}); "
            "buf = ctypes.create_string_buffer(8); lib.oob(buf, 64)")
    result = run_sanitized(code)
    assert result.returncode != 0
    assert "AddressSanitizer" in result.stderr
