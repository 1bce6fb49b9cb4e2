"""Start and stop keybroker services as separate OS processes (demo, tests, benchmarks).

Invariants:
- A service counts as started only after it printed its ready line
  ("<name> listening on HOST:PORT") on stdout; otherwise start() fails with Unavailable and
  the process is killed, so no caller ever talks to a half-started service.
- stop() always reaps the process: SIGTERM first (graceful shutdown), SIGKILL after a timeout.
- ``free_port`` never hands the same port to two callers on one host within
  ``PORT_CLAIM_SECONDS``, even in different processes: each pick is claimed by creating a file
  named after it (exclusive create) in one directory per user in ``/dev/shm`` (the same for
  every process whatever its TMPDIR; gone at reboot), so two test processes (or two demos)
  that pick ports before their services bind them cannot pick the same one.
"""

from __future__ import annotations

import logging
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from keybroker.errors import Unavailable

log = logging.getLogger(__name__)


def keybroker_command(*args: str) -> list[str]:
    """argv running the keybroker CLI with this interpreter."""
    return [sys.executable, "-m", "keybroker_cli.main", *args]


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORT_CLAIM_SECONDS = 600.0
PORT_CLAIMS_ENV = "KEYBROKER_PORT_CLAIMS"  # another claims directory (tests)


def _claim(port: int) -> bool:
    """Claim ``port`` for this caller (module invariants); True when no other caller on this
    host claimed it within ``PORT_CLAIM_SECONDS``. Without a writable claim directory every
    port counts as unclaimed (the bind check still applies)."""
    # A fixed path on purpose (one registry per user for every process); a directory there
    # that this user does not own is ignored, so another user can neither read nor steer it.
    shared = f"/dev/shm/keybroker-port-claims-{os.getuid()}"  # noqa: S108
    claims = Path(os.environ.get(PORT_CLAIMS_ENV) or shared)
    path = claims / str(port)
    try:
        claims.mkdir(mode=0o700, exist_ok=True)
        if claims.stat().st_uid != os.getuid():
            return True
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime < PORT_CLAIM_SECONDS:
                return False
            os.utime(path)  # a stale claim: its service bound (or gave up) long ago
            return True
        except OSError:
            return False
    except OSError:
        return True


def free_port() -> int:
    """A loopback TCP port that is free right now, for a service told its port in advance.

    Chosen at random BELOW the kernel's ephemeral range: outgoing connections take their
    local ports from that range, so one of them cannot take this port between now and the
    service binding it (a port from bind(0) can be taken that way on a busy host)."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    pick = random.SystemRandom()
    for _ in range(64):
        port = pick.randint(max(1024, low - 12000), max(1025, low - 1))
        if not _claim(port):
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """A running service and the address it listens on."""

    name: str
    popen: subprocess.Popen[bytes]
    address: str

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        """Spawn ``argv`` and wait for its ready line; stderr goes to ``log_path``."""
        ready = f"{name} listening on "
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        assert popen.stdout is not None
        address = _wait_ready(popen, popen.stdout, ready, timeout)
        if address is None:
            popen.kill()
            popen.wait()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise Unavailable(f"{name} did not start", expected=f"'{ready}HOST:PORT' on stdout",
                              actual=f"exit code {popen.returncode}; log tail: {tail}")
        threading.Thread(target=_drain, args=(popen.stdout,), daemon=True).start()
        log.info("%s started pid=%d address=%s", name, popen.pid, address)
        return cls(name=name, popen=popen, address=address)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.1fs; killing", self.name, timeout)
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL at once (fault-injection tests)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _wait_ready(
    popen: subprocess.Popen[bytes], stream: IO[bytes], ready: str, timeout: float
) -> str | None:
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    buffer = b""
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            if not sel.select(remaining):
                return None
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                return None
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith(ready):
                    return text[len(ready):].strip()
            if popen.poll() is not None:
                return None
        return None
    finally:
        sel.close()


def _drain(stream: IO[bytes]) -> None:
    while stream.read(4096):
        pass
