"""Endpoint specs with TLS, authz and group flags; tls-authz allow-lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from colo_proxy.datapath.endpoints import Endpoint, parse_endpoint, split_flags
from colo_proxy.datapath.tls import Authz
from colo_proxy.errors import InputError


@pytest.mark.parametrize("text,expected", [
    ("tcp:9004,server", Endpoint("tcp", "127.0.0.1", 9004, True)),
    ("tcp:10.0.0.1:9004,server,tls-creds=/etc/colo/tls",
     Endpoint("tcp", "10.0.0.1", 9004, True, tls_creds="/etc/colo/tls")),
    ("tcp:[::1]:9,tls-creds=/d,tls-authz=O=colo,,CN=secondary",
     Endpoint("tcp", "::1", 9, False, tls_creds="/d", tls_authz="O=colo,CN=secondary")),
    ("unix:/run/colo/s.sock,server,group=kvm",
     Endpoint("unix", "/run/colo/s.sock", 0, True, group="kvm")),
])
def test_parse_flags(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text,error", [
    ("tcp:h:9,tls-authz=CN=x", "tls-authz needs tls-creds"),
    ("unix:/x,server,tls-creds=/d", "tls-creds is for tcp"),
    ("unix:/x,group=kvm", "group= is for unix server"),
    ("tcp:h:9,server,group=kvm", "group= is for unix"),
    ("tcp:h:9,tls-creds=", "needs a value"),
    ("tcp::9", "missing host"),
])
def test_parse_flag_errors(text: str, error: str) -> None:
    with pytest.raises(InputError, match=error):
        parse_endpoint(text, "--x")


def test_double_comma_is_a_literal_comma() -> None:
    assert split_flags("a,b=c,,d,,,e") == ["a", "b=c,d,", "e"]


def test_str_and_loopback() -> None:
    ep = parse_endpoint("tcp:0.0.0.0:9004,server,tls-creds=/d")
    assert str(ep) == "tcp:0.0.0.0:9004,server" and ep.tls and not ep.loopback
    assert parse_endpoint("tcp:localhost:1").loopback
    assert parse_endpoint("tcp:[::1]:1").loopback
    assert parse_endpoint("unix:/x").loopback
    assert not parse_endpoint("tcp:primary.example:1").loopback


def test_authz_single_dn() -> None:
    authz = Authz.parse("O=colo,CN=secondary")
    assert authz.allowed("O=colo,CN=secondary")
    assert not authz.allowed("O=colo,CN=secondary2")
    assert not authz.allowed("o=colo,cn=secondary")


def test_authz_listfile_rules_in_order(tmp_path: Path) -> None:
    path = tmp_path / "authz.json"
    path.write_text(json.dumps({"policy": "deny", "rules": [
        {"match": "O=colo,CN=bad-*", "policy": "deny", "format": "glob"},
        {"match": "O=colo,CN=*", "policy": "allow", "format": "glob"},
        {"match": "O=other,CN=x", "policy": "allow"}]}))
    authz = Authz.parse(str(path))
    assert authz.allowed("O=colo,CN=secondary")
    assert not authz.allowed("O=colo,CN=bad-one")
    assert authz.allowed("O=other,CN=x")
    assert not authz.allowed("O=other,CN=y")
    assert not authz.allowed("O=colo2,CN=x")


@pytest.mark.parametrize("doc,error", [
    ([], "expected an authz-list-file object"),
    ({"rules": [{"policy": "allow"}]}, "needs a \"match\""),
    ({"rules": [{"match": "x", "policy": "maybe"}]}, "policy must be"),
    ({"rules": [{"match": "x", "policy": "allow", "format": "regex"}]}, "format must be"),
])
def test_authz_listfile_errors(tmp_path: Path, doc: object, error: str) -> None:
    path = tmp_path / "authz.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=error):
        Authz.parse(str(path))


def test_authz_neither_file_nor_dn() -> None:
    with pytest.raises(InputError, match="neither a file nor"):
        Authz.parse("/no/such/file")
