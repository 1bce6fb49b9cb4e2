"""``--pid-file`` of the ``serve`` commands: the readiness line on stdout and, once the service
accepts connections, its process id in a file (removed again at exit).

Invariants:
- The file is written only after the service is listening, so its presence means "started";
  it is written to a temporary name and renamed (never half written).
- An existing file naming a live process stops start-up (exit 2): two services must not share
  one pid file. A stale file (its process is gone) is replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def add_pid_file_option(parser: argparse.ArgumentParser) -> None:
    """``--pid-file FILE``."""
    parser.add_argument("--pid-file", type=Path, metavar="FILE",
                        help="write the process id here once serving (removed at exit); "
                             "for init scripts and `kill $(cat FILE)`")


def live_pid(path: Path) -> int | None:
    """The process id in ``path`` if that process exists, else None."""
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@contextmanager
def pid_file(name: str, path: Path | None) -> Iterator[Callable[[str], None]]:
    """A ``ready(address)`` callback printing ``NAME listening on ADDRESS`` (and writing the
    pid file); the file is removed when the block ends. ``FileExistsError`` if another live
    process holds ``path``."""
    if path is not None and live_pid(path) not in (None, os.getpid()):
        raise FileExistsError(f"{path} names a running process ({live_pid(path)})")

    def ready(address: str) -> None:
        print(f"{name} listening on {address}", flush=True)
        if path is not None:
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(f"{os.getpid()}\n")
            temporary.replace(path)

    try:
        yield ready
    finally:
        if path is not None and live_pid(path) == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()
