"""Reading and writing the kernel's pseudo-files (configfs-tsm attributes, sysfs ACPI tables,
Gramine's /dev/attestation) the way every collector must.

Invariants:
- Paths are opened with ``O_NOFOLLOW | O_CLOEXEC``: a symlink planted in place of an
  attribute is refused, never followed.
- A write is one ``write`` call of the whole buffer (pseudo-files act on each write); a short
  write is ``Unavailable``.
- A read is bounded: more than ``limit`` bytes is ``Malformed`` and nothing beyond
  ``limit + 64 KiB`` is ever buffered.
- Any other OS error is ``Unavailable`` naming the path and the errno.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from keybroker.errors import Malformed, Unavailable

_CHUNK = 65536


def describe_oserror(exc: OSError) -> str:
    """``ENOENT: No such file or directory`` style text for an OS error."""
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    return f"{name}: {exc.strerror or exc}"


def write_once(path: Path, data: bytes, *, what: str) -> None:
    """Write ``data`` to ``path`` in a single write call."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise Unavailable(f"{what} write to {path.name} failed",
                          actual=describe_oserror(exc)) from exc
    if written != len(data):
        raise Unavailable(f"{what} short write to {path.name}", expected=f"{len(data)} bytes",
                          actual=f"{written} bytes")


def read_bounded(path: Path, limit: int, *, what: str, rule: str = "") -> bytes:
    """The whole content of ``path``, at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            total = 0
            while chunk := os.read(fd, _CHUNK):
                total += len(chunk)
                if total > limit:
                    raise Malformed(f"{what} {path.name} is too large", rule=rule,
                                    expected=f"<= {limit} bytes", actual=f"> {limit} bytes")
                chunks.append(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise Unavailable(f"{what} read of {path.name} failed",
                          actual=describe_oserror(exc)) from exc
    return b"".join(chunks)
