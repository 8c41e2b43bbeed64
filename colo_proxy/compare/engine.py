"""The comparison engine: frames in, decisions out.  (Contract stub; see docs/compare.md.)"""

from __future__ import annotations

from collections.abc import Iterable

from .model import Config, ConnKey, ConnStats, Counters, Decision, Side


class Engine:
    """Pure COLO output comparison.

    * ``push(side, frame, now_ms, tag, vnet_hdr_len)``: feed one Ethernet frame
      (optionally preceded by ``vnet_hdr_len`` bytes of virtio-net header).
      ``tag`` is an opaque caller handle returned in Release/Drop decisions.
    * ``tick(now_ms)``: advance time; emits timeout checkpoint requests.
    * ``checkpoint_done(now_ms)``: the VMM finished a checkpoint; every held
      primary frame is released in arrival order, held secondaries dropped, and
      per-connection state re-based.
    Never raises on frame content.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.stats = Counters()

    @property
    def checkpoint_pending(self) -> bool:
        raise NotImplementedError

    def push(
        self,
        side: Side,
        frame: bytes,
        now_ms: float,
        tag: object = None,
        vnet_hdr_len: int = 0,
    ) -> list[Decision]:
        raise NotImplementedError

    def tick(self, now_ms: float) -> list[Decision]:
        raise NotImplementedError

    def checkpoint_done(self, now_ms: float) -> list[Decision]:
        raise NotImplementedError

    def connections(self) -> Iterable[ConnStats]:
        raise NotImplementedError

    def conn_stats(self, key: ConnKey) -> ConnStats | None:
        raise NotImplementedError
