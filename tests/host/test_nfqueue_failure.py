"""SIGKILL the datapath mid-traffic: fail-open keeps PVM traffic flowing, fail-closed
stops it, SVM output never leaves; a restart resumes protection."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from nfqueue_support import Datapath, servers, topology, udp_exchange

pytestmark = pytest.mark.root


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
def test_kill_and_restart(tmp_path: Path, fail_closed: bool) -> None:
    extra = ["--fail-closed"] if fail_closed else []
    with topology() as topo, servers(topo):
        dp = Datapath(topo, tmp_path, *extra).start()
        try:
            assert udp_exchange(topo, [b"a", b"b"], wait=0.5, expect=2) == [b"echo:a",
                                                                            b"echo:b"]
            # Kill it while traffic is in flight.
            sender = threading.Thread(
                target=udp_exchange, args=(topo, [f"f{i}".encode() for i in range(200)], 0.2))
            sender.start()
            dp.stop(signal.SIGKILL)
            sender.join()
        finally:
            dp.stop(signal.SIGKILL)
        replies = udp_exchange(topo, [b"c", b"diverge"], wait=1.0,
                               expect=None if fail_closed else 2)
        if fail_closed:
            assert replies == []
        else:
            # Unprotected but flowing: the PVM's replies only, never the SVM's.
            assert sorted(replies) == [b"answer from pvm", b"echo:c"]
        with Datapath(topo, tmp_path, *extra) as again:
            assert udp_exchange(topo, [b"d"], wait=0.5, expect=1) == [b"echo:d"]
            assert udp_exchange(topo, [b"diverge"], wait=1.0, expect=1) == [b"answer from pvm"]
            assert again.wait_for("checkpoint-request")[0]["reason"] == "payload-mismatch"
            again.wait_for("checkpoint-done")
