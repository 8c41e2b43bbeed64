"""One permission model: CAP_NET_ADMIN over the caller's network namespace, for everything.

colo.yaml gives every operation ``uns-admin-perm`` (GENL_UNS_ADMIN_PERM: CAP_NET_ADMIN in
the user namespace that owns the caller's network namespace) and the events group the
same (GENL_MCAST_CAP_NET_ADMIN), as nftables and ctnetlink do.  Without it every
operation, get and dump included, and joining the group fail with EPERM; root of a user
namespace drives the nodes of a network namespace that user namespace owns.
"""

from __future__ import annotations

import nl_spec as spec
import pytest
from colo_env import read_json, report, spawn, stop

from colo_proxy.nl import ColoClient, Mode, State

pytestmark = pytest.mark.kernel

ADMIN = [name for name, op in spec.packaged().commands.items() if op.admin]
OPEN = [name for name, op in spec.packaged().commands.items() if not op.admin]
DROP_NET_ADMIN = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
                  "--bounding-set=-net_admin", "--"]


def probe(ns: str, prefix: list[str], index: int) -> dict[str, object]:
    proc = spawn(["probe", str(index)], netns=ns, prefix=prefix)
    try:
        return read_json(proc, 180)
    finally:
        stop(proc)


def test_assumptions_hold() -> None:
    assert set(ADMIN) == {"proxy-init", "proxy-reset", "do-checkpoint", "do-failover",
                          "get", "proxy-destroy", "request-checkpoint"}
    assert OPEN == []
    assert {op.perm for op in spec.packaged().commands.values()} == {"uns-admin-perm"}
    assert spec.packaged().mcast_perms == {"events": "uns-admin-perm"}


@pytest.mark.parametrize(
    "prefix",
    [DROP_NET_ADMIN, ["unshare", "--user", "--map-root-user", "--"]],
    ids=["setpriv-drop-net-admin", "unprivileged-user-namespace"],
)
def test_everything_needs_net_admin(ns: str, prefix: list[str],
                                    request: pytest.FixtureRequest) -> None:
    with ColoClient(netns=ns) as admin:
        node = admin.proxy_init(Mode.SECONDARY)
        result = probe(ns, prefix, node.index)
        assert result["net_admin"] is (prefix[0] == "unshare"), result  # userns root: own ns only
        for op in ADMIN:
            assert result[op] == "EPERM", f"{op}: {result}"
        assert result["dump"] == "EPERM", result
        assert result["subscribe"] == "EPERM", result
        got = admin.get(node.index)
        assert (got.state, got.stats["checkpoints"], got.stats["resets"]) == (State.ACTIVE, 0, 0)
        assert [n.index for n in admin.dump()] == [node.index]
    report(request, f"{prefix[0]}: {len(ADMIN)} ops, dump and subscribe all EPERM")


def test_user_namespace_owning_its_netns(ns: str, request: pytest.FixtureRequest) -> None:
    """Root of a new user namespace, in a netns that user namespace owns."""
    kinds = {op.perm for op in spec.packaged().commands.values() if op.admin}
    assert len(kinds) == 1, kinds
    allowed = kinds == {"uns-admin-perm"}
    result = probe(ns, ["unshare", "--user", "--map-root-user", "--net", "--"], 0)
    assert result["net_admin"] is True
    want = "ok" if allowed else "EPERM"
    assert result["proxy-init"] == want, result
    if allowed:
        for op in ("get", "dump", "proxy-reset", "do-checkpoint", "request-checkpoint",
                   "proxy-destroy"):
            assert result[op] == "ok", f"{op}: {result}"
        assert result["do-failover"] == "EINVAL"  # a primary node: refused on its merits
        assert result["subscribe"] == "ok"
    else:
        for op in ADMIN:
            assert result[op] == "EPERM", f"{op}: {result}"
    report(request, f"user-namespace root in its own netns: proxy-init {result['proxy-init']} "
                    f"(colo.yaml: {kinds.pop()})")
