"""TLS on the datapath's endpoints against real QEMU ``tls-creds-x509`` chardevs.

Certificates are made at test time (qemu_harness/tls.py, openssl) in QEMU's
directory layout; one directory serves QEMU and colo-proxy alike.

* interop, both directions: QEMU's secondary redirector is a TLS *client*
  chardev connecting to ``--secondary-in ...,server,tls-creds=DIR``; colo-proxy's
  ``--primary-in`` and ``--outdev`` are TLS *clients* of QEMU TLS *server*
  chardevs that check colo-proxy's certificate with ``tls-authz`` (an
  ``authz-list`` with the rules of colo-proxy's tls-authz file, and an ``authz-simple`` whose
  identity is the DN string colo-proxy computes: QEMU accepting it shows both
  print the DN the same way).
* refusal: clients with no certificate, a self-signed one, one from another CA,
  one whose DN is not allowed, or no TLS at all are refused and logged, and the
  frames they send change nothing; a second client with valid credentials
  while the real secondary is connected is refused as well.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu_harness.driver import OutdevReader
from qemu_harness.process import free_tcp_port
from qemu_harness.redirector import RedirectIn, RedirectorFeeder, RedirectOut
from qemu_harness.tls import CLIENT_DN, INTRUDER_DN, SERVER_DN, Pki, make_pki, tls_creds_arg
from test_qemu_socket_datapath import Datapath, udp_frame

from colo_proxy.datapath.tls import peer_dn
from colo_proxy.qemu.framing import encode

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _qemu_escape(value: str) -> str:
    return value.replace(",", ",,")


@pytest.fixture
def cleanup() -> Iterator[list[Datapath | RedirectorFeeder]]:
    items: list[Datapath | RedirectorFeeder] = []
    try:
        yield items
    finally:
        for item in reversed(items):
            if isinstance(item, RedirectorFeeder):
                item.stop()
            else:
                item.close()


def test_dn_is_printed_like_gnutls(pki: Pki) -> None:
    cert = ssl._ssl._test_decode_cert(str(pki.good / "client-cert.pem"))  # type: ignore[attr-defined]
    assert peer_dn(cert) == CLIENT_DN


def test_tls_both_directions_with_real_qemu(pki: Pki, tmp_path: Path,
                                            cleanup: list[Datapath | RedirectorFeeder]) -> None:
    authz = tmp_path / "authz.json"
    rules = {"policy": "deny", "rules": [
        {"match": "O=colo-test,CN=colo-*", "policy": "allow", "format": "glob"}]}
    authz.write_text(json.dumps(rules))
    pin, sin, out = (free_tcp_port() for _ in range(3))
    dp = Datapath(["--primary-in", f"tcp:127.0.0.1:{pin},tls-creds={pki.good}",
                   "--secondary-in",
                   f"tcp:127.0.0.1:{sin},server,tls-creds={pki.good},tls-authz={authz}",
                   "--outdev", f"tcp:127.0.0.1:{out},tls-creds={pki.good}",
                   "--compare-timeout", "600000"])
    cleanup.append(dp)
    dp.wait_log("secondary_in: listening")
    assert f"secondary_in: listening on tcp:127.0.0.1:{sin},server (TLS, tls-authz file" in dp.log()
    extra = [*tls_creds_arg("tlss", pki.good, "server"),
             *tls_creds_arg("tlsc", pki.good, "client"),
             # QEMU 7.2 cannot create authz-list-file from -object (its QAPI name is
             # authz-listfile, the QOM type authz-list-file); authz-list takes the same
             # document inline.
             "-object", json.dumps({"qom-type": "authz-list", "id": "azl", **rules}),
             "-object", f"authz-simple,id=azs,identity={_qemu_escape(CLIENT_DN)}"]
    feeder = RedirectorFeeder([
        RedirectOut("p", f"host=127.0.0.1,port={pin},server=on,wait=off,"
                         "tls-creds=tlss,tls-authz=azl"),
        RedirectOut("s", f"host=127.0.0.1,port={sin},tls-creds=tlsc"),
        RedirectIn("o", f"host=127.0.0.1,port={out},server=on,wait=off,"
                        "tls-creds=tlss,tls-authz=azs"),
    ], extra_args=extra)
    cleanup.append(feeder)
    feeder.start()
    feeder.wait_connected()
    for name in ("primary_in", "secondary_in", "outdev"):
        dp.wait_log(f"{name}: connected")
    assert f"secondary_in: connected (tcp:127.0.0.1:{sin},server, peer 127.0.0.1:" in dp.log()
    assert f"TLS peer '{CLIENT_DN}'" in dp.log()
    frames = [udp_frame(f"over TLS {i}".encode()) for i in range(3)]
    for f in frames:
        feeder.send("p", f)
        feeder.send("s", f)
    assert [feeder.recv("o", 5.0) for _ in frames] == frames
    assert dp.terminate() == 0
    assert "refused" not in dp.log()


def _tls_intruder(port: int, creds: Path | None) -> ssl.SSLSocket | None:
    """A TLS client that does not check the server; presents ``creds``' client cert.

    None if the handshake already failed on the client's side (refused then).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if creds is not None:
        ctx.load_cert_chain(creds / "client-cert.pem", creds / "client-key.pem")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except OSError:
        raw.close()
        return None


def _refused(sock: socket.socket | None) -> bool:
    """True once the server has ended the connection (alert, EOF or reset)."""
    if sock is None:
        return True
    sock.settimeout(10.0)
    try:
        return sock.recv(4096) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _wait_refusals(dp: Datapath, count: int, timeout: float = 10.0) -> list[str]:
    """The datapath's "refused connection" lines, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in dp.log().splitlines()
                 if "secondary_in: refused connection" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_clients_without_valid_certificate_are_refused_and_change_nothing(
        pki: Pki, cleanup: list[Datapath | RedirectorFeeder]) -> None:
    pin, sin, out = (free_tcp_port() for _ in range(3))
    dp = Datapath(["--primary-in", f"tcp:127.0.0.1:{pin}",
                   "--secondary-in", f"tcp:127.0.0.1:{sin},server,tls-creds={pki.good},"
                                     f"tls-authz={_qemu_escape(CLIENT_DN)}",
                   "--outdev", f"tcp:127.0.0.1:{out}", "--compare-timeout", "600000"])
    cleanup.append(dp)
    dp.wait_log("secondary_in: listening")
    forged = udp_frame(b"forged secondary output")
    cases = [("no certificate", None, "TLS handshake failed"),
             ("self-signed", pki.self_signed, "TLS handshake failed"),
             ("other CA", pki.other_ca, "TLS handshake failed"),
             ("DN not allowed", pki.other_dn, "not allowed by tls-authz")]
    for i, (what, creds, reason) in enumerate(cases, start=1):
        sock = _tls_intruder(sin, creds)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(encode(forged, None))
        assert _refused(sock), what
        if sock is not None:
            sock.close()
        refusals = _wait_refusals(dp, i)
        assert len(refusals) == i and reason in refusals[-1], (what, dp.log())
    assert f"{INTRUDER_DN!r} not allowed by tls-authz" in dp.log()
    # No TLS at all: plain framed bytes.
    with socket.create_connection(("127.0.0.1", sin), timeout=10) as plain:
        with contextlib.suppress(OSError):
            plain.sendall(encode(forged, None))
        assert _refused(plain)
    assert "TLS handshake failed: WRONG_VERSION_NUMBER" in _wait_refusals(dp, 5)[-1]
    assert "secondary_in: connected" not in dp.log()

    # The real secondary (QEMU, TLS client chardev) then connects and is admitted.
    feeder = RedirectorFeeder([
        RedirectOut("p", f"host=127.0.0.1,port={pin},server=on,wait=off"),
        RedirectOut("s", f"host=127.0.0.1,port={sin},tls-creds=tlsc"),
        RedirectIn("o", f"host=127.0.0.1,port={out},server=on,wait=off"),
    ], extra_args=tls_creds_arg("tlsc", pki.good, "client"))
    cleanup.append(feeder)
    feeder.start()
    feeder.wait_connected()
    for name in ("primary_in", "secondary_in", "outdev"):
        dp.wait_log(f"{name}: connected")
    # Nothing the intruders sent reached the comparison: the primary's copy is held
    # until the real secondary sends its own.
    feeder.send("p", forged)
    assert feeder.recv("o", 0.5) is None
    feeder.send("s", forged)
    assert feeder.recv("o", 5.0) == forged
    # Valid credentials do not displace the live secondary either.
    second = _tls_intruder(sin, pki.good)
    assert _refused(second)
    if second is not None:
        second.close()
    dp.wait_log("already connected to 127.0.0.1:")
    assert feeder.chardev_connected("s")
    again = udp_frame(b"still the real secondary", sport=7000)
    feeder.send("p", again)
    feeder.send("s", again)
    assert feeder.recv("o", 5.0) == again
    assert dp.terminate() == 0
    assert ("secondary_in: refused 6 connections (1 while connected, 4 TLS handshake, "
            "1 tls-authz)") in dp.log()


@pytest.mark.parametrize("impostor", ["other_ca_server", "wrong_host_server", "dn_not_allowed"])
def test_client_endpoint_refuses_an_impostor_qemu_server(
        pki: Pki, impostor: str, cleanup: list[Datapath | RedirectorFeeder]) -> None:
    """--primary-in as TLS client: a QEMU server whose certificate is not from our CA,
    does not name the host we connect to, or whose DN tls-authz does not allow, never
    feeds the comparison."""
    pin, sin, out = (free_tcp_port() for _ in range(3))
    authz = ",tls-authz=O=colo-test,,CN=another-primary" if impostor == "dn_not_allowed" else ""
    dp = Datapath(["--primary-in", f"tcp:127.0.0.1:{pin},tls-creds={pki.good}{authz}",
                   "--secondary-in", f"tcp:127.0.0.1:{sin},server",
                   "--outdev", f"tcp:127.0.0.1:{out}", "--compare-timeout", "600000"])
    cleanup.append(dp)
    dp.wait_log("secondary_in: listening")
    feeder = RedirectorFeeder([
        RedirectOut("p", f"host=127.0.0.1,port={pin},server=on,wait=off,tls-creds=tlss"),
        RedirectOut("s", f"host=127.0.0.1,port={sin}"),
        RedirectIn("o", f"host=127.0.0.1,port={out},server=on,wait=off"),
    ], extra_args=tls_creds_arg("tlss", pki.good if impostor == "dn_not_allowed"
                                else getattr(pki, impostor), "server"))
    cleanup.append(feeder)
    feeder.start()
    dp.wait_log("secondary_in: connected")
    dp.wait_log("outdev: connected")
    if impostor == "dn_not_allowed":
        dp.wait_log(f"primary_in: refused connection from 127.0.0.1:{pin}: certificate "
                    f"{SERVER_DN!r} not allowed by tls-authz")
    else:
        dp.wait_log("primary_in: TLS with tcp:127.0.0.1:")
        assert "CERTIFICATE_VERIFY_FAILED" in dp.log()
        reason = ("unable to get local issuer certificate" if impostor == "other_ca_server"
                  else "IP address mismatch")
        assert reason in dp.log()
    frame = udp_frame(b"from an impostor primary")
    feeder.send("p", frame)
    feeder.send("s", frame)
    assert feeder.recv("o", 0.5) is None
    assert "primary_in: connected" not in dp.log()


def _tls_send_with_finished(port: int, creds: Path, data: bytes) -> socket.socket:
    """TLS client over memory BIOs: its Finished message and ``data`` leave in one send."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(creds / "client-cert.pem", creds / "client-key.pem")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                sock.sendall(pending)
            received = sock.recv(65536)
            assert received, "server closed during the handshake"
            incoming.write(received)
    tls.write(data)
    sock.sendall(outgoing.read())
    return sock


def test_frames_sent_right_after_the_handshake_are_kept(
        pki: Pki, cleanup: list[Datapath | RedirectorFeeder]) -> None:
    """A TLS peer's first frames can arrive with its last handshake message, before
    the tls-authz check has run: they are kept and fed in order once it is admitted.
    (Python TLS clients as the peers, sending Finished and the frames in one write.)"""
    pin, sin, out = (free_tcp_port() for _ in range(3))
    authz = f"tls-authz={_qemu_escape(CLIENT_DN)}"
    dp = Datapath(["--primary-in", f"tcp:127.0.0.1:{pin},server,tls-creds={pki.good},{authz}",
                   "--secondary-in", f"tcp:127.0.0.1:{sin},server,tls-creds={pki.good},{authz}",
                   "--outdev", f"tcp:127.0.0.1:{out},server"])
    cleanup.append(dp)
    dp.wait_log("qemu-socket datapath running")
    outdev = socket.create_connection(("127.0.0.1", out), timeout=10)
    frames = [udp_frame(f"early {i}".encode()) for i in range(20)]
    data = b"".join(encode(f, None) for f in frames)
    peers = []
    try:
        dp.wait_log("outdev: connected")
        for port in (pin, sin):
            peers.append(_tls_send_with_finished(port, pki.good, data))
        dp.wait_log("secondary_in: connected")
        got = OutdevReader(outdev).wait_for(len(frames), 10.0)
        assert [f.payload for f in got] == frames
    finally:
        for sock in peers:
            sock.close()
        outdev.close()
