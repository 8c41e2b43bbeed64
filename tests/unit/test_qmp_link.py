"""QmpLink.healthy: what an agent tells its peer before its QEMU answers.

The peer fails over on an authenticated "unhealthy", so an agent that starts
before its QEMU must say "unknown" for the grace period, not "unhealthy" (the
end-to-end pair failed over at COLO entry when the primary agent's first QMP
retry came a second after the secondary entered COLO).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from colo_proxy.agent.qmp import Monitor, QmpLink


async def _never() -> None:
    await asyncio.Event().wait()


def _link(path: Path, grace_s: float) -> QmpLink:
    return QmpLink(Monitor(str(path), "t/qmp"), "t", _never, retry_s=0.02, grace_s=grace_s)


def test_unknown_during_the_grace_then_unhealthy(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    link = _link(tmp_path / "absent.qmp", grace_s=0.3)
    seen: list[bool | None] = []

    async def scenario() -> None:
        assert link.healthy is None                      # not started
        task = asyncio.get_running_loop().create_task(link.run())
        await asyncio.sleep(0.1)
        seen.append(link.healthy)                        # still in the grace
        await asyncio.sleep(0.4)
        seen.append(link.healthy)                        # the grace is over
        link.stop()
        await asyncio.wait_for(task, 2.0)

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert seen == [None, False]
    unavailable = [r for r in caplog.records if "QMP unavailable" in r.getMessage()]
    assert len(unavailable) == 1                         # one line per outage, not per retry


def test_stop_ends_run_while_retrying(tmp_path: Path) -> None:
    link = _link(tmp_path / "absent.qmp", grace_s=10.0)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(link.run())
        await asyncio.sleep(0.05)
        link.stop()
        await asyncio.wait_for(task, 2.0)

    asyncio.run(scenario())
    assert link.healthy is None
