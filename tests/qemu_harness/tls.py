"""Test PKIs in QEMU's tls-creds-x509 layout, made with the openssl command at test time.

``make_pki(root)`` writes:

* ``root/good/``: ``ca-cert.pem`` (CA "colo-test CA"), ``server-cert.pem`` +
  ``server-key.pem`` (subject ``/O=colo-test/CN=colo-primary``, SAN IP:127.0.0.1 and
  DNS:localhost, serverAuth), ``client-cert.pem`` + ``client-key.pem``
  (``/O=colo-test/CN=colo-secondary``, clientAuth).  One directory serves as
  QEMU's ``tls-creds-x509,endpoint=server`` and ``endpoint=client`` and as
  colo-proxy's ``tls-creds=DIR`` in either role.
* intruders, each a ``client-cert.pem`` + ``client-key.pem`` (plus the good
  ``ca-cert.pem``) that a server endpoint must refuse: ``self-signed/`` (same DN,
  signed by itself), ``other-ca/`` (same DN, another CA), ``other-dn/`` (the
  good CA, ``/O=colo-test/CN=intruder``).
* impostor servers, each a ``server-cert.pem`` + ``server-key.pem`` + ``ca-cert.pem``
  for a QEMU TLS server chardev that a colo-proxy client endpoint must refuse:
  ``other-ca-server/`` (another CA), ``wrong-host-server/`` (the good CA, but the
  certificate names ``elsewhere.invalid``, not 127.0.0.1).

The certificates carry the extensions QEMU's credential sanity checks want
(basicConstraints, keyUsage, extendedKeyUsage).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from colo_proxy.errors import ColoError

# As GnuTLS (and so QEMU's tls-authz) prints them: in the certificates' subject order.
CLIENT_DN = "O=colo-test,CN=colo-secondary"
SERVER_DN = "O=colo-test,CN=colo-primary"
INTRUDER_DN = "O=colo-test,CN=intruder"


@dataclass(frozen=True)
class Pki:
    good: Path
    self_signed: Path
    other_ca: Path
    other_dn: Path
    other_ca_server: Path
    """A server (cert, key, and its own CA as ca-cert.pem) that colo-proxy must not trust."""
    wrong_host_server: Path
    """A server cert from the good CA naming another host (SAN DNS:elsewhere.invalid)."""


def _openssl(*args: str | Path) -> None:
    if shutil.which("openssl") is None:
        raise ColoError("openssl not found (apt-get install openssl)")
    proc = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise ColoError(f"openssl {args[0]} failed: {proc.stderr.strip()[-400:]}")


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca-cert.pem", directory / "ca-key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "2", "-subj", f"/O=colo-test/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(directory: Path, role: str, subject: str, ca: tuple[Path, Path] | None,
          serial: int, *, san: str = "IP:127.0.0.1,DNS:localhost") -> None:
    """``{role}-cert.pem``/``{role}-key.pem`` in ``directory``; ``ca=None``: self-signed."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{role}-cert.pem", directory / f"{role}-key.pem"
    usage = "serverAuth" if role == "server" else "clientAuth"
    ext = directory / f"{role}.ext"
    ext.write_text("basicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage={usage}\n"
                   f"subjectAltName={san}\n")
    if ca is None:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                 "-days", "2", "-subj", subject, "-extensions", "v3", "-config",
                 _self_signed_config(directory, ext))
        return
    csr = directory / f"{role}.csr"
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", subject)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial",
             str(serial), "-days", "2", "-out", cert, "-extfile", ext)
    csr.unlink()


def _self_signed_config(directory: Path, ext: Path) -> Path:
    config = directory / "self-signed.cnf"
    config.write_text("[req]\ndistinguished_name=dn\n[dn]\n[v3]\n" + ext.read_text())
    return config


def make_pki(root: Path) -> Pki:
    good, other = root / "good", root / "ca2"
    ca = _ca(good, "colo-test CA")
    _leaf(good, "server", "/O=colo-test/CN=colo-primary", ca, 1)
    _leaf(good, "client", "/O=colo-test/CN=colo-secondary", ca, 2)
    ca2 = _ca(other, "other CA")
    pki = Pki(good, root / "self-signed", root / "other-ca", root / "other-dn",
              root / "other-ca-server", root / "wrong-host-server")
    _leaf(pki.self_signed, "client", "/O=colo-test/CN=colo-secondary", None, 3)
    _leaf(pki.other_ca, "client", "/O=colo-test/CN=colo-secondary", ca2, 4)
    _leaf(pki.other_dn, "client", "/O=colo-test/CN=intruder", ca, 5)
    for d in (pki.self_signed, pki.other_ca, pki.other_dn):
        shutil.copy(good / "ca-cert.pem", d / "ca-cert.pem")
    _leaf(pki.other_ca_server, "server", "/O=colo-test/CN=colo-primary", ca2, 6)
    shutil.copy(other / "ca-cert.pem", pki.other_ca_server / "ca-cert.pem")
    _leaf(pki.wrong_host_server, "server", "/O=colo-test/CN=colo-primary", ca, 7,
          san="DNS:elsewhere.invalid")
    shutil.copy(good / "ca-cert.pem", pki.wrong_host_server / "ca-cert.pem")
    return pki


def tls_creds_arg(obj_id: str, directory: Path, endpoint: str) -> list[str]:
    """QEMU arguments for ``-object tls-creds-x509`` with verify-peer=on."""
    return ["-object", f"tls-creds-x509,id={obj_id},dir={directory},endpoint={endpoint},"
                       "verify-peer=on"]
