"""colo.yaml, the C uapi header, the kernel policies/ops and the Python client agree.

C names follow the kernel's YNL conventions: ``COLO_<ENUM>_<ENTRY>`` for enum
entries, ``COLO_A_<SET>_<ATTR>`` for attributes, ``COLO_CMD_<OP>`` for
operations, ``COLO_MCGRP_<GROUP>`` for multicast group names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from c_spec_parser import (
    Header,
    PolicyEntry,
    family_name,
    parse_header,
    parse_mcgrps,
    parse_ops,
    parse_policies,
    read_sources,
)

from colo_proxy.nl import constants, messages, spec
from colo_proxy.nl.spec import AttrDef, Spec

REPO = Path(__file__).resolve().parents[2]
KMOD = REPO / "kmod" / "nfnetlink_colo"
YAML = KMOD / "colo.yaml"
UAPI = KMOD / "uapi" / "linux" / "colo.h"

C_TYPES = {"u8": "NLA_U8", "u16": "NLA_U16", "u32": "NLA_U32", "u64": "NLA_U64",
           "binary": "NLA_BINARY", "nest": "NLA_NESTED"}


def c_ident(*parts: str) -> str:
    return "_".join(parts).upper().replace("-", "_")


@pytest.fixture(scope="module")
def yspec() -> Spec:
    return spec.load(YAML)


@pytest.fixture(scope="module")
def header() -> Header:
    if not UAPI.exists():
        pytest.fail(f"{UAPI.relative_to(REPO)} missing: the kernel module's uapi header")
    return parse_header(UAPI.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def csource(header: Header) -> str:
    text = read_sources(KMOD)
    if "genl_register_family" not in text:
        pytest.fail(f"no genl_register_family in {KMOD.relative_to(REPO)}/*.c")
    # private #defines/enums of the module (e.g. policy bounds) count as well
    parse_header(text, header)
    return text


# --- YAML <-> packaged copy <-> Python ---------------------------------------------------

def test_packaged_spec_is_the_kmod_spec() -> None:
    assert spec.packaged_text() == YAML.read_text(encoding="utf-8"), (
        "colo_proxy/nl/colo.yaml differs from kmod/nfnetlink_colo/colo.yaml: "
        "cp kmod/nfnetlink_colo/colo.yaml colo_proxy/nl/colo.yaml"
    )


def test_python_family_constants(yspec: Spec) -> None:
    assert yspec.name == constants.FAMILY_NAME
    assert yspec.version == constants.FAMILY_VERSION
    assert yspec.mcast_groups == (constants.MCGRP_EVENTS,)
    index = yspec.attr_sets["node"].attrs["index"]
    assert (index.min, index.max) == (constants.INDEX_MIN, constants.INDEX_MAX)


def test_python_enums(yspec: Spec) -> None:
    assert set(constants.ENUMS) == set(yspec.enums)
    for name, pyenum in constants.ENUMS.items():
        got = {m.spec_name: int(m) for m in pyenum}
        assert got == yspec.enums[name].entries, name


def test_python_commands(yspec: Spec) -> None:
    assert {c.spec_name: int(c) for c in constants.Cmd} == {
        n: o.value for n, o in yspec.ops.items()
    }


def _nla_map(cls: type) -> dict[int, tuple[str, str]]:
    return {num: (name, typ) for num, name, typ in cls.nla_map}


@pytest.mark.parametrize("set_name", ["node", "stats", "tuple"])
def test_python_attribute_sets(yspec: Spec, set_name: str) -> None:
    cls = messages.ATTR_SET_CLASSES[set_name]
    expected: dict[int, tuple[str, str]] = {}
    for attr in yspec.attr_sets[set_name].attrs.values():
        typ = attr.nested if attr.type == "nest" else messages.PYROUTE2_TYPES[attr.type]
        assert typ is not None
        expected[attr.value] = (messages.c_name(set_name, attr.name), typ)
        if attr.type == "nest":
            assert getattr(cls, typ) is messages.ATTR_SET_CLASSES[typ]
    assert _nla_map(cls) == expected
    assert set(messages.ATTR_SET_CLASSES) == set(yspec.attr_sets)


def test_every_op_uses_the_node_set(yspec: Spec) -> None:
    # the client encodes every message with colo_msg (the node set)
    assert {o.attr_set for o in yspec.ops.values()} == {"node"}
    for op in yspec.ops.values():
        for attrs in (op.do_request, op.do_reply, op.dump_reply, op.event):
            assert set(attrs or ()) <= set(yspec.attr_sets["node"].attrs), op.name


# --- YAML <-> C uapi header --------------------------------------------------------------

def test_header_family(yspec: Spec, header: Header) -> None:
    assert header.strings.get("COLO_FAMILY_NAME") == yspec.name
    assert header.values.get("COLO_FAMILY_VERSION") == yspec.version
    for group in yspec.mcast_groups:
        assert header.strings.get(c_ident("colo-mcgrp", group)) == group


def test_header_enums(yspec: Spec, header: Header) -> None:
    for enum in yspec.enums.values():
        for entry, value in enum.entries.items():
            name = c_ident("colo", enum.name, entry)
            assert header.values.get(name) == value, f"{name} should be {value}"


def test_header_attributes(yspec: Spec, header: Header) -> None:
    for aset in yspec.attr_sets.values():
        for attr in aset.attrs.values():
            name = c_ident("colo-a", aset.name, attr.name)
            assert header.values.get(name) == attr.value, f"{name} should be {attr.value}"
        # nothing in C that the YAML does not know (besides UNSPEC and MAX helpers)
        prefix = c_ident("colo-a", aset.name) + "_"
        known = {c_ident("colo-a", aset.name, a) for a in aset.attrs}
        extra = {n for n in header.values if n.startswith(prefix) and n not in known
                 and not n.endswith(("_MAX", "_UNSPEC"))}
        assert not extra, f"C attributes not in colo.yaml: {sorted(extra)}"
        max_name = prefix + "MAX"
        if max_name in header.values:
            assert header.values[max_name] == aset.max_value


def test_header_commands(yspec: Spec, header: Header) -> None:
    for op in yspec.ops.values():
        name = c_ident("colo-cmd", op.name)
        assert header.values.get(name) == op.value, f"{name} should be {op.value}"
    known = {c_ident("colo-cmd", o) for o in yspec.ops}
    extra = {n for n in header.values if n.startswith("COLO_CMD_") and n not in known
             and not n.endswith(("_MAX", "_UNSPEC"))}
    assert not extra, f"C commands not in colo.yaml: {sorted(extra)}"


# --- YAML <-> kernel policies, ops and groups ---------------------------------------------

def _expected_policy(attr: AttrDef) -> tuple[str, int | None, int | None, int | None]:
    return (C_TYPES[attr.type], attr.min, attr.max, attr.max_len)


def _actual_policy(entry: PolicyEntry) -> tuple[str, int | None, int | None, int | None]:
    return (entry.type, entry.min, entry.max, entry.max_len)


def _policy_for_set(policies: dict[str, dict[str, PolicyEntry]], set_name: str,
                    ) -> dict[str, dict[str, PolicyEntry]]:
    prefix = c_ident("colo-a", set_name) + "_"
    return {n: t for n, t in policies.items() if t and all(a.startswith(prefix) for a in t)}


def test_policies(yspec: Spec, header: Header, csource: str) -> None:
    policies = parse_policies(csource, header)
    assert policies, "no nla_policy table found in the module sources"
    requested = {a for op in yspec.ops.values() for a in (op.do_request or ())}
    request_sets = {"node"}
    for name in requested:
        attr = yspec.attr_sets["node"].attrs[name]
        if attr.type == "nest":
            request_sets.add(str(attr.nested))
    for set_name in sorted(request_sets):
        aset = yspec.attr_sets[set_name]
        tables = _policy_for_set(policies, set_name)
        assert tables, f"no nla_policy table for attribute set {set_name}"
        for tname, table in tables.items():
            for cname, entry in table.items():
                attr = next((a for a in aset.attrs.values()
                             if c_ident("colo-a", set_name, a.name) == cname), None)
                assert attr is not None, f"{tname}: {cname} is not in colo.yaml"
                assert _actual_policy(entry) == _expected_policy(attr), f"{tname}[{cname}]"
                if attr.type == "nest":
                    nested = _policy_for_set(policies, str(attr.nested))
                    assert entry.nested in nested, f"{tname}[{cname}] nests {entry.nested}"
        # every attribute a request may carry is validated by some table
        wanted = requested if set_name == "node" else set(aset.attrs) - {"pad"}
        covered = {c for table in tables.values() for c in table}
        for name in wanted:
            cname = c_ident("colo-a", set_name, name)
            assert cname in covered, f"no nla_policy entry for {cname}"


C_PERMS = {"admin-perm": "GENL_ADMIN_PERM", "uns-admin-perm": "GENL_UNS_ADMIN_PERM", None: None}


def test_ops_table(yspec: Spec, header: Header, csource: str) -> None:
    ops = parse_ops(csource)
    assert ops, "no genl_ops table found in the module sources"
    got = {}
    for op in ops:
        assert op.cmd not in got, f"{op.cmd} listed twice (split do/dump ops are not expected)"
        got[op.cmd] = (op.perm, op.doit, op.dumpit)
    expected = {
        c_ident("colo-cmd", o.name): (C_PERMS[o.perm], o.do_request is not None, o.dump)
        for o in yspec.commands.values()
    }
    assert got == expected


def test_each_op_accepts_exactly_its_request_attributes(
    yspec: Spec, header: Header, csource: str
) -> None:
    """Per-op policies: an attribute colo.yaml does not list for an op is rejected."""
    policies = parse_policies(csource, header)
    for op in parse_ops(csource):
        if op.policy is None:
            continue  # family-wide policy: covered by test_policies
        name = next(o for o in yspec.commands.values() if c_ident("colo-cmd", o.name) == op.cmd)
        wanted = {c_ident("colo-a", "node", a) for a in (name.do_request or ())}
        assert set(policies[op.policy]) == wanted, f"{op.cmd} policy {op.policy}"


def test_family_and_groups(yspec: Spec, header: Header, csource: str) -> None:
    assert family_name(csource, header) == yspec.name
    assert parse_mcgrps(csource, header) == list(yspec.mcast_groups)
    assert "netnsok" in csource and ".netnsok = true" in " ".join(csource.split())
