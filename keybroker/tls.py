"""Transport security: server credentials that reload, client credentials, peer identity.

Invariants:
- Every gRPC server listens with TLS (gRPC core negotiates TLS 1.3 and refuses anything below
  TLS 1.2). Plaintext exists only behind the operator's insecure flag and only on a loopback
  address (``check_plaintext``); the caller logs it loudly.
- Certificate files are read and checked before a server or channel uses them: unreadable, not
  PEM, not yet valid or expired, or a key that does not belong to the certificate is
  ``Malformed`` naming the file. Nothing is taken from a request.
- ``ServerTls`` re-reads its files when their size or modification time changes (looked at, at
  most once a second, when a new connection arrives) or when ``reload()`` is called (SIGHUP).
  A changed set that fails the checks is logged and the set in force stays; a restart is never
  needed to rotate a certificate.
- With a client CA, client certificates are required and must chain to that CA (mutual TLS);
  ``require_peer`` additionally restricts which verified peers a service accepts, by
  certificate subject CN or subjectAltName (DNS, URI or e-mail). Identity always comes from the
  channel's verified certificate (``peer_certificate``), never from a request field.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from keybroker.errors import ChainUntrusted, Malformed, PlatformPolicyViolation, Unavailable

_log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_STAT_INTERVAL = 1.0


class AuthContext(Protocol):
    """The part of a gRPC servicer context that carries the channel's authentication."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        """gRPC's authentication properties of the peer."""
        ...


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Malformed(f"cannot read the {what} {path}", rule="tls.files",
                        expected="a readable PEM file",
                        actual=exc.strerror or type(exc).__name__) from None


def load_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """The PEM certificates in ``path`` (at least one), else ``Malformed`` naming the file."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise Malformed(f"the {what} {path} holds no PEM certificate", rule="tls.files",
                        expected="-----BEGIN CERTIFICATE-----", actual=f"{len(data)} bytes")
    return certs


def check_current(cert: x509.Certificate, path: Path, what: str, now: datetime) -> None:
    """``Malformed`` naming ``path`` unless ``cert`` is valid at ``now``."""
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        state = "expired" if now > cert.not_valid_after_utc else "not yet valid"
        raise Malformed(f"the {what} {path} is {state}", rule="tls.validity",
                        expected=f"{cert.not_valid_before_utc.isoformat()} .. "
                                 f"{cert.not_valid_after_utc.isoformat()}",
                        actual=now.isoformat())


def load_key_pair(cert_path: Path, key_path: Path, *, now: datetime | None = None,
                  what: str = "certificate") -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM) after checking both (module invariants)."""
    now = now or datetime.now(UTC)
    chain = _read(cert_path, what)
    leaf = load_certificates(cert_path, what)[0]
    check_current(leaf, cert_path, what, now)
    key_pem = _read(key_path, f"{what} key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise Malformed(f"the {what} key {key_path} is not an unencrypted PEM private key",
                        rule="tls.files", expected="-----BEGIN PRIVATE KEY-----",
                        actual=f"{len(key_pem)} bytes") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      | ed25519.Ed25519PrivateKey):
        raise Malformed(f"the {what} key {key_path} has an unsupported type",
                        rule="tls.files", expected="EC, RSA or Ed25519",
                        actual=type(key).__name__)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != leaf.public_key().public_bytes(der, public):
        raise Malformed(f"the {what} key {key_path} does not belong to {cert_path}",
                        rule="tls.files", expected="the certificate's key pair",
                        actual="another key")
    return key_pem, chain


def load_bundle(path: Path, what: str, *, now: datetime | None = None) -> bytes:
    """A PEM CA bundle with at least one certificate currently valid."""
    now = now or datetime.now(UTC)
    certs = load_certificates(path, what)
    if not any(c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in certs):
        check_current(certs[0], path, what, now)
    return _read(path, what)


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key and a CA bundle (for a server: the client CA, if any)."""

    cert: Path
    key: Path
    ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.ca,) if self.ca is not None else ())


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append((-1, -1))
            continue
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class ServerTls:
    """Server credentials over ``files`` that follow certificate rotation (module invariants)."""

    def __init__(self, files: TlsFiles, *, what: str) -> None:
        self.files = files
        self.what = what
        self._lock = threading.Lock()
        self._config = self._load()
        self._stamp = _stamp(files.paths())
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._checked = time.monotonic()
        self.generation = 1

    @property
    def mutual(self) -> bool:
        """True when client certificates are required (a client CA is configured)."""
        return self.files.ca is not None

    def _load(self) -> grpc.ServerCertificateConfiguration:
        key, chain = load_key_pair(self.files.cert, self.files.key, what=f"{self.what} "
                                                                        "certificate")
        roots = (load_bundle(self.files.ca, f"{self.what} client CA")
                 if self.files.ca is not None else None)
        return grpc.ssl_server_certificate_configuration([(key, chain)], roots)

    def reload(self) -> bool:
        """Re-read the files now; True when a new set is in force (a bad set is logged)."""
        with self._lock:
            try:
                config = self._load()
            except Malformed as exc:
                _log.error("%s TLS files not reloaded, the previous ones stay in force: %s",
                           self.what, exc.detail)
                return False
            self._stamp = _stamp(self.files.paths())
            self._pending = config
            self.generation += 1
        _log.info("%s TLS certificate reloaded from %s", self.what, self.files.cert)
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC core before each new handshake (from one of its threads).
        now = time.monotonic()
        if now - self._checked >= _STAT_INTERVAL:
            self._checked = now
            if _stamp(self.files.paths()) != self._stamp:
                self.reload()
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic server credentials (TLS; mutual when a client CA is configured)."""
        # gRPC accepts None from the fetcher ("no change"); its type stubs say otherwise.
        return grpc.dynamic_ssl_server_credentials(
            self._config, self._fetch,  # type: ignore[arg-type]
            require_client_authentication=self.mutual)


def client_credentials(ca: Path, cert: Path | None = None,
                       key: Path | None = None) -> grpc.ChannelCredentials:
    """Channel credentials that trust only ``ca`` (plus a client certificate for mTLS)."""
    if (cert is None) != (key is None):
        raise Malformed("a client certificate and its key go together", rule="tls.files",
                        expected="both or neither",
                        actual=f"certificate={cert}, key={key}")
    roots = load_bundle(ca, "CA bundle")
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    key_pem, chain = load_key_pair(cert, key, what="client certificate")
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key_pem,
                                        certificate_chain=chain)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses (IPv6 in brackets or not)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_plaintext(listen_or_target: str, *, flag: str) -> None:
    """Plaintext is allowed on loopback only; ``Malformed`` naming ``flag`` otherwise."""
    host = listen_or_target.rpartition(":")[0] or listen_or_target
    if not is_loopback(host):
        raise Malformed(f"{flag} binds or connects on loopback only", rule="tls.plaintext",
                        expected="127.0.0.1, ::1 or localhost", actual=listen_or_target)


def peer_certificate(context: AuthContext) -> x509.Certificate | None:
    """The verified client certificate of this call's channel, or None (no mutual TLS)."""
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    if not pems:
        return None
    return _certificate(bytes(pems[0]))


@functools.lru_cache(maxsize=4096)
def _certificate(pem: bytes) -> x509.Certificate:
    """A peer certificate parsed once per distinct PEM (certificates are immutable; the cache
    only saves parsing, every call still comes from a verified channel)."""
    return x509.load_pem_x509_certificate(pem)


@functools.lru_cache(maxsize=4096)
def certificate_digest(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER (what channel bindings and pins commit to)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """Subject CN first, then DNS, URI and e-mail subjectAltNames."""
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(names)
    for kind in (x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name):
        names.extend(str(v) for v in san.get_values_for_type(kind))
    return tuple(dict.fromkeys(names))


def require_peer(context: AuthContext, allowed: frozenset[str], *, service: str) -> str:
    """The first name of the verified peer certificate; refused (PERMISSION_DENIED) when there
    is none or, with ``allowed`` non-empty, when none of its names is allowed."""
    cert = peer_certificate(context)
    if cert is None:
        raise PlatformPolicyViolation(f"{service} requires a client certificate",
                                      rule="tls.client", expected="mutual TLS",
                                      actual="no client certificate")
    names = certificate_names(cert)
    if allowed and not allowed.intersection(names):
        raise PlatformPolicyViolation(f"client certificate not allowed by {service}",
                                      rule="tls.allowed_clients",
                                      expected="one of " + ", ".join(sorted(allowed)),
                                      actual=", ".join(names) or "no name")
    return names[0] if names else certificate_digest(cert).hex()


def check_pin(target: str, ca: Path, pin_sha256: str, *, cert: Path | None = None,
              key: Path | None = None, timeout: float = 10.0) -> None:
    """Connect to ``target`` with TLS under ``ca`` and compare the SHA-256 of the server's
    certificate with ``pin_sha256`` (hex): ``ChainUntrusted`` on a mismatch or an untrusted
    chain, ``Unavailable`` when the server cannot be reached. Used right before the gRPC
    channel opens, in addition to (never instead of) the CA check of that channel."""
    host, _, port = target.rpartition(":")
    name = host.strip("[]")
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection((name, int(port)), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=name) as conn:
            der = conn.getpeercert(binary_form=True) or b""
    except ssl.SSLCertVerificationError as exc:
        raise ChainUntrusted(f"the server certificate of {target} is not trusted",
                             rule="tls.server", expected=f"a certificate under {ca}",
                             actual=exc.verify_message or str(exc)) from None
    except (OSError, ValueError) as exc:
        raise Unavailable(f"cannot reach {target} over TLS", rule="tls.connect",
                          actual=str(exc)[:200]) from None
    found = hashlib.sha256(der).hexdigest()
    if found != pin_sha256.lower().removeprefix("sha256:"):
        raise ChainUntrusted(f"the server certificate of {target} does not match the pin",
                             rule="tls.pin", expected=pin_sha256, actual=found)
