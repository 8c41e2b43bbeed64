"""The ``.modinfo`` section of a built kernel module, read from the ELF file itself.

``modinfo(8)`` takes an argument without a slash for a module *name*, and its errors
differ with the kind of file; reading the section here gives every non-module the same
message and needs no tool.
"""

from __future__ import annotations

import struct
from pathlib import Path

from ..errors import InputError

_ELF_MAGIC = b"\x7fELF"
_ET_REL = 1


def not_a_module(ko: Path) -> InputError:
    return InputError(f"{ko}: not a kernel module (no ELF .modinfo section with a vermagic; "
                      "pass a built .ko file)")


def _sections(blob: bytes) -> dict[bytes, bytes]:
    """Section name -> contents of an ELF file (empty if it is not a relocatable ELF)."""
    if len(blob) < 64 or not blob.startswith(_ELF_MAGIC) or blob[4] not in (1, 2) \
            or blob[5] not in (1, 2):
        return {}
    wide = blob[4] == 2
    order = "<" if blob[5] == 1 else ">"
    if struct.unpack_from(order + "H", blob, 16)[0] != _ET_REL:
        return {}
    if wide:
        shoff = struct.unpack_from(order + "Q", blob, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", blob, 0x3A)
        header = struct.Struct(order + "IIQQQQ")  # name type flags addr offset size
    else:
        shoff = struct.unpack_from(order + "I", blob, 0x20)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", blob, 0x2E)
        header = struct.Struct(order + "IIIIII")
    if shentsize < header.size or shstrndx >= shnum or shoff + shnum * shentsize > len(blob):
        return {}
    entries = [header.unpack_from(blob, shoff + i * shentsize) for i in range(shnum)]
    names_at, names_size = entries[shstrndx][4], entries[shstrndx][5]
    names = blob[names_at:names_at + names_size]
    out: dict[bytes, bytes] = {}
    for name_off, _type, _flags, _addr, offset, size in entries:
        end = names.find(b"\0", name_off)
        if 0 <= name_off < len(names) and end >= 0 and offset + size <= len(blob):
            out[names[name_off:end]] = blob[offset:offset + size]
    return out


def modinfo(ko: Path) -> dict[str, str]:
    """The module's ``key=value`` tags (the last value of a repeated key); InputError with
    one message for anything that is not a built kernel module."""
    try:
        blob = ko.read_bytes()
    except IsADirectoryError:
        raise not_a_module(ko) from None
    except OSError as exc:
        raise InputError(f"{ko}: cannot read: {exc.strerror or exc}") from None
    section = _sections(blob).get(b".modinfo", b"")
    tags: dict[str, str] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            tags[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    if not tags.get("vermagic"):
        raise not_a_module(ko)
    return tags


def vermagic_release(ko: Path) -> str:
    """The kernel release the module was built for (first word of its vermagic)."""
    return modinfo(ko)["vermagic"].split(" ", 1)[0]
