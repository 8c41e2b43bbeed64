"""colo.yaml is the single source of the contract: every generated file matches it.

scripts/colo-nl-gen.py writes the C uapi header, the kernel's policy/ops/group tables and
the Python constants and message classes from kmod/nfnetlink_colo/colo.yaml.  These tests
re-run the generator and fail on any drift, check what the generator derives (so that a
generator bug cannot hide behind "generated == committed"), and, where the kernel's own
YNL generator is available (COLO_YNL_GEN=path/to/tools/net/ynl/ynl-gen-c.py inside a
Linux source tree; it runs under COLO_YNL_PYTHON, default python3, which needs pyyaml
and jsonschema), that it accepts colo.yaml and produces the same uapi header and
policies.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nl_spec as spec
import pytest
from nl_spec import Spec

from colo_proxy.nl import constants, messages

REPO = Path(__file__).resolve().parents[2]
KMOD = REPO / "kmod" / "nfnetlink_colo"
YAML = KMOD / "colo.yaml"
GEN = REPO / "scripts" / "colo-nl-gen.py"


def _load_generator() -> ModuleType:
    loader = importlib.util.spec_from_file_location("colo_nl_gen", GEN)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    sys.modules["colo_nl_gen"] = module
    loader.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def yspec() -> Spec:
    return spec.load(YAML)


# --- drift -------------------------------------------------------------------------------

def test_generated_files_match_colo_yaml() -> None:
    files = gen.outputs(YAML.read_text(encoding="utf-8"))
    stale = [str(p.relative_to(REPO)) for p, text in files.items()
             if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"out of date, run scripts/colo-nl-gen.py: {stale}"


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    """--check exits 0 on this tree; on a tree with a stale file it exits 1 naming it."""
    ok = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True,
                        check=False)
    assert (ok.returncode, ok.stderr) == (0, "")
    tree = tmp_path / "repo"
    shutil.copytree(REPO / "kmod", tree / "kmod", ignore=shutil.ignore_patterns("*.o", "*.ko"))
    shutil.copytree(REPO / "scripts", tree / "scripts", ignore=shutil.ignore_patterns("guest*"))
    (tree / "colo_proxy" / "nl").mkdir(parents=True)
    for name in ("constants.py", "messages.py", "colo.yaml"):
        shutil.copy(REPO / "colo_proxy" / "nl" / name, tree / "colo_proxy" / "nl" / name)
    uapi = tree / "kmod" / "nfnetlink_colo" / "uapi" / "linux" / "colo.h"
    uapi.write_text(uapi.read_text().replace("COLO_MODE_SECONDARY,", "COLO_MODE_SECONDARY = 7,"))
    bad = subprocess.run([sys.executable, str(tree / "scripts" / "colo-nl-gen.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "kmod/nfnetlink_colo/uapi/linux/colo.h is out of date" in bad.stderr


def test_generator_refuses_what_it_cannot_express() -> None:
    text = YAML.read_text(encoding="utf-8")
    weaker = text.replace("    - name: events\n      flags: [uns-admin-perm]",
                          "    - name: events\n      flags: [admin-perm]")
    assert weaker != text
    with pytest.raises(gen.SpecError, match="no multicast equivalent"):
        gen.outputs(weaker)
    ranged_be = text.replace("        byte-order: big-endian\n      - name: dport",
                             "        byte-order: big-endian\n        checks:\n          max: 9\n"
                             "      - name: dport")
    assert ranged_be != text
    with pytest.raises(gen.SpecError, match="big-endian"):
        gen.outputs(ranged_be)


# --- what the generated code says (independent of the generator) ---------------------------

def test_packaged_spec_is_the_kmod_spec() -> None:
    assert spec.packaged_text() == YAML.read_text(encoding="utf-8")


def test_python_constants(yspec: Spec) -> None:
    assert (yspec.name, yspec.version) == (constants.FAMILY_NAME, constants.FAMILY_VERSION)
    assert yspec.mcast_groups == (constants.MCGRP_EVENTS,)
    index = yspec.attr_sets["node"].attrs["index"]
    assert (index.min, index.max) == (constants.INDEX_MIN, constants.INDEX_MAX)
    assert yspec.consts["tuple-max-vlans"] == constants.TUPLE_MAX_VLANS
    assert set(constants.ENUMS) == set(yspec.enums)
    for name, pyenum in constants.ENUMS.items():
        assert {m.spec_name: int(m) for m in pyenum} == yspec.enums[name].entries, name
    assert {c.spec_name: int(c) for c in constants.Cmd} == {
        n: o.value for n, o in yspec.ops.items()}


PYROUTE2 = {("u8", None): "uint8", ("u16", None): "uint16", ("u32", None): "uint32",
            ("u64", None): "uint64", ("u16", "big-endian"): "be16",
            ("u32", "big-endian"): "be32", ("binary", None): "cdata", ("pad", None): "none"}


@pytest.mark.parametrize("set_name", ["node", "stats", "tuple"])
def test_python_attribute_sets(yspec: Spec, set_name: str) -> None:
    cls = messages.ATTR_SET_CLASSES[set_name]
    expected = {}
    for attr in yspec.attr_sets[set_name].attrs.values():
        typ = attr.nested if attr.type == "nest" else PYROUTE2[(attr.type, attr.byte_order)]
        expected[attr.value] = (f"COLO_A_{set_name}_{attr.name}".upper().replace("-", "_"), typ)
        if attr.type == "nest":
            assert getattr(cls, str(typ)) is messages.ATTR_SET_CLASSES[str(typ)]
    assert {num: (name, typ) for num, name, typ in cls.nla_map} == expected


def _c(path: str) -> str:
    return (KMOD / path).read_text(encoding="utf-8")


def test_uapi_header_values(yspec: Spec) -> None:
    """The header, compiled, gives every value the spec gives (gcc, no kernel needed)."""
    names = {f"COLO_{e}_{k}".upper().replace("-", "_"): v
             for e, d in yspec.enums.items() for k, v in d.entries.items()}
    for sname, aset in yspec.attr_sets.items():
        names |= {f"COLO_A_{sname}_{a}".upper().replace("-", "_"): d.value
                  for a, d in aset.attrs.items()}
        names[f"COLO_A_{sname}_MAX".upper()] = aset.max_value
    names |= {f"COLO_CMD_{o}".upper().replace("-", "_"): d.value for o, d in yspec.ops.items()}
    names["COLO_FAMILY_VERSION"] = yspec.version
    names["COLO_TUPLE_MAX_VLANS"] = yspec.consts["tuple-max-vlans"]
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler to check the uapi header")
    prog = '#include <stdio.h>\n#include "colo.h"\nint main(void){\n' + "".join(
        f'printf("{n} %lld\\n", (long long){n});\n' for n in names) + "return 0;}\n"
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"colo-uapi-{os.getpid()}"
    work.mkdir(exist_ok=True)
    try:
        (work / "t.c").write_text(prog)
        subprocess.run([cc, "-Wall", "-Werror", "-I", str(KMOD / "uapi" / "linux"), "-o",
                        str(work / "t"), str(work / "t.c")], check=True)
        out = subprocess.run([str(work / "t")], capture_output=True, text=True, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    got = {n: int(v) for n, v in (line.split() for line in out.stdout.splitlines())}
    assert got == names


def test_kernel_tables_follow_the_permission_model(yspec: Spec) -> None:
    """One model: every op uns-admin-perm, the group GENL_MCAST_CAP_NET_ADMIN, no fallback."""
    assert {o.perm for o in yspec.commands.values()} == {"uns-admin-perm"}
    assert yspec.mcast_perms == {"events": "uns-admin-perm"}
    src = _c("colo-nl-gen.c")
    assert src.count(".flags\t\t= GENL_UNS_ADMIN_PERM,") == len(yspec.commands)
    assert "GENL_ADMIN_PERM" not in src
    assert ".flags\t= GENL_MCAST_CAP_NET_ADMIN," in src
    assert "#ifndef GENL_MCAST_CAP_NET_ADMIN\n#error" in src
    hand = _c("colo_netlink.c") + _c("colo_node.c") + _c("colo_main.c")
    assert "nla_policy" not in hand and "genl_ops" not in hand, "tables live in colo-nl-gen.c"
    assert "#ifdef GENL" not in hand


def test_kernel_policies_per_op(yspec: Spec) -> None:
    src = _c("colo-nl-gen.c")
    for op in yspec.commands.values():
        name = op.name.replace("-", "_")
        block = re.search(rf"colo_{name}_nl_policy\[[^\]]+\] = \{{(.*?)\n\}};", src, re.S)
        assert block, op.name
        got = set(re.findall(r"\[COLO_A_NODE_(\w+)\]", block.group(1)))
        assert got == {a.upper().replace("-", "_") for a in op.do_request or ()}, op.name
    assert "NLA_POLICY_EXACT_LEN(16)" in src and "NLA_BINARY" not in src
    assert ".start\t\t= colo_nl_dump_start," in src


# --- the kernel's own YNL generator ---------------------------------------------------------

def _ynl() -> Path:
    path = os.environ.get("COLO_YNL_GEN")
    if not path:
        pytest.skip("set COLO_YNL_GEN to a Linux tree's tools/net/ynl/ynl-gen-c.py")
    return Path(path)


def _strip(text: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return text.split()


def _run_ynl(ynl: Path, mode: str, tmp_path: Path) -> str:
    # ynl-gen-c finds its schema next to the spec: run on a copy in the tree's specs dir.
    specs = ynl.parents[3] / "Documentation" / "netlink" / "specs"
    copy = specs / "colo.yaml"
    shutil.copy(YAML, copy)
    out = tmp_path / f"ynl-{mode.replace(' ', '')}"
    python = os.environ.get("COLO_YNL_PYTHON", "python3")
    res = subprocess.run([python, str(ynl), "--mode", *mode.split(), "--spec", str(copy),
                          "-o", str(out)], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, f"ynl-gen-c.py --mode {mode} refused colo.yaml:\n{res.stderr}"
    return out.read_text()


def test_ynl_generator_accepts_the_spec(tmp_path: Path) -> None:
    ynl = _ynl()
    uapi = _run_ynl(ynl, "uapi --header", tmp_path)
    assert _strip(uapi) == _strip(_c("uapi/linux/colo.h")), "uapi header differs from YNL's"
    source = _run_ynl(ynl, "kernel --source", tmp_path)
    ours = _c("colo-nl-gen.c")
    for name in re.findall(r"nla_policy (\w+_nl_policy)\[", source):
        theirs = re.search(rf"{name}\[.*?\n\}};", source, re.S)
        mine = re.search(rf"{name}\[.*?\n\}};", ours, re.S)
        assert theirs and mine, name
        assert _strip(theirs.group(0)) == _strip(mine.group(0)), name
