"""Without CAP_NET_ADMIN every mutating operation is refused with EPERM; GET still works.

colo.yaml says which capability each operation needs: ``admin-perm`` is CAP_NET_ADMIN in
the initial user namespace, ``uns-admin-perm`` CAP_NET_ADMIN in the user namespace that
owns the caller's network namespace.  The expectations below derive from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from colo_env import insmod, read_json, report, spawn, stop, temp_netns

from colo_proxy.nl import ColoClient, Mode, State, spec

pytestmark = pytest.mark.kernel

MUTATING = [name for name, op in spec.packaged().commands.items() if op.admin]
READ_ONLY = [name for name, op in spec.packaged().commands.items() if not op.admin]
DROP_NET_ADMIN = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
                  "--bounding-set=-net_admin", "--"]


@pytest.fixture
def ns(colo_ko: Path) -> Iterator[str]:
    insmod(colo_ko)
    with temp_netns() as name:
        yield name


def mcast_needs_net_admin() -> bool:
    """Whether this kernel's genetlink can restrict a group to CAP_NET_ADMIN (the module
    sets GENL_MCAST_CAP_NET_ADMIN where it exists)."""
    base = Path("/lib/modules", os.uname().release)
    for link in ("source", "build"):
        header = base / link / "include/net/genetlink.h"
        if header.exists():
            return "GENL_MCAST_CAP_NET_ADMIN" in header.read_text()
    pytest.fail(f"no kernel headers under {base} to tell whether groups can need CAP_NET_ADMIN")


def probe(ns: str, prefix: list[str], index: int) -> dict[str, object]:
    proc = spawn(["probe", str(index)], netns=ns, prefix=prefix)
    try:
        return read_json(proc, 180)
    finally:
        stop(proc)


def test_assumptions_hold() -> None:
    assert set(MUTATING) == {"proxy-init", "proxy-reset", "do-checkpoint", "do-failover",
                             "proxy-destroy", "request-checkpoint"}
    assert READ_ONLY == ["get"]


@pytest.mark.parametrize(
    "prefix",
    [DROP_NET_ADMIN, ["unshare", "--user", "--map-root-user", "--"]],
    ids=["setpriv-drop-net-admin", "unprivileged-user-namespace"],
)
def test_mutations_need_net_admin(ns: str, prefix: list[str],
                                  request: pytest.FixtureRequest) -> None:
    with ColoClient(netns=ns) as admin:
        node = admin.proxy_init(Mode.SECONDARY)
        result = probe(ns, prefix, node.index)
        assert result["net_admin"] is (prefix[0] == "unshare"), result  # userns root: own ns only
        for op in MUTATING:
            assert result[op] == "EPERM", f"{op}: {result}"
        assert result["get"] == "ok" and result["dump"] == "ok", result
        assert result["nodes_after"] == [node.index]
        expected_sub = "EPERM" if mcast_needs_net_admin() else "ok"
        assert result["subscribe"] == expected_sub, result
        got = admin.get(node.index)
        assert (got.state, got.stats["checkpoints"], got.stats["resets"]) == (State.ACTIVE, 0, 0)
    report(request, f"{prefix[0]}: {len(MUTATING)} mutating ops EPERM, get/dump ok, "
                    f"subscribe {result['subscribe']}")


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
        for op in ("proxy-reset", "do-checkpoint", "request-checkpoint", "proxy-destroy"):
            assert result[op] == "ok", f"{op}: {result}"
        assert result["do-failover"] == "EINVAL"  # a primary node: refused on its merits
        assert result["subscribe"] == "ok"
    else:
        for op in MUTATING:
            assert result[op] == "EPERM", f"{op}: {result}"
    report(request, f"user-namespace root in its own netns: proxy-init {result['proxy-init']} "
                    f"(colo.yaml: {kinds.pop()})")
