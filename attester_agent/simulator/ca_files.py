"""The files of the simulators' test CAs: each certificate as ``<stem>.pem`` and its EC private
key as ``<stem>-key.pem`` (unencrypted PKCS8 PEM). INSECURE test material.

Invariants:
- The directory is created with mode 0700 and every key file is written with mode 0600 (also
  when it already existed with looser bits).
- ``load_pairs`` reads back exactly what ``save_pairs`` wrote, in the order of ``stems``; a key
  that is not an EC private key is a ``TypeError`` naming its file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def save_pairs(directory: Path,
               pairs: Sequence[tuple[str, x509.Certificate, ec.EllipticCurvePrivateKey]]) -> None:
    """Write ``(stem, certificate, key)`` pairs into ``directory`` (module invariants)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for stem, cert, key in pairs:
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path = directory / f"{stem}-key.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        os.chmod(path, 0o600)


def load_pairs(directory: Path, stems: Sequence[str]
               ) -> list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    """The ``(certificate, key)`` of each stem, in order (module invariants)."""
    directory = Path(directory)
    out = []
    for stem in stems:
        cert = x509.load_pem_x509_certificate((directory / f"{stem}.pem").read_bytes())
        key = serialization.load_pem_private_key(
            (directory / f"{stem}-key.pem").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{stem}-key.pem is not an EC private key")
        out.append((cert, key))
    return out
