"""Mutation fuzzer for the colo family: valid requests from pyroute2, then byte mutations.

``Fuzzer.message(seq)`` returns one request (bytes) and whether the kernel must answer
it.  All requests carry NLM_F_REQUEST|NLM_F_ACK (except the "no-request" kind), so the
kernel owes each one a terminal NLMSG_ERROR (ack or error) or, for a dump, NLMSG_DONE.
The "broken-header" kind (nlmsg_len shorter than a header or longer than the datagram)
is silently dropped by the netlink core by design; it is sent last in its batch.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from colo_raw import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, encode

from colo_proxy.nl.constants import Cmd
from colo_proxy.nl.model import FlowTuple

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
DO_ONLY = [Cmd.PROXY_INIT, Cmd.PROXY_RESET, Cmd.DO_CHECKPOINT, Cmd.DO_FAILOVER,
           Cmd.PROXY_DESTROY, Cmd.REQUEST_CHECKPOINT]


def nla(atype: int, payload: bytes, length: int | None = None) -> bytes:
    """One attribute; ``length`` overrides nla_len (to lie about it)."""
    real = 4 + len(payload)
    hdr = struct.pack("=HH", real if length is None else length, atype)
    return hdr + payload + b"\0" * ((4 - real % 4) % 4)


def with_len(msg: bytes, length: int | None = None) -> bytes:
    return struct.pack("=I", len(msg) if length is None else length) + msg[4:]


class Fuzzer:
    def __init__(self, family_id: int, rng: random.Random, unused_type: int) -> None:
        self.fid = family_id
        self.rng = rng
        self.unused_type = unused_type
        self.templates = [self._template(i) for i in range(400)]
        self.kinds: list[tuple[str, Callable[[bytes], bytes], int]] = [
            ("valid", lambda m: m, 8),
            ("unknown-attr", self._unknown_attr, 8),
            ("wrong-length", self._wrong_length, 10),
            ("zero-length-attr", lambda m: with_len(m + struct.pack("=HH", 0, 1)), 3),
            ("short-attr", lambda m: with_len(m + struct.pack("=HHB", self.rng.randint(1, 3),
                                                                  1, 0)), 3),
            ("huge-length-attr", self._huge_attr, 5),
            ("truncated", self._truncate, 8),
            ("bad-values", self._bad_values, 10),
            ("random-nest", self._random_nest, 8),
            ("attr-flags", self._attr_flags, 4),
            ("random-command", self._random_cmd, 6),
            ("header-fields", self._genl_header, 4),
            ("dump-on-do-op", self._dump_do_only, 4),
            ("random-flags", self._random_flags, 4),
            ("no-request-flag", self._no_request, 2),
            ("bit-flips", self._bitflip, 8),
            ("random-payload", self._random_payload, 4),
            ("short-genl-header", self._short_genl, 2),
            ("other-type", self._other_type, 2),
        ]
        self._weights = [w for _, _, w in self.kinds]

    # -- valid requests (pyroute2) ---------------------------------------------------------
    def _template(self, i: int) -> bytes:
        rng = self.rng
        cmd = rng.choice([*DO_ONLY, Cmd.GET])
        index = rng.randint(1, 48)
        flags = NLM_F_REQUEST | NLM_F_ACK
        attrs: dict[str, object] = {}
        if cmd == Cmd.PROXY_INIT:
            # mostly fixed indexes, so the fuzz keeps a few dozen nodes, not the 1024 cap
            attrs = {"mode": rng.randint(0, 2), "index": None if i % 40 == 0 else index}
        elif cmd in (Cmd.DO_CHECKPOINT, Cmd.DO_FAILOVER):
            mode = rng.randint(0, 3)  # 3: leave the optional mode out
            attrs = {"index": index, "mode": None if mode == 3 else mode}
        elif cmd == Cmd.REQUEST_CHECKPOINT:
            flow = None
            if rng.random() < 0.3:
                flow = FlowTuple.from_addresses(rng.choice([6, 17]), "198.18.0.1", "198.18.0.2",
                                                sport=rng.randint(0, 65535),
                                                dport=rng.randint(0, 65535))
            elif rng.random() < 0.5:
                flow = FlowTuple.from_addresses(6, "2001:db8::1", "2001:db8::2", sport=1,
                                                dport=2,
                                                vlans=(rng.randint(0, 4095),) * rng.randint(0, 4))
            attrs = {"index": index, "reason": rng.randint(0, 7), "tuple": flow}
        elif cmd == Cmd.GET and i % 3 == 0:
            flags |= NLM_F_DUMP
        else:
            attrs = {"index": index}
        return encode(self.fid, cmd, 0, flags=flags, **attrs)

    # -- mutations -----------------------------------------------------------------------------
    def _rand(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def _unknown_attr(self, m: bytes) -> bytes:
        atype = self.rng.choice([0, 10, 11, 50, 255, 0x3FFF, self.rng.randint(10, 0x3FFF)])
        return with_len(m + nla(atype, self._rand(self.rng.randint(0, 40))))

    def _wrong_length(self, m: bytes) -> bytes:
        atype = self.rng.randint(1, 9)
        size = self.rng.choice([0, 1, 2, 3, 5, 6, 7, 8, 9, 12, 16, 17, 33, 200])
        head = m[:20] if self.rng.random() < 0.5 else m
        return with_len(head + nla(atype, self._rand(size)))

    def _huge_attr(self, m: bytes) -> bytes:
        payload = self._rand(self.rng.randint(0, 12))
        return with_len(m + nla(self.rng.randint(1, 9), payload,
                                length=self.rng.randint(len(payload) + 5, 0xFFFF)))

    def _truncate(self, m: bytes) -> bytes:
        if len(m) <= 21:
            return with_len(m[:20] + b"\x08\x00")
        return with_len(m[: self.rng.randint(21, len(m) - 1)])

    def _bad_values(self, m: bytes) -> bytes:
        rng = self.rng
        choice = rng.randint(0, 5)
        if choice == 0:
            extra = nla(1, struct.pack("=I", rng.choice([0, 65536, 0xFFFFFFFF,
                                                         rng.getrandbits(32)])))
        elif choice == 1:
            extra = nla(2, bytes([rng.randint(3, 255)]))
        elif choice == 2:
            extra = nla(6, bytes([rng.randint(8, 255)]))
        elif choice == 3:
            fam = nla(1, bytes([rng.choice([0, 3, 5, 7, 255])]))
            extra = nla(7 | NLA_F_NESTED, fam + nla(3, self._rand(rng.choice([0, 4, 16, 17]))))
        elif choice == 4:
            extra = nla(7 | NLA_F_NESTED, nla(7, struct.pack("=H", rng.randint(4096, 65535))))
        else:
            extra = nla(7 | NLA_F_NESTED, nla(1, b"\x04") + nla(4, self._rand(rng.randint(0, 20))))
        return with_len(m[:20] + extra)

    def _nest(self, depth: int) -> bytes:
        rng = self.rng
        out = b""
        for _ in range(rng.randint(0, 4)):
            if depth > 0 and rng.random() < 0.4:
                out += nla(rng.randint(0, 12) | NLA_F_NESTED, self._nest(depth - 1))
            else:
                out += nla(rng.randint(0, 12), self._rand(rng.randint(0, 17)))
        return out

    def _random_nest(self, m: bytes) -> bytes:
        atype = self.rng.choice([5, 7, 7, 7, 1, 2, 9, self.rng.randint(10, 100)])
        if self.rng.random() < 0.8:
            atype |= NLA_F_NESTED
        return with_len(m + nla(atype, self._nest(self.rng.randint(0, 6))))

    def _attr_flags(self, m: bytes) -> bytes:
        atype = self.rng.randint(1, 9) | self.rng.choice([NLA_F_NESTED, NLA_F_NET_BYTEORDER,
                                                          NLA_F_NESTED | NLA_F_NET_BYTEORDER])
        return with_len(m[:20] + nla(atype, self._rand(self.rng.choice([1, 2, 4, 8]))))

    def _random_cmd(self, m: bytes) -> bytes:
        return m[:16] + bytes([self.rng.choice([0, 8, 9, 10, 99, 255, self.rng.randint(0, 255)])]) \
            + m[17:]

    def _genl_header(self, m: bytes) -> bytes:
        return m[:17] + bytes([self.rng.randint(0, 255)]) + self._rand(2) + m[20:]

    def _dump_do_only(self, m: bytes) -> bytes:
        out = encode(self.fid, self.rng.choice(DO_ONLY), 0,
                     flags=NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, index=self.rng.randint(1, 48))
        return out if self.rng.random() < 0.5 else out[:16] + m[16:17] + out[17:]

    def _random_flags(self, m: bytes) -> bytes:
        flags = NLM_F_REQUEST | NLM_F_ACK | (self.rng.getrandbits(16) & ~0x3)
        return m[:6] + struct.pack("=H", flags) + m[8:]

    def _no_request(self, m: bytes) -> bytes:
        return m[:6] + struct.pack("=H", NLM_F_ACK) + m[8:]

    def _bitflip(self, m: bytes) -> bytes:
        data = bytearray(m)
        for _ in range(self.rng.randint(1, 8)):
            pos = self.rng.randint(16, len(data) - 1)
            data[pos] ^= 1 << self.rng.randint(0, 7)
        return bytes(data)

    def _random_payload(self, m: bytes) -> bytes:
        return with_len(m[:16] + self._rand(self.rng.randint(4, 120)))

    def _short_genl(self, m: bytes) -> bytes:
        return with_len(m[: self.rng.randint(16, 19)])

    def _other_type(self, m: bytes) -> bytes:
        typ = self.rng.choice([0, 1, 3, 4, 5, 15, self.unused_type])
        return m[:4] + struct.pack("=H", typ) + m[6:]

    # -- the generator -----------------------------------------------------------------------
    def message(self, seq: int) -> tuple[str, bytes]:
        name, mutate, _ = self.rng.choices(self.kinds, weights=self._weights)[0]
        msg = mutate(self.rng.choice(self.templates))
        return name, msg[:8] + struct.pack("=I", seq) + msg[12:]

    def broken_header(self, seq: int) -> bytes:
        """A header the netlink core drops silently (length too short or too long)."""
        msg = self.rng.choice(self.templates)
        length = self.rng.choice([0, 4, 15, len(msg) + 4, 0xFFFFFF])
        return with_len(msg[:8] + struct.pack("=I", seq) + msg[12:], length)
