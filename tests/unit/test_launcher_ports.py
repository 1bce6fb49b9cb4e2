"""free_port: ports below the ephemeral range, never the same one twice across processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keybroker_cli import launcher


@pytest.fixture
def claims_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private claims directory (these tests must not hold ports of the host's one)."""
    claims = tmp_path / "claims"
    monkeypatch.setenv(launcher.PORT_CLAIMS_ENV, str(claims))
    return claims


def test_free_port_is_bindable_and_below_the_ephemeral_range(claims_dir: Path) -> None:
    """The port is free (a bind succeeds) and below the kernel's ephemeral range."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    port = launcher.free_port()
    assert 1024 <= port < low
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert (claims_dir / str(port)).exists()


def test_free_port_never_repeats_across_processes(claims_dir: Path) -> None:
    """Four processes picking 200 ports each at once get 800 different ports (without the
    claims, about 26 would repeat: 800 picks among 12,000 ports)."""
    code = ("from keybroker_cli.launcher import free_port\n"
            "print(' '.join(str(free_port()) for _ in range(200)))")
    env = {**os.environ, launcher.PORT_CLAIMS_ENV: str(claims_dir)}
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             text=True) for _ in range(4)]
    picked = [int(p) for run in runs for p in run.communicate(timeout=60)[0].split()]
    assert all(run.returncode == 0 for run in runs)
    assert len(picked) == 800 and len(set(picked)) == 800


def test_a_claim_holds_then_goes_stale(claims_dir: Path) -> None:
    """A claimed port is refused to a second caller until the claim is older than
    PORT_CLAIM_SECONDS; then it can be claimed again."""
    assert launcher._claim(25001)
    assert not launcher._claim(25001)
    stale = time.time() - launcher.PORT_CLAIM_SECONDS - 1
    os.utime(claims_dir / "25001", (stale, stale))
    assert launcher._claim(25001)
    assert not launcher._claim(25001)
