"""A throwaway PostgreSQL cluster for tests, benchmarks and demos (never for production).

``PostgresCluster.create`` runs the Debian server binaries (``initdb``, ``pg_ctl``) on a
temporary directory: trust authentication, listening only on 127.0.0.1 at a free port and
on a Unix socket inside the directory. The server refuses to run as root, so when this
process is root the cluster belongs to ``nobody`` (the directory is handed to it). ``stop``
removes everything; ``restart`` and ``kill`` exist for the fault tests.

Invariants:
- Nothing listens beyond loopback; the data directory lives and dies with the object.
- ``fsync`` stays on unless the caller asks otherwise (the benchmark measures real commits;
  tests may trade durability against an OS crash for speed).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from keybroker_cli.launcher import free_port


def server_bin(name: str) -> Path:
    """``name`` (initdb, pg_ctl, postgres) of the newest installed PostgreSQL server."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise FileNotFoundError(f"PostgreSQL server binary {name} not found (Debian package "
                                "postgresql)")
    return Path(on_path)


@dataclass
class PostgresCluster:
    """A running throwaway cluster."""

    root: Path
    port: int
    fsync: bool = True

    @property
    def url(self) -> str:
        """The ``keybroker`` database on loopback."""
        return f"postgresql://keybroker@127.0.0.1:{self.port}/keybroker"

    def database(self, name: str) -> str:
        """Create database ``name`` (a fresh deployment) and return its URL."""
        if not name.isidentifier() or not name.islower():
            raise ValueError(f"database name must be a lower-case identifier: {name!r}")
        self._run(str(server_bin("postgres").parent / "createdb"), "-h", "127.0.0.1",
                  "-p", str(self.port), "-U", "keybroker", name)
        return f"postgresql://keybroker@127.0.0.1:{self.port}/{name}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @classmethod
    def create(cls, *, fsync: bool = True) -> PostgresCluster:
        """initdb and start; the ``keybroker`` role (superuser) and database exist."""
        root = Path(tempfile.mkdtemp(prefix="keybroker-pg-"))
        cluster = cls(root, free_port(), fsync)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
        try:
            cluster._run(str(server_bin("initdb")), "-D", str(cluster.data), "-U", "keybroker",
                         "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync")
            cluster.start()
            cluster.database("keybroker")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, *argv: str) -> None:
        if os.geteuid() == 0:
            # setpriv rather than subprocess's user=: that forks without exec-ing at once,
            # which threaded callers (gRPC) do not survive.
            nobody = pwd.getpwnam("nobody")
            argv = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                    "--clear-groups", "--", *argv)
        done = subprocess.run(argv, cwd=self.root, capture_output=True, text=True,
                              timeout=120, check=False,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")

    def start(self) -> None:
        """Start (or start again) the server and wait until it accepts connections."""
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
                   f" -c max_connections=200 -c fsync={'on' if self.fsync else 'off'}")
        self._run(str(server_bin("pg_ctl")), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "-o", options, "start")

    def restart(self) -> None:
        """Fast shutdown (open connections are cut), then start again."""
        self._run(str(server_bin("pg_ctl")), "-D", str(self.data), "-m", "fast", "-w",
                  "stop")
        self.start()

    def pid(self) -> int:
        """The postmaster's process id."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); ``start`` recovers from the WAL."""
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(self.pid(), signal.SIGKILL)
        time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and remove the directory."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(server_bin("pg_ctl")), "-D", str(self.data), "-m",
                          "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
