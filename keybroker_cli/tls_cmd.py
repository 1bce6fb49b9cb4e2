"""``keybroker tls ...``: a small private CA and the certificates of a single-host or test
deployment (your own PKI replaces it in production, see README "Production set-up").

Invariants:
- ``init`` never overwrites: a directory that already holds ``ca-key.pem`` is refused. Private
  keys are written with mode 0600 (created exclusively), certificates 0644.
- Keys are ECDSA P-256. The CA is valid for ``--days`` (default 825) and signs only end-entity
  certificates (pathLen 0); server certificates carry serverAuth and subjectAltNames
  (localhost, 127.0.0.1, ::1 and every ``--host``); client certificates carry clientAuth and
  their name as CN and as a URI SAN ``keybroker:<name>``.
- Layout (file names are fixed, so configs can point at them): ``ca.pem``, ``ca-key.pem``,
  ``<name>.pem`` + ``<name>-key.pem`` for the servers ``broker`` and ``verifier`` and for each
  client (default clients: ``broker-client`` for broker -> verifier, ``admin``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVERS = ("broker", "verifier")
DEFAULT_CLIENTS = ("broker-client", "admin")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class TlsDir:
    """Paths of a directory written by ``init``."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca-key.pem"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}-key.pem"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _usage(*, client: bool) -> x509.ExtendedKeyUsage:
    return x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                  else ExtendedKeyUsageOID.SERVER_AUTH])


class TlsAuthority:
    """The private CA of a ``TlsDir`` (loaded or created), issuing server and client certs."""

    def __init__(self, directory: TlsDir, key: ec.EllipticCurvePrivateKey,
                 cert: x509.Certificate, *, days: int) -> None:
        self.dir = directory
        self._key = key
        self.cert = cert
        self.days = days

    @classmethod
    def create(cls, root: Path, *, days: int = 825, now: datetime | None = None
               ) -> TlsAuthority:
        """A new CA in ``root`` (refuses a directory that already has one)."""
        directory = TlsDir(root)
        root.mkdir(parents=True, exist_ok=True)
        if directory.ca_key.exists():
            raise FileExistsError(f"{directory.ca_key} exists; refusing to overwrite a CA")
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keybroker"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "keybroker private CA")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        _write_key(directory.ca_key, key)
        _write_cert(directory.ca, cert)
        return cls(directory, key, cert, days=days)

    @classmethod
    def load(cls, root: Path, *, days: int = 825) -> TlsAuthority:
        """The CA written by ``create``."""
        directory = TlsDir(root)
        key = serialization.load_pem_private_key(directory.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{directory.ca_key} is not an EC key")
        cert = x509.load_pem_x509_certificate(directory.ca.read_bytes())
        return cls(directory, key, cert, days=days)

    def issue(self, name: str, *, client: bool, hosts: Sequence[str] = (),
              not_before: datetime | None = None, not_after: datetime | None = None,
              overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``<name>.pem`` and ``<name>-key.pem``; returns (certificate, key)."""
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"certificate name {name!r}: expected 1-63 of [a-z0-9._-]")
        now = datetime.now(UTC)
        start = not_before or now - timedelta(minutes=5)
        end = not_after or min(now + timedelta(days=self.days),
                               self.cert.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([
                       x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keybroker"),
                       x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(_usage(client=client), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._key.public_key()), critical=False))
        sans = ([x509.UniformResourceIdentifier(f"keybroker:{name}")] if client
                else _san([*LOCAL_HOSTS, *hosts]))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = self.dir.cert(name), self.dir.key(name)
        if overwrite:
            # Write next to the target, then rename: a reader sees the old or the new pair.
            tmp_key = key_path.with_name(key_path.name + ".new")
            tmp_key.unlink(missing_ok=True)
            _write_key(tmp_key, key)
            tmp_cert = cert_path.with_name(cert_path.name + ".new")
            _write_cert(tmp_cert, cert)
            os.replace(tmp_key, key_path)
            os.replace(tmp_cert, cert_path)
        else:
            _write_key(key_path, key)
            _write_cert(cert_path, cert)
        return cert_path, key_path


def init_tls(root: Path, *, hosts: Sequence[str] = (), clients: Sequence[str] = DEFAULT_CLIENTS,
             days: int = 825) -> TlsAuthority:
    """A CA plus the broker and verifier server certificates and ``clients``."""
    ca = TlsAuthority.create(root, days=days)
    for server in SERVERS:
        ca.issue(server, client=False, hosts=hosts)
    for client in dict.fromkeys(clients):
        ca.issue(client, client=True)
    return ca


def _init(args: argparse.Namespace) -> int:
    clients = [*DEFAULT_CLIENTS, *args.client]
    try:
        ca = init_tls(Path(args.dir), hosts=args.host, clients=clients, days=args.days)
    except (FileExistsError, ValueError, OSError) as exc:
        print(f"keybroker tls init: {exc}", file=sys.stderr)
        return 2
    print(f"wrote CA {ca.dir.ca} (key {ca.dir.ca_key}, mode 0600)")
    for name in (*SERVERS, *dict.fromkeys(clients)):
        print(f"wrote {ca.dir.cert(name)} + {ca.dir.key(name).name}")
    return 0


def _client(args: argparse.Namespace) -> int:
    try:
        ca = TlsAuthority.load(Path(args.dir), days=args.days)
        cert, key = ca.issue(args.name, client=True)
    except (FileExistsError, ValueError, TypeError, OSError) as exc:
        print(f"keybroker tls client: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {cert} + {key.name}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tls init`` and ``tls client``."""
    tls = sub.add_parser("tls", help="make a private CA and certificates for one host or a "
                                     "test deployment")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True)
    init = tls_sub.add_parser(
        "init", help="create DIR with a CA, broker and verifier server certificates and "
                     "client certificates (broker-client, admin, and each --client)")
    init.add_argument("dir", type=Path, help="directory to create (refused if it has a CA)")
    init.add_argument("--host", action="append", default=[],
                      help="extra DNS name or IP address for the server certificates "
                           "(localhost, 127.0.0.1 and ::1 are always included; repeatable)")
    init.add_argument("--client", action="append", default=[], metavar="NAME",
                      help="also issue a client certificate NAME (repeatable)")
    init.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    init.set_defaults(func=_init)
    client = tls_sub.add_parser("client", help="issue one more client certificate under the "
                                               "CA in DIR")
    client.add_argument("dir", type=Path, help="directory written by `tls init`")
    client.add_argument("name", help="client name (CN and URI SAN keybroker:NAME)")
    client.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    client.set_defaults(func=_client)
