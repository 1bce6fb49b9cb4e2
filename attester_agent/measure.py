"""``attester-agent measure``: append a runtime event to the agent's runtime log and extend the
runtime register (TDX RTMR3) with the event's digest, plus the shared-lock snapshot of that log
which evidence collection sends (evidence-formats.md section 2.12;
``keybroker.evidence.runtime_log`` defines the format and the digest).

Invariants:
- The log is opened with ``O_NOFOLLOW`` (a symlink is refused), must be a regular file, is
  created with mode 0600 and written only with ``O_APPEND``; each append is fsync'ed before the
  register is extended.
- ``measure_image`` holds an exclusive ``flock`` on the log from reading it until the register
  has been extended, so concurrent ``measure`` calls never interleave (log order == extend
  order); ``runtime_log_snapshot`` holds a shared lock on the log while the caller produces its
  quote, so no event is added between reading the log and quoting the register.
- The existing log must parse (``parse_runtime_log``) and stay within the format's size and
  event limits after the append; otherwise nothing is written (MALFORMED).
- Fail closed: if the append or the extend fails, the log is truncated back to its previous
  length and the error is raised (UNAVAILABLE), so the log never claims an event the register
  did not receive. (A crash between append and extend leaves a log the register does not match;
  the verifier then refuses the evidence as EVENT_LOG, which is also closed.)
- A register extend writes exactly the 48-byte digest at offset 0 in a single write
  (the kernel ABI of ``/sys/class/misc/tdx_guest/measurements/rtmr3:sha384``); a short write is
  a failure. The simulated register is a 48-byte file replaced atomically.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol

from keybroker.errors import Malformed, Unavailable
from keybroker.evidence.runtime_log import (
    MAX_EVENTS,
    MAX_LOG_BYTES,
    RuntimeEvent,
    encode_event,
    image_event,
    parse_runtime_log,
)

logger = logging.getLogger(__name__)

DEFAULT_RUNTIME_LOG: Final = Path("/run/keybroker/runtime-events.jsonl")
DEFAULT_RTMR3: Final = Path("/sys/class/misc/tdx_guest/measurements/rtmr3:sha384")
RTMR_SIZE: Final = 48
LOG_MODE: Final = 0o600


class Register(Protocol):
    """A runtime measurement register that can only be extended."""

    @property
    def description(self) -> str:
        """Where the register lives (for messages)."""
        ...

    def extend(self, digest: bytes) -> None:
        """Extend the register with exactly 48 bytes; raise ``OSError`` on failure."""
        ...


class SysfsRtmr:
    """A TDX RTMR exposed by the kernel (Linux >= 6.16): a 48-byte write at offset 0 extends."""

    def __init__(self, path: Path = DEFAULT_RTMR3) -> None:
        self.path = path

    @property
    def description(self) -> str:
        """The sysfs attribute path."""
        return str(self.path)

    def extend(self, digest: bytes) -> None:
        """One ``pwrite`` of the digest at offset 0 (never creates the file)."""
        _check_digest(digest)
        fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            written = os.pwrite(fd, digest, 0)
        finally:
            os.close(fd)
        if written != RTMR_SIZE:
            raise OSError(errno.EIO, f"short write to {self.path}: {written} of {RTMR_SIZE}")

    def read(self) -> bytes:
        """The register's current value (48 bytes)."""
        return _read_exact(self.path, RTMR_SIZE)


class SimulatedRtmr:
    """INSECURE: a register simulated by a 48-byte file (absent = 48 zero bytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def description(self) -> str:
        """The state file path."""
        return f"simulated {self.path}"

    def read(self) -> bytes:
        """The simulated register value."""
        try:
            return _read_exact(self.path, RTMR_SIZE)
        except FileNotFoundError:
            return bytes(RTMR_SIZE)

    def extend(self, digest: bytes) -> None:
        """``value = SHA-384(value || digest)``, written to a temp file then renamed."""
        _check_digest(digest)
        value = hashlib.sha384(self.read() + digest).digest()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     LOG_MODE)
        try:
            os.write(fd, value)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


def _check_digest(digest: bytes) -> None:
    if len(digest) != RTMR_SIZE:
        raise ValueError(f"an extend takes exactly {RTMR_SIZE} bytes, got {len(digest)}")


def _read_exact(path: Path, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = os.pread(fd, size + 1, 0)
    finally:
        os.close(fd)
    if len(data) != size:
        raise OSError(errno.EIO, f"{path} holds {len(data)} bytes, expected {size}")
    return data


def _oserror(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    return f"{name}: {exc.strerror or exc}"


def _open_log(path: Path, flags: int) -> int:
    """Open the runtime log (never through a symlink) and check that it is a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, LOG_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unavailable("the runtime log is a symlink; refused", rule="runtime log path",
                              expected="a regular file (not a symlink)", actual=str(path)
                              ) from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Unavailable("the runtime log is not a regular file", rule="runtime log path",
                          expected="regular file", actual=f"{path} mode {mode:o}")
    return fd


def _read_log(fd: int, path: Path) -> bytes:
    """The whole log behind ``fd`` (bounded by the format's size limit)."""
    size = os.fstat(fd).st_size
    if size > MAX_LOG_BYTES:
        raise Malformed("the runtime log is too large", rule="runtime_log.size",
                        expected=f"<= {MAX_LOG_BYTES} bytes", actual=f"{size} bytes in {path}")
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the runtime log accepted no bytes")
        view = view[written:]


def measure_image(image: str, *, log_path: Path, register: Register) -> RuntimeEvent:
    """Append ``image`` (``sha256:<64 hex>``) to the log and extend ``register`` with it."""
    event = image_event(image)
    line = encode_event(event)
    if not log_path.parent.is_dir():
        try:
            log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable("cannot create the runtime log directory",
                              actual=f"{log_path.parent}: {_oserror(exc)}") from exc
    try:
        fd = _open_log(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        raise Unavailable("cannot open the runtime log", rule="runtime log path",
                          actual=f"{log_path}: {_oserror(exc)}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        existing = _read_log(fd, log_path)
        events = parse_runtime_log(existing)
        if len(events) + 1 > MAX_EVENTS or len(existing) + len(line) > MAX_LOG_BYTES:
            raise Malformed("the runtime log is full", rule="runtime_log.size",
                            expected=f"<= {MAX_EVENTS} events and <= {MAX_LOG_BYTES} bytes",
                            actual=f"{len(events)} events, {len(existing)} bytes")
        _append_and_extend(fd, line, event, previous=len(existing), log_path=log_path,
                           register=register)
    finally:
        os.close(fd)  # releases the lock
    logger.info("measured %s into RTMR%d (%s); event digest %s", event.value, event.mr,
                register.description, event.digest.hex())
    return event


def _append_and_extend(fd: int, line: bytes, event: RuntimeEvent, *, previous: int,
                       log_path: Path, register: Register) -> None:
    """Append + fsync + extend; on any failure truncate the log back to ``previous`` bytes."""
    stage = "append to the runtime log"
    try:
        _write_all(fd, line)
        os.fsync(fd)
        stage = f"extend {register.description}"
        register.extend(event.digest)
    except OSError as exc:
        _rollback(fd, previous, log_path)
        raise Unavailable(f"measure failed: could not {stage}; the runtime log was rolled back",
                          rule="measure append+extend", expected="both succeed",
                          actual=_oserror(exc)) from exc
    except BaseException:
        _rollback(fd, previous, log_path)
        raise


def _rollback(fd: int, previous: int, log_path: Path) -> None:
    try:
        os.ftruncate(fd, previous)
        os.fsync(fd)
    except OSError:  # the log then no longer replays: the verifier refuses it (EVENT_LOG)
        logger.exception("could not roll back the runtime log %s to %d bytes", log_path,
                         previous)


def runtime_log_exists(path: Path | None) -> bool:
    """Whether a runtime log (or anything else) exists at ``path``."""
    return path is not None and os.path.lexists(path)


def _open_for_snapshot(path: Path) -> int | None:
    try:
        return _open_log(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unavailable("cannot open the runtime log", rule="runtime log path",
                          actual=f"{path}: {_oserror(exc)}") from exc


@contextmanager
def runtime_log_snapshot(path: Path | None) -> Iterator[bytes | None]:
    """The current log (None when there is none), under a shared lock held until the block ends.

    A log that does not parse is MALFORMED; a symlink or a non-regular file is UNAVAILABLE.
    """
    fd = _open_for_snapshot(path) if path is not None else None
    if path is None or fd is None:
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        data = _read_log(fd, path)
        parse_runtime_log(data)
        yield data
    finally:
        os.close(fd)

