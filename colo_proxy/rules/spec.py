"""The datapath's rule set as data.

In the primary host's namespace:

* raw PREROUTING, ``-i <fwd>``: CT --notrack (SVM output must not touch the
  conntrack entries of the PVM's connections: it carries the same tuples);
* mangle PREROUTING, ``-i <fwd>``: NFQUEUE to the secondary queue, then DROP
  (no bypass, no fail-open on that queue: nothing ever continues past it);
* filter FORWARD, ``-i <pvm>``: NFQUEUE to the primary queue, with
  ``--queue-bypass`` in fail-open mode (no consumer: the packet is accepted);
* guard (filter INPUT and FORWARD, ``-i <fwd>``: DROP): SVM frames can be
  neither forwarded nor delivered locally, whatever happens to the queue rules.
  With ``guard_in_nft`` the guard lives in the nft table instead (``nft.py``).

Every rule sits in a chain of ours (``COLO_*``); the built-in chains only get a
jump, marked with the comment ``colo-proxy`` so removal finds exactly them.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMENT = "colo-proxy"
CHAIN_PREFIX = "COLO_"


@dataclass(frozen=True)
class RuleSpec:
    pvm_if: str
    fwd_if: str
    queue_primary: int = 0
    queue_secondary: int = 1
    fail_open: bool = True
    guard_in_nft: bool = False


@dataclass(frozen=True)
class Rule:
    """``-A chain args...`` in ``table``; ``jump_from`` set for the built-in jump."""

    table: str
    chain: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Chain:
    table: str
    name: str
    hook_chain: str
    """The built-in chain that jumps here."""
    match: tuple[str, ...]
    """The match of that jump (``-i <if>``)."""


def chains(spec: RuleSpec) -> list[Chain]:
    out = [
        Chain("raw", "COLO_NOTRACK", "PREROUTING", ("-i", spec.fwd_if)),
        Chain("mangle", "COLO_SVM", "PREROUTING", ("-i", spec.fwd_if)),
        Chain("filter", "COLO_PVM", "FORWARD", ("-i", spec.pvm_if)),
    ]
    if not spec.guard_in_nft:
        out += [
            Chain("filter", "COLO_GUARD_FWD", "FORWARD", ("-i", spec.fwd_if)),
            Chain("filter", "COLO_GUARD_IN", "INPUT", ("-i", spec.fwd_if)),
        ]
    return out


def iptables_rules(spec: RuleSpec) -> list[Rule]:
    """The rules inside our chains, in order."""
    pvm_queue = ["-j", "NFQUEUE", "--queue-num", str(spec.queue_primary)]
    if spec.fail_open:
        pvm_queue.append("--queue-bypass")
    rules = [
        Rule("raw", "COLO_NOTRACK", ("-j", "CT", "--notrack")),
        Rule("mangle", "COLO_SVM", ("-j", "NFQUEUE", "--queue-num", str(spec.queue_secondary))),
        Rule("mangle", "COLO_SVM", ("-j", "DROP")),
        Rule("filter", "COLO_PVM", tuple(pvm_queue)),
    ]
    if not spec.guard_in_nft:
        rules += [
            Rule("filter", "COLO_GUARD_FWD", ("-j", "DROP")),
            Rule("filter", "COLO_GUARD_IN", ("-j", "DROP")),
        ]
    return rules


def restore_text(spec: RuleSpec) -> str:
    """The ``iptables-restore --noflush`` input that installs ``spec``."""
    all_chains = chains(spec)
    rules = iptables_rules(spec)
    lines: list[str] = []
    for table in ("raw", "mangle", "filter"):
        mine = [c for c in all_chains if c.table == table]
        if not mine:
            continue
        lines.append(f"*{table}")
        lines += [f":{c.name} - [0:0]" for c in mine]
        lines += [f"-A {r.chain} {' '.join(r.args)}" for r in rules if r.table == table]
        # Insert the jumps at the top, in reverse so they end up in list order.
        for c in reversed(mine):
            lines.append(
                f"-I {c.hook_chain} 1 {' '.join(c.match)} -m comment --comment {COMMENT} "
                f"-j {c.name}"
            )
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"
