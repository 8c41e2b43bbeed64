"""The issue-8 black-box case, differential: a secondary whose first data segment is
not its lowest-numbered one, on a connection whose SYN was not seen and right after a
checkpoint, through QEMU's colo-compare and our Engine (docs/compare.md, "The
secondary's numbering").  Before the rule, the engine said "payload differs at stream
offset 0" and released 0 of 3 where QEMU released 3 of 3.

QEMU releases the same frames, but it compares the lowest-seq primary with whatever
secondary came first, so it also requests checkpoints on the way (1-2 here); we
request none.  So the released frames are compared, and each side's count asserted."""

from __future__ import annotations

import pytest
from test_qemu_differential import Phase, Scenario, run_engine, run_qemu, tcp

pytestmark = pytest.mark.qemu


def _frames(base: int) -> dict[str, bytes]:
    return {f"{side}{i}": tcp(base + 100 * i, bytes([65 + i]) * 100)
            for side in "PS" for i in range(3)}


@pytest.mark.parametrize("order", [("S2", "S0", "S1"), ("S1", "S0", "S2"), ("S1", "S2", "S0")])
def test_reordered_first_secondary_segments_mid_stream(order: tuple[str, ...]) -> None:
    sc = Scenario(_frames(900_001), ["P0", "P1", "P2", *order])
    ours = run_engine(sc)[0]
    assert ours == [Phase(["P0", "P1", "P2"], 0)]
    qemu = run_qemu(sc)
    assert [p.released for p in qemu] == [p.released for p in ours]
    print(f"\n{order}: QEMU requested {qemu[0].checkpoints} checkpoint(s), we 0")


def test_reordered_first_secondary_segments_after_a_checkpoint() -> None:
    frames = _frames(900_101)
    frames["Ppre"] = tcp(900_001, b"x" * 100)
    frames["Spre"] = tcp(900_001, b"x" * 99 + b"y")
    sc = Scenario(frames, ["Ppre", "Spre", "ckpt", "P0", "P1", "P2", "S2", "S0", "S1"])
    ours = run_engine(sc)[0]
    assert ours == [Phase([], 1), Phase(["Ppre", "P0", "P1", "P2"], 0)]
    qemu = run_qemu(sc)
    assert [p.released for p in qemu] == [p.released for p in ours]
    assert qemu[0].checkpoints == 1
    print(f"\nafter a checkpoint: QEMU requested {qemu[1].checkpoints} more, we 0")
