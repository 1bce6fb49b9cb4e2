"""Writing a released secret to a file or to stdout.

Invariants:
- A secret file is created with mode 0600 from the start (``O_CREAT | O_EXCL | O_NOFOLLOW``
  on a fresh temporary name in the target directory), fsynced, then renamed over the target,
  so no reader ever sees a partial or more permissive file.
- A target that is a symbolic link (or anything but a regular file) is refused, never followed.
- Secret bytes are never logged; on failure the temporary file is removed.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

SECRET_MODE = 0o600


class SecretOutputRefused(Exception):
    """The secret cannot be written safely to the requested target."""


def write_secret_file(target: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``target`` with mode 0600, refusing symlinks."""
    directory = target.parent
    name = target.name
    if not name or name in (".", ".."):
        raise SecretOutputRefused(f"not a file name: {target}")
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretOutputRefused(f"cannot open directory {directory}: {exc.strerror}") from exc
    try:
        _refuse_non_regular(dir_fd, name, target)
        tmp_name = f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(
                tmp_name,
                os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                SECRET_MODE,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise SecretOutputRefused(f"cannot create a file in {directory}: "
                                      f"{exc.strerror}") from exc
        try:
            try:
                os.fchmod(fd, SECRET_MODE)  # independent of the umask
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            _refuse_non_regular(dir_fd, name, target)
            os.rename(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _unlink_quietly(tmp_name, dir_fd)
            raise
        os.fsync(dir_fd)
    except OSError as exc:
        raise SecretOutputRefused(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        os.close(dir_fd)
    logger.info("secret written to %s (%d bytes, mode 0600)", target, len(data))


def check_secret_target(target: Path) -> None:
    """Refuse early (before any secret exists) a target that ``write_secret_file`` would refuse."""
    if not target.name or target.name in (".", ".."):
        raise SecretOutputRefused(f"not a file name: {target}")
    if not target.parent.is_dir():
        raise SecretOutputRefused(f"directory {target.parent} does not exist")
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretOutputRefused(f"cannot open directory {target.parent}: "
                                  f"{exc.strerror}") from exc
    try:
        _refuse_non_regular(dir_fd, target.name, target)
    finally:
        os.close(dir_fd)


def write_secret_stream(stream: BinaryIO, data: bytes) -> None:
    """Write the raw secret bytes to a binary stream (stdout) and flush."""
    stream.write(data)
    stream.flush()


def _refuse_non_regular(dir_fd: int, name: str, target: Path) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SecretOutputRefused(f"refusing to write through the symbolic link {target}")
    if not stat.S_ISREG(st.st_mode):
        raise SecretOutputRefused(f"refusing to replace {target}: not a regular file")


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        logger.warning("could not remove temporary file %s", name)
