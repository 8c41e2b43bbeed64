"""Netfilter rules of the NFQUEUE datapath: built as data (``spec``), applied with
iptables-restore (``iptables``) or partly with libnftables JSON (``nft``)."""

from .manager import RuleManager
from .spec import Rule, RuleSpec, iptables_rules

__all__ = ["Rule", "RuleManager", "RuleSpec", "iptables_rules"]
