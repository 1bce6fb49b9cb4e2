"""Evidence inputs of ``keybroker verify``: files read from the command line, quote files in
binary/base64/hex, and ``--insecure-simulator-root`` files routed to the TEE they belong to.

Invariants:
- An unreadable file or a root file without a certificate is ``UsageError`` (exit 2), never a
  verification failure; decoding never guesses beyond "hex text", "base64 text" or "raw".
- A self-signed P-256 "Intel SGX Root CA" is a DCAP (TDX/SGX) simulator root; any other root
  file is an AMD ARK file (checked later by the AMD trust store).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from keybroker.errors import KeybrokerError

if TYPE_CHECKING:
    from verifier.dcap.trust import IntelTrustStore

_HEX_TEXT = re.compile(rb"[0-9a-fA-F\s]+")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=_\-\s]+")


class UsageError(Exception):
    """A bad argument or an unreadable input: exit code 2."""


def read_input(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def decode_quote(data: bytes) -> bytes:
    """A quote file's bytes: hex text and base64 text are decoded, anything else is raw."""
    text = data.strip()
    if not text or data[:1] in (b"\x03", b"\x04", b"\x05") or text.startswith(b"-----"):
        return data
    compact = b"".join(text.split())
    if _HEX_TEXT.fullmatch(text) and len(compact) % 2 == 0:
        return bytes.fromhex(compact.decode("ascii"))
    if _BASE64_TEXT.fullmatch(text):
        padded = compact.rstrip(b"=") + b"=" * (-len(compact.rstrip(b"=")) % 4)
        try:
            if b"-" in padded or b"_" in padded:
                return base64.urlsafe_b64decode(padded)
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            return data
    return data


def split_simulator_roots(paths: Sequence[Path]) -> tuple[list[Path], list[IntelTrustStore]]:
    """Route ``--insecure-simulator-root`` files by content: (AMD files, DCAP root stores)."""
    from cryptography import x509  # noqa: PLC0415 - keep CLI start-up light
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    from verifier.dcap.trust import ROOT_CN, IntelTrustStore  # noqa: PLC0415
    from verifier.pki import common_name  # noqa: PLC0415

    amd: list[Path] = []
    intel: list[IntelTrustStore] = []
    for path in paths:
        data = read_input(path) or b""
        try:
            certs = (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                     else [x509.load_der_x509_certificate(data)])
        except ValueError:
            raise UsageError(f"simulator root {path} holds no certificate") from None
        roots = [c for c in certs if c.issuer == c.subject and common_name(c.subject) == ROOT_CN
                 and isinstance(c.public_key(), ec.EllipticCurvePublicKey)]
        if not roots:
            amd.append(path)
            continue
        for cert in roots:
            try:
                intel.append(IntelTrustStore.from_der(cert.public_bytes(Encoding.DER)))
            except KeybrokerError as exc:
                raise UsageError(f"simulator root {path}: {exc.detail}") from None
    return amd, intel
