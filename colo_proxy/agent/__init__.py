"""The COLO agent: one process per host that drives QEMU over QMP.

* ``config``: the per-host TOML file (``colo-proxy config check``).
* ``qmp``: an asyncio QMP client with timeouts and reconnects (qemu.qmp).
* ``checkpoint``: the checkpoint controller on the primary (request ->
  ``x-checkpoint-delay`` -> STOP -> RESUME -> flush) and the epoch gate.
* ``heartbeat``: the authenticated heartbeat between the two hosts' agents.
* ``failover``: what each side does when the peer is declared dead.
* ``metrics``: Prometheus figures.
docs/operations.md describes the deployment.
"""
