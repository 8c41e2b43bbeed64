"""Loader for ``colo.yaml``, the Generic Netlink spec of the "colo" family: the tests'
(the agreement, codec and permission tests check the package and the kernel module
against it).  Not part of the package, which reads no YAML (pyyaml is a test extra).

The spec shipped with the package (``colo_proxy/nl/colo.yaml``) is a byte-identical
copy of ``kmod/nfnetlink_colo/colo.yaml``, the contract with the kernel module, written
by ``scripts/colo-nl-gen.py`` together with the C uapi header, the kernel's policy and
ops tables and this package's ``constants.py`` and ``messages.py``;
``tests/unit/test_spec_agreement.py`` fails when any of them drifts from the spec.

Numbering follows the kernel's YNL conventions: enum entries count from 0 (or
the enum's ``value-start``), attributes from 1 (0 is the unused "unspec" slot),
operations carry an explicit ``value`` or count up from the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from colo_proxy.errors import ColoError

SPEC_NAME = "colo.yaml"


@dataclass(frozen=True)
class EnumDef:
    """A YAML ``definitions`` enum: entry name -> value."""

    name: str
    entries: dict[str, int]


@dataclass(frozen=True)
class AttrDef:
    """One attribute of an attribute set."""

    name: str
    value: int
    type: str
    enum: str | None = None
    nested: str | None = None
    min: int | None = None
    max: int | None = None
    max_len: int | None = None
    exact_len: int | None = None
    byte_order: str | None = None
    multi: bool = False


@dataclass(frozen=True)
class AttrSetDef:
    """A YAML ``attribute-sets`` entry."""

    name: str
    attrs: dict[str, AttrDef]

    def by_value(self, value: int) -> AttrDef | None:
        for attr in self.attrs.values():
            if attr.value == value:
                return attr
        return None

    @property
    def max_value(self) -> int:
        return max(a.value for a in self.attrs.values())


@dataclass(frozen=True)
class OpDef:
    """A YAML operation (a command, or a notification when ``event`` is set)."""

    name: str
    value: int
    attr_set: str
    perm: str | None
    """``admin-perm`` (CAP_NET_ADMIN in the initial user namespace), ``uns-admin-perm``
    (CAP_NET_ADMIN in the user namespace owning the netns) or None."""
    do_request: tuple[str, ...] | None = None
    do_reply: tuple[str, ...] | None = None
    dump: bool = False
    dump_reply: tuple[str, ...] | None = None
    event: tuple[str, ...] | None = None
    mcgrp: str | None = None

    @property
    def admin(self) -> bool:
        """Needs CAP_NET_ADMIN (in some user namespace)."""
        return self.perm is not None


@dataclass(frozen=True)
class Spec:
    """The whole family, as data."""

    name: str
    version: int
    enums: dict[str, EnumDef]
    attr_sets: dict[str, AttrSetDef]
    ops: dict[str, OpDef]
    mcast_groups: tuple[str, ...]
    consts: dict[str, int] = field(default_factory=dict)
    mcast_perms: dict[str, str | None] = field(default_factory=dict)
    """Group name -> ``uns-admin-perm`` (CAP_NET_ADMIN over the netns to join) or None."""

    def op(self, name: str) -> OpDef:
        return self.ops[name]

    @property
    def commands(self) -> dict[str, OpDef]:
        """Operations userspace sends (everything but notifications)."""
        return {n: o for n, o in self.ops.items() if o.event is None}

    @property
    def notifications(self) -> dict[str, OpDef]:
        return {n: o for n, o in self.ops.items() if o.event is not None}


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ColoError(f"{SPEC_NAME}: {what} must be an integer, got {value!r}")
    return value


def _enum(raw: dict[str, Any]) -> EnumDef:
    start = _as_int(raw.get("value-start", 0), f"enum {raw['name']} value-start")
    entries: dict[str, int] = {}
    for i, entry in enumerate(raw["entries"]):
        if isinstance(entry, dict):
            name = str(entry["name"])
            value = _as_int(entry.get("value", start + i), f"enum entry {name}")
        else:
            name, value = str(entry), start + i
        entries[name] = value
    return EnumDef(str(raw["name"]), entries)


def _attr_set(raw: dict[str, Any]) -> AttrSetDef:
    attrs: dict[str, AttrDef] = {}
    value = 0
    for entry in raw["attributes"]:
        value = _as_int(entry.get("value", value + 1), f"attribute {entry['name']} value")
        checks = entry.get("checks", {}) or {}
        attrs[str(entry["name"])] = AttrDef(
            name=str(entry["name"]),
            value=value,
            type=str(entry["type"]),
            enum=entry.get("enum"),
            nested=entry.get("nested-attributes"),
            min=checks.get("min"),
            max=checks.get("max"),
            max_len=checks.get("max-len"),
            exact_len=checks.get("exact-len"),
            byte_order=entry.get("byte-order"),
            multi=bool(entry.get("multi-attr", False)),
        )
    return AttrSetDef(str(raw["name"]), attrs)


def _attr_list(section: dict[str, Any] | None, key: str) -> tuple[str, ...] | None:
    if section is None or key not in section:
        return None
    return tuple(section[key].get("attributes", []))


def _op(raw: dict[str, Any], value: int, default_set: str | None) -> OpDef:
    do = raw.get("do")
    dump = raw.get("dump")
    event = raw.get("event")
    return OpDef(
        name=str(raw["name"]),
        value=value,
        attr_set=str(raw.get("attribute-set", default_set)),
        perm=next((f for f in ("uns-admin-perm", "admin-perm") if f in (raw.get("flags") or [])),
                  None),
        do_request=_attr_list(do, "request"),
        do_reply=_attr_list(do, "reply"),
        dump=dump is not None,
        dump_reply=_attr_list(dump, "reply"),
        event=tuple(event.get("attributes", [])) if event is not None else None,
        mcgrp=raw.get("mcgrp"),
    )


def parse(text: str) -> Spec:
    """Parse the YAML text of a spec; ColoError when it is not a usable spec."""
    try:
        raw = yaml.safe_load(text)
        enums: dict[str, EnumDef] = {}
        consts: dict[str, int] = {}
        for d in raw.get("definitions", []):
            if d["type"] == "enum":
                enums[d["name"]] = _enum(d)
            elif d["type"] == "const":
                consts[d["name"]] = _as_int(d["value"], f"const {d['name']}")
        attr_sets = {s["name"]: _attr_set(s) for s in raw["attribute-sets"]}
        ops: dict[str, OpDef] = {}
        value = 0
        for entry in raw["operations"]["list"]:
            value = _as_int(entry.get("value", value + 1), f"operation {entry['name']} value")
            op = _op(entry, value, raw["operations"].get("attribute-set"))
            ops[op.name] = op
        raw_groups = raw.get("mcast-groups", {}).get("list", [])
        groups = tuple(str(g["name"]) for g in raw_groups)
        perms = {str(g["name"]): next(iter(g.get("flags") or []), None) for g in raw_groups}
        return Spec(
            name=str(raw["name"]),
            version=_as_int(raw.get("version", 1), "version"),
            mcast_perms=perms,
            enums=enums,
            attr_sets=attr_sets,
            ops=ops,
            mcast_groups=groups,
            consts=consts,
        )
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ColoError(f"{SPEC_NAME}: not a valid Generic Netlink spec: {exc}") from exc


def load(path: Path | None = None) -> Spec:
    """Load a spec file; by default the copy shipped with the package."""
    if path is not None:
        try:
            return parse(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ColoError(f"cannot read {path}: {exc.strerror}") from exc
    return packaged()


@cache
def packaged() -> Spec:
    """The spec shipped as the package's data (cached)."""
    return parse(packaged_text())


def packaged_text() -> str:
    return resources.files("colo_proxy.nl").joinpath(SPEC_NAME).read_text(encoding="utf-8")
