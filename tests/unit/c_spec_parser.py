"""Just enough of a C reader to check nf_colo against colo.yaml.

Reads enums and #defines from the uapi header and the nla_policy tables, the
genl ops table and the multicast group table from the module's .c files.
Anything it cannot read raises ``CParseError`` so the agreement test fails
loudly rather than checking nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


class CParseError(Exception):
    pass


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return text.replace("\\\n", " ")  # join macro continuation lines


def object_macros(text: str) -> dict[str, str]:
    """Object-like #defines (no parameters), bodies on one line after strip_comments."""
    return {name: body.strip() for name, body in
            re.findall(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(?![\w(])[ \t]*(.*)$", text, flags=re.M)}


def expand(text: str, macros: dict[str, str]) -> str:
    """Expand object-like macros in ``text`` (repeatedly, for nested macros)."""
    for _ in range(10):
        new = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: macros.get(m.group(0), m.group(0)), text)
        if new == text:
            return new
        text = new
    raise CParseError("macro expansion does not terminate")


def _eval(expr: str, names: dict[str, int]) -> int:
    """Evaluate an integer constant expression made of literals, known names, + - << ( )."""
    tokens = re.findall(r"0[xX][0-9a-fA-F]+|\d+[uUlL]*|[A-Za-z_]\w*|<<|>>|[-+()|~*]", expr)
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", expr):
        raise CParseError(f"cannot evaluate C expression {expr!r}")
    out: list[str] = []
    for tok in tokens:
        if re.fullmatch(r"[A-Za-z_]\w*", tok):
            if tok not in names:
                raise CParseError(f"unknown name {tok} in {expr!r}")
            out.append(str(names[tok]))
        elif tok[0].isdigit():
            out.append(str(int(tok.rstrip("uUlL"), 0)))
        else:
            out.append(tok)
    return int(eval(" ".join(out), {"__builtins__": {}}, {}))


@dataclass
class Header:
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    """enum tag (or the first member's name for anonymous enums) -> member -> value"""
    values: dict[str, int] = field(default_factory=dict)
    """every enum member and integer #define"""
    strings: dict[str, str] = field(default_factory=dict)
    """string #defines"""


def parse_header(text: str, base: Header | None = None) -> Header:
    text = strip_comments(text)
    hdr = base or Header()
    for name, value in re.findall(r'^\s*#\s*define\s+(\w+)\s+"([^"]*)"', text, flags=re.M):
        hdr.strings[name] = value
    for name, value in re.findall(r"^\s*#\s*define\s+(\w+)\s+([-+()\w\s<]+?)\s*$", text,
                                  flags=re.M):
        try:
            hdr.values[name] = _eval(value, hdr.values)
        except CParseError:
            continue
    for tag, body in re.findall(r"\benum\s+(\w*)\s*\{(.*?)\}", text, flags=re.S):
        members: dict[str, int] = {}
        nxt = 0
        for item in (i.strip() for i in body.split(",")):
            if not item:
                continue
            m = re.fullmatch(r"(\w+)\s*(?:=\s*(.+))?", item, flags=re.S)
            if not m:
                raise CParseError(f"cannot read enum member {item!r}")
            name, expr = m.group(1), m.group(2)
            value = _eval(expr, hdr.values) if expr else nxt
            members[name] = value
            hdr.values[name] = value
            nxt = value + 1
        key = tag or next(iter(members), "")
        hdr.enums[key] = members
    return hdr


@dataclass
class PolicyEntry:
    attr: str
    type: str
    min: int | None = None
    max: int | None = None
    max_len: int | None = None
    nested: str | None = None


def _split_top(text: str) -> list[str]:
    """Split on commas not nested in () or {}."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def range_validations(text: str, hdr: Header) -> dict[str, tuple[int | None, int | None]]:
    """``struct netlink_range_validation NAME = { .min = A, .max = B };`` -> (A, B)."""
    out: dict[str, tuple[int | None, int | None]] = {}
    for name, body in re.findall(
        r"struct\s+netlink_range_validation(?:_signed)?\s+(\w+)[^=;{]*=\s*\{(.*?)\}", text,
        flags=re.S,
    ):
        fields = dict(re.findall(r"\.(min|max)\s*=\s*([^,}]+)", body))
        out[name] = tuple(  # type: ignore[assignment]
            _eval(fields[k], hdr.values) if k in fields else None for k in ("min", "max")
        )
    return out


def _policy_entry(attr: str, expr: str, hdr: Header,
                  ranges: dict[str, tuple[int | None, int | None]]) -> PolicyEntry:
    expr = " ".join(expr.split())
    m = re.fullmatch(r"NLA_POLICY_(\w+)\((.*)\)", expr)
    if m:
        kind, args = m.group(1), _split_top(m.group(2))
        if kind == "FULL_RANGE":
            name = args[1].lstrip("&").strip()
            if name not in ranges:
                raise CParseError(f"range validation {name} of {attr} not found")
            lo, hi = ranges[name]
            return PolicyEntry(attr, args[0], min=lo, max=hi)
        if kind == "NESTED":
            return PolicyEntry(attr, "NLA_NESTED", nested=args[0])
        if kind == "RANGE":
            return PolicyEntry(attr, args[0], min=_eval(args[1], hdr.values),
                               max=_eval(args[2], hdr.values))
        if kind == "MAX":
            return PolicyEntry(attr, args[0], max=_eval(args[1], hdr.values))
        if kind == "MIN":
            return PolicyEntry(attr, args[0], min=_eval(args[1], hdr.values))
        if kind == "MAX_LEN":
            return PolicyEntry(attr, "NLA_BINARY", max_len=_eval(args[0], hdr.values))
        raise CParseError(f"policy macro NLA_POLICY_{kind} for {attr} not understood")
    m = re.fullmatch(r"\{(.*)\}", expr)
    if not m:
        raise CParseError(f"policy entry for {attr} not understood: {expr!r}")
    fields: dict[str, str] = {}
    for part in _split_top(m.group(1)):
        fm = re.fullmatch(r"\.(\w+)\s*=\s*(.+)", part)
        if not fm:
            raise CParseError(f"policy field {part!r} of {attr} not understood")
        fields[fm.group(1)] = fm.group(2).strip()
    entry = PolicyEntry(attr, fields.pop("type"))
    if "len" in fields:
        entry.max_len = _eval(fields.pop("len"), hdr.values)
    if "min" in fields:
        entry.min = _eval(fields.pop("min"), hdr.values)
    if "max" in fields:
        entry.max = _eval(fields.pop("max"), hdr.values)
    if "nested_policy" in fields:
        entry.nested = fields.pop("nested_policy")
    fields.pop("validation_type", None)
    if fields:
        raise CParseError(f"policy fields {sorted(fields)} of {attr} not understood")
    return entry


def _array(struct: str) -> str:
    """Regex for ``[static const] struct <struct> NAME[...] = { BODY };`` capturing BODY."""
    return r"struct\s+" + struct + r"\s+\w+\s*\[[^\]]*\]\s*=\s*\{(.*?)\n\s*\}\s*;"


def parse_policies(text: str, hdr: Header) -> dict[str, dict[str, PolicyEntry]]:
    """``static const struct nla_policy NAME[...] = { [ATTR] = ..., };`` tables."""
    text = strip_comments(text)
    ranges = range_validations(text, hdr)
    macros = object_macros(text)
    text = re.sub(r"^[ \t]*#.*$", "", text, flags=re.M)
    tables: dict[str, dict[str, PolicyEntry]] = {}
    for name, body in re.findall(
        r"struct\s+nla_policy\s+(\w+)\s*\[[^\]]*\]\s*=\s*\{(.*?)\n\s*\}\s*;", text, flags=re.S
    ):
        entries: dict[str, PolicyEntry] = {}
        for item in _split_top(expand(body, macros)):
            m = re.fullmatch(r"\[\s*(\w+)\s*\]\s*=\s*(.+)", item, flags=re.S)
            if not m:
                raise CParseError(f"policy {name}: cannot read {item!r}")
            entries[m.group(1)] = _policy_entry(m.group(1), m.group(2), hdr, ranges)
        tables[name] = entries
    return tables


@dataclass
class OpEntry:
    cmd: str
    perm: str | None
    """GENL_ADMIN_PERM, GENL_UNS_ADMIN_PERM or None"""
    doit: bool
    dumpit: bool
    policy: str | None


def parse_ops(text: str) -> list[OpEntry]:
    """Entries of ``struct genl_ops`` / ``genl_small_ops`` arrays."""
    text = strip_comments(text)
    ops: list[OpEntry] = []
    arrays = re.findall(_array("genl_(?:small_)?ops"), text, flags=re.S)
    for body in arrays:
        for block in _split_top(body):
            inner = block.strip().strip("{}")
            fields = {}
            for part in _split_top(inner):
                fm = re.fullmatch(r"\.(\w+)\s*=\s*(.+)", part, flags=re.S)
                if fm:
                    fields[fm.group(1)] = " ".join(fm.group(2).split())
            if "cmd" not in fields:
                continue
            ops.append(OpEntry(
                cmd=fields["cmd"],
                perm=next((f for f in ("GENL_UNS_ADMIN_PERM", "GENL_ADMIN_PERM")
                           if re.search(rf"\b{f}\b", fields.get("flags", ""))), None),
                doit="doit" in fields,
                dumpit="dumpit" in fields,
                policy=fields.get("policy"),
            ))
    return ops


def parse_mcgrps(text: str, hdr: Header) -> list[str]:
    text = strip_comments(text)
    names: list[str] = []
    for body in re.findall(_array("genl_multicast_group"), text, flags=re.S):
        for value in re.findall(r"\.name\s*=\s*(\"[^\"]*\"|\w+)", body):
            names.append(value.strip('"') if value.startswith('"') else hdr.strings[value])
    return names


def family_name(text: str, hdr: Header) -> str | None:
    text = strip_comments(text)
    m = re.search(r"struct\s+genl_family\s+\w+[^=;]*=\s*\{(.*?)\n\s*\}\s*;", text, flags=re.S)
    if not m:
        return None
    nm = re.search(r"\.name\s*=\s*(\"[^\"]*\"|\w+)", m.group(1))
    if not nm:
        return None
    value = nm.group(1)
    return value.strip('"') if value.startswith('"') else hdr.strings.get(value)


def read_sources(kmod_dir: Path) -> str:
    """All .c and private .h files of the module, concatenated."""
    files = sorted(kmod_dir.glob("*.c")) + sorted(kmod_dir.glob("*.h"))
    return "\n".join(p.read_text(encoding="utf-8") for p in files)
