"""Netfilter rules of the NFQUEUE datapath: built as data (``spec``), applied with
iptables-restore (``iptables``) or partly with libnftables JSON (``nft``).  The kernel
datapath's inbound mirroring (tc clsact + mirred on the PVM's tap) is ``mirror``."""

from .manager import RuleManager
from .spec import Rule, RuleSpec, iptables_rules

__all__ = ["Rule", "RuleManager", "RuleSpec", "iptables_rules"]
