"""The nft part of the rule set: table ``inet colo_proxy`` via libnftables JSON.

The queue rules always come from iptables: its NFQUEUE target works with both
backends (through nft_compat for iptables-nft) and does not need ``nft queue``
(CONFIG_NFT_QUEUE), which some kernels are built without.  nft carries what it
can do natively: the guard that drops SVM frames in input and forward, plus
counters of SVM frames arriving on the forward link and of PVM output, readable
as JSON.
"""

from __future__ import annotations

from typing import Any

from ..errors import ColoError
from ..topology import netns as ns_util

FAMILY = "inet"
TABLE = "colo_proxy"


def _iif(name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": name}}


def _chain(name: str, hook: str, prio: int) -> dict[str, Any]:
    return {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name,
                              "type": "filter", "hook": hook, "prio": prio,
                              "policy": "accept"}}}


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain,
                             "comment": chain, "expr": list(expr)}}}


def ruleset(pvm_if: str, fwd_if: str) -> dict[str, Any]:
    """One transaction: (re)create the table with guard and counter chains."""
    table = {"family": FAMILY, "name": TABLE}
    counter: dict[str, Any] = {"counter": None}
    return {"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},  # add+delete: start from nothing, idempotently
        {"add": {"table": table}},
        _chain("svm_seen", "prerouting", -400),
        _rule("svm_seen", _iif(fwd_if), counter),
        _chain("guard_forward", "forward", -10),
        _rule("guard_forward", _iif(fwd_if), counter, {"drop": None}),
        _rule("guard_forward", _iif(pvm_if), counter),
        _chain("guard_input", "input", -10),
        _rule("guard_input", _iif(fwd_if), counter, {"drop": None}),
    ]}


def _cmd(netns: str | None, cmd: dict[str, Any]) -> dict[str, Any]:
    def call() -> dict[str, Any]:
        import nftables

        nft = nftables.Nftables()
        nft.set_json_output(True)
        rc, out, err = nft.json_cmd(cmd)
        if rc != 0:
            raise ColoError(f"nft: {str(err).strip() or 'failed'}")
        return out if isinstance(out, dict) else {}

    return ns_util.run_in(netns, call) if netns else call()


def apply(pvm_if: str, fwd_if: str, netns: str | None) -> None:
    _cmd(netns, ruleset(pvm_if, fwd_if))


def remove(netns: str | None) -> bool:
    """Delete our table if present; True if it was there."""
    if not exists(netns):
        return False
    _cmd(netns, {"nftables": [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]})
    return True


def list_tables(netns: str | None) -> list[tuple[str, str]]:
    items = _cmd(netns, {"nftables": [{"list": {"tables": None}}]}).get("nftables", [])
    return [(t["table"]["family"], t["table"]["name"]) for t in items if "table" in t]


def exists(netns: str | None) -> bool:
    return (FAMILY, TABLE) in list_tables(netns)


def counters(netns: str | None) -> dict[str, int]:
    """Packets counted per rule comment (``svm_seen``, ``guard_forward``, ...); the
    guard_forward entry sums the SVM drops, ``pvm_forwarded`` counts PVM output."""
    data = _cmd(netns, {"nftables": [{"list": {"table": {"family": FAMILY, "name": TABLE}}}]})
    result: dict[str, int] = {}
    for item in data.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        packets = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), 0)
        dropped = any("drop" in e for e in rule["expr"])
        name = rule.get("comment", rule["chain"])
        if rule["chain"] == "guard_forward" and not dropped:
            name = "pvm_forwarded"
        result[name] = result.get(name, 0) + int(packets)
    return result
