"""Install the rule set on entry, remove exactly it on exit (also after errors)."""

from __future__ import annotations

from types import TracebackType

from . import iptables, nft
from .spec import RuleSpec


class RuleManager:
    """``with RuleManager(spec, netns, backend): ...`` installs the rules for each
    family with one iptables-restore transaction, and (``spec.guard_in_nft``) the
    nft guard table with one libnftables transaction.  ``remove`` is idempotent."""

    def __init__(self, spec: RuleSpec, netns: str | None, backend: str = "nft",
                 families: tuple[str, ...] = iptables.FAMILIES) -> None:
        self.spec = spec
        self.netns = netns
        self.backend = backend
        self.families = families
        self.applied = False

    def apply(self) -> None:
        try:
            if self.spec.guard_in_nft:
                nft.apply(self.spec.pvm_if, self.spec.fwd_if, self.netns)
            for family in self.families:
                iptables.apply(self.spec, self.backend, family, self.netns)
            self.applied = True
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for family in self.families:
            iptables.remove(self.backend, family, self.netns)
        if self.spec.guard_in_nft:
            nft.remove(self.netns)
        self.applied = False

    def __enter__(self) -> RuleManager:
        self.apply()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
