"""TLS for socket endpoints, interoperable with QEMU's ``tls-creds-x509`` and ``tls-authz``.

Credentials: one directory in QEMU's layout (docs/security.md)::

    ca-cert.pem                       CA that signs the peers' certificates
    server-cert.pem, server-key.pem   used by a server endpoint (",server")
    client-cert.pem, client-key.pem   used by a client endpoint
    ca-crl.pem                        optional revocation list

As with ``verify-peer=on``, the peer must present a certificate issued by the
CA: a server endpoint requires a client certificate, a client endpoint checks
the server's certificate and that it names the host it connects to (QEMU checks
the ``host=`` of a client chardev the same way).

Authorisation: QEMU matches the peer certificate's distinguished name as
GnuTLS's ``gnutls_x509_crt_get_dn`` prints it against a ``QAuthZ`` object: the
RDNs in the order of the certificate's subject (``C=...,O=...,CN=...`` for a
subject made as ``/C=../O=../CN=..``), *not* reversed as RFC 4514 would; QEMU 7.2
with GnuTLS 3.7 does so (tests/host/test_tls_qemu.py shows QEMU's authz-simple
accepting exactly the string ``peer_dn`` makes).  ``Authz`` does the same with either one DN
(``authz-simple``'s identity) or a JSON file in ``authz-list-file`` format::

    {"policy": "deny",
     "rules": [{"match": "O=colo,CN=secondary", "policy": "allow"},
               {"match": "O=colo,CN=colo-*", "policy": "allow", "format": "glob"}]}

Rules are tried in order, the first match decides, ``policy`` otherwise
(default deny).  ``glob`` knows ``*`` and ``?`` (GLib's simple patterns).
"""

from __future__ import annotations

import json
import os
import re
import ssl
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a peer has to complete the TLS handshake."""

_SHORT_NAMES = {
    "commonName": "CN", "countryName": "C", "localityName": "L",
    "stateOrProvinceName": "ST", "organizationName": "O",
    "organizationalUnitName": "OU", "emailAddress": "EMAIL",
    "domainComponent": "DC", "userId": "UID", "streetAddress": "STREET",
}


def _creds_file(creds_dir: str, name: str, what: str) -> str:
    path = os.path.join(creds_dir, name)
    if not os.path.isfile(path):
        raise InputError(f"{what}: tls-creds={creds_dir} has no {name}")
    return path


def _load(ctx: ssl.SSLContext, creds_dir: str, role: str, what: str) -> ssl.SSLContext:
    ca = _creds_file(creds_dir, "ca-cert.pem", what)
    cert = _creds_file(creds_dir, f"{role}-cert.pem", what)
    key = _creds_file(creds_dir, f"{role}-key.pem", what)
    try:
        ctx.load_verify_locations(cafile=ca)
        ctx.load_cert_chain(cert, key)
        crl = os.path.join(creds_dir, "ca-crl.pem")
        if os.path.isfile(crl):
            ctx.load_verify_locations(cafile=crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (ssl.SSLError, OSError) as exc:
        raise InputError(f"{what}: tls-creds={creds_dir}: cannot load the {role} "
                         f"credentials: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(creds_dir: str, what: str = "endpoint") -> ssl.SSLContext:
    """Context of a server endpoint: server-cert.pem, and a client certificate required."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), creds_dir, "server", what)


def client_context(creds_dir: str, what: str = "endpoint") -> ssl.SSLContext:
    """Context of a client endpoint: client-cert.pem; the server's name is checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    return _load(ctx, creds_dir, "client", what)


def _escape(value: str) -> str:
    out = re.sub(r'([,+"\\<>;])', r"\\\1", value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def peer_dn(cert: Any) -> str:
    """The DN of a certificate as ``SSLSocket.getpeercert()`` returns it.

    The same string as GnuTLS's ``gnutls_x509_crt_get_dn`` (QEMU's peer name):
    RDNs in the certificate's order joined by ``,``, ``+`` between the values of
    one RDN, RFC 4514 escapes in values.
    """
    if not isinstance(cert, dict):
        return ""
    rdns = cert.get("subject") or ()
    parts = []
    for rdn in rdns:
        parts.append("+".join(f"{_SHORT_NAMES.get(name, name)}={_escape(value)}"
                              for name, value in rdn))
    return ",".join(parts)


@dataclass(frozen=True)
class _Rule:
    match: str
    allow: bool
    glob: bool

    def matches(self, identity: str) -> bool:
        if not self.glob:
            return identity == self.match
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                          for c in self.match)
        return re.fullmatch(pattern, identity, re.DOTALL) is not None


class Authz:
    """An allow-list of peer identities (see the module doc)."""

    def __init__(self, rules: list[_Rule], default_allow: bool, source: str) -> None:
        self.rules = rules
        self.default_allow = default_allow
        self.source = source

    def allowed(self, identity: str) -> bool:
        for rule in self.rules:
            if rule.matches(identity):
                return rule.allow
        return self.default_allow

    @classmethod
    def parse(cls, spec: str, what: str = "endpoint") -> Authz:
        """``spec``: an existing file (authz-list-file JSON), else one DN (authz-simple)."""
        if not os.path.isfile(spec):
            if "=" not in spec:
                raise InputError(f"{what}: tls-authz={spec!r} is neither a file nor a "
                                 "distinguished name (e.g. O=colo,,CN=secondary)")
            return cls([_Rule(spec, True, False)], False, f"DN {spec}")
        try:
            with open(spec, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"{what}: tls-authz={spec}: {exc}") from None
        return cls(_rules(doc, spec, what), _policy(doc, "policy", "deny", spec, what),
                   f"file {spec}")


def _policy(obj: dict[str, Any], key: str, default: str | None, spec: str, what: str) -> bool:
    value = obj.get(key, default)
    if value not in ("allow", "deny"):
        raise InputError(f"{what}: tls-authz={spec}: {key} must be \"allow\" or \"deny\"")
    return bool(value == "allow")


def _rules(doc: Any, spec: str, what: str) -> list[_Rule]:
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise InputError(f"{what}: tls-authz={spec}: expected an authz-list-file object "
                         '{"policy": ..., "rules": [...]}')
    rules = []
    for rule in doc.get("rules", []):
        if not isinstance(rule, dict) or not isinstance(rule.get("match"), str):
            raise InputError(f"{what}: tls-authz={spec}: every rule needs a \"match\" string")
        fmt = rule.get("format", "exact")
        if fmt not in ("exact", "glob"):
            raise InputError(f"{what}: tls-authz={spec}: format must be \"exact\" or \"glob\"")
        rules.append(_Rule(rule["match"], _policy(rule, "policy", None, spec, what),
                           fmt == "glob"))
    return rules
