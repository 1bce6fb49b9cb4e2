"""Key-encryption keys (KEK) that wrap the per-version data keys of stored secrets.

Invariants:
- ``KekProvider`` is the only interface the secret store sees; a PKCS#11 provider slots in
  behind it later. A provider that cannot be used raises ``Unavailable``; there is never a
  fallback to another KEK.
- The file provider's key is exactly 32 random bytes, created exclusively (never overwriting)
  with mode 0600. Loading refuses a file of another size, a non-regular file, or one that is
  readable or writable by group or others.
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
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybroker.errors import Unavailable

KEK_SIZE = 32
_NONCE = 12
_LABEL = b"keybroker/v1/kek-wrap\x00"


class KekProvider(Protocol):
    """Wraps and unwraps data keys; ``kek_id`` names the KEK (never its bytes)."""

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


class FileKek:
    """A KEK held in a local 32-byte file with mode 0600."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_SIZE:
            raise Unavailable("KEK has the wrong size", rule="kek.size",
                              expected=f"{KEK_SIZE} bytes", actual=f"{len(key)} bytes")
        self._aead = AESGCM(key)
        self._kek_id = "file:" + hashlib.sha256(_LABEL + key).hexdigest()[:16]

    @property
    def kek_id(self) -> str:
        """Identifier derived one-way from the key (safe to store and log)."""
        return self._kek_id

    @classmethod
    def create(cls, path: Path) -> FileKek:
        """Create a new KEK file (mode 0600); refuses to overwrite an existing file."""
        key = secrets.token_bytes(KEK_SIZE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> FileKek:
        """Load the KEK file, refusing wrong size or group/other permissions."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise Unavailable(f"cannot open KEK file {path}", rule="kek.file",
                              actual=exc.strerror or type(exc).__name__) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Unavailable(f"KEK file {path} is not a regular file", rule="kek.file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise Unavailable(f"KEK file {path} is accessible by group or others",
                                  rule="kek.permissions", expected="0600",
                                  actual=f"{mode:04o}")
            if st.st_size != KEK_SIZE:
                raise Unavailable(f"KEK file {path} has the wrong size", rule="kek.size",
                                  expected=f"{KEK_SIZE} bytes", actual=f"{st.st_size} bytes")
            key = os.read(fd, KEK_SIZE + 1)
        finally:
            os.close(fd)
        return cls(key)

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: nonce || ciphertext+tag."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data_key, _LABEL + aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        """Inverse of ``wrap``; any mismatch is ``Unavailable`` (store integrity failure)."""
        if len(wrapped) < _NONCE + 16:
            raise Unavailable("wrapped data key truncated", rule="kek.unwrap")
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _LABEL + aad)
        except InvalidTag as exc:
            raise Unavailable("wrapped data key does not open under this KEK",
                              rule="kek.unwrap", expected="authentic wrapped key",
                              actual="authentication tag mismatch") from exc
