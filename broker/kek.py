"""Key-encryption keys (KEK) that wrap the per-version data keys of stored secrets, and the
``file`` backend that keeps them in local files.

Invariants:
- ``KekProvider`` is one KEK version (a ``kek_id`` and wrap/unwrap); a ``KekBackend`` opens,
  creates and destroys versions by locator and holds the audit checkpoint key. The ring
  (``broker.kek_ring``) is what the secret store sees. A KEK or backend that cannot be used
  raises ``Unavailable``; there is never a fallback to another KEK or to a software key.
- A file KEK is exactly 32 random bytes, created exclusively (never overwriting) with mode
  0600. Loading refuses a file of another size, a non-regular file, or one that is readable or
  writable by group or others.
- File backend locators: version 1 is ``kek_file``, version N is ``<kek_file>.vN``; the audit
  checkpoint key is ``<kek_file>.audit`` (32 random bytes, 0600, created with the KEK).
- Wrapping is AES-256-GCM with a fresh 96-bit nonce and the caller's AAD (key id + version),
  so a wrapped data key cannot be moved to another secret or version.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybroker.errors import Unavailable

KEK_SIZE = 32
NONCE_SIZE = 12
WRAP_LABEL = b"keybroker/v1/kek-wrap\x00"


class KekProvider(Protocol):
    """One KEK version: wraps and unwraps data keys; ``kek_id`` names it (never its bytes)."""

    @property
    def kek_id(self) -> str:
        """A stable, non-secret identifier of the KEK (stored next to wrapped keys)."""
        ...

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        """Encrypt ``data_key`` bound to ``aad``."""
        ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        """Decrypt a wrapped data key; a wrong KEK, AAD or a tampered blob is ``Unavailable``."""
        ...


class KekBackend(Protocol):
    """Where KEK versions live (files, an HSM): by locator, never by key bytes."""

    @property
    def name(self) -> str:
        """``file`` or ``pkcs11``."""
        ...

    def locator(self, version: int) -> str:
        """Where version ``version`` lives (version 1 is the configured KEK)."""
        ...

    def open(self, locator: str) -> KekProvider:
        """The KEK at ``locator``; ``Unavailable`` when it cannot be used."""
        ...

    def create(self, locator: str) -> KekProvider:
        """A new KEK at ``locator`` (an unregistered one already there is reused)."""
        ...

    def destroy(self, locator: str) -> None:
        """Erase the KEK at ``locator`` (only once nothing references it)."""
        ...

    def ensure_audit_key(self) -> bool:
        """Create the audit checkpoint key if missing; True when it was created."""
        ...

    def audit_mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the audit checkpoint key (never in the database)."""
        ...


def _create_key_file(path: Path) -> bytes:
    key = secrets.token_bytes(KEK_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _load_key_file(path: Path, what: str) -> bytes:
    """32 bytes from a regular file with mode 0600 (``Unavailable`` naming the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise Unavailable(f"cannot open {what} file {path}", rule="kek.file",
                          actual=exc.strerror or type(exc).__name__) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unavailable(f"{what} file {path} is not a regular file", rule="kek.file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise Unavailable(f"{what} file {path} is accessible by group or others",
                              rule="kek.permissions", expected="0600", actual=f"{mode:04o}")
        if st.st_size != KEK_SIZE:
            raise Unavailable(f"{what} file {path} has the wrong size", rule="kek.size",
                              expected=f"{KEK_SIZE} bytes", actual=f"{st.st_size} bytes")
        return os.read(fd, KEK_SIZE + 1)
    finally:
        os.close(fd)


class FileKek:
    """A KEK held in a local 32-byte file with mode 0600."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_SIZE:
            raise Unavailable("KEK has the wrong size", rule="kek.size",
                              expected=f"{KEK_SIZE} bytes", actual=f"{len(key)} bytes")
        self._aead = AESGCM(key)
        self._kek_id = "file:" + hashlib.sha256(WRAP_LABEL + key).hexdigest()[:16]

    @property
    def kek_id(self) -> str:
        """Identifier derived one-way from the key (safe to store and log)."""
        return self._kek_id

    @classmethod
    def create(cls, path: Path) -> FileKek:
        """Create a new KEK file (mode 0600); refuses to overwrite an existing file."""
        return cls(_create_key_file(path))

    @classmethod
    def load(cls, path: Path) -> FileKek:
        """Load the KEK file, refusing wrong size or group/other permissions."""
        return cls(_load_key_file(path, "KEK"))

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: nonce || ciphertext+tag."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data_key, WRAP_LABEL + aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        """Inverse of ``wrap``; any mismatch is ``Unavailable`` (store integrity failure)."""
        if len(wrapped) < NONCE_SIZE + 16:
            raise Unavailable("wrapped data key truncated", rule="kek.unwrap")
        try:
            return self._aead.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:],
                                      WRAP_LABEL + aad)
        except InvalidTag as exc:
            raise Unavailable("wrapped data key does not open under this KEK",
                              rule="kek.unwrap", expected="authentic wrapped key",
                              actual="authentication tag mismatch") from exc


class FileBackend:
    """KEK versions in files next to ``kek_file`` (see the module invariants)."""

    def __init__(self, kek_file: Path) -> None:
        self.kek_file = kek_file
        self.audit_file = kek_file.with_name(kek_file.name + ".audit")

    @property
    def name(self) -> str:
        return "file"

    def locator(self, version: int) -> str:
        return str(self.kek_file if version == 1
                   else self.kek_file.with_name(f"{self.kek_file.name}.v{version}"))

    def open(self, locator: str) -> FileKek:
        return FileKek.load(Path(locator))

    def create(self, locator: str) -> FileKek:
        path = Path(locator)
        return FileKek.load(path) if path.exists() else FileKek.create(path)

    def destroy(self, locator: str) -> None:
        path = Path(locator)
        with path.open("r+b") as out:  # overwrite before unlinking (best effort on SSDs)
            out.write(bytes(KEK_SIZE))
            out.flush()
            os.fsync(out.fileno())
        path.unlink()

    def ensure_audit_key(self) -> bool:
        if self.audit_file.exists():
            _load_key_file(self.audit_file, "audit key")
            return False
        _create_key_file(self.audit_file)
        return True

    def audit_mac(self, data: bytes) -> bytes:
        mac = hmac.HMAC(_load_key_file(self.audit_file, "audit key"), hashes.SHA256())
        mac.update(data)
        return mac.finalize()
