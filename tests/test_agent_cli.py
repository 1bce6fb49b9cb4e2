"""attester-agent command line: usage errors exit 2, detect, error reporting."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from attester_agent.cli import main

BROKER = ["--broker", "127.0.0.1:1"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["get-secret"],
        ["get-secret", "--key-id", "k"],
        ["get-secret", *BROKER],
        ["get-secret", *BROKER, "--key-id", "k", "--collector", "simulator"],
        ["get-secret", *BROKER, "--key-id", "k", "--collector", "nitro"],
        ["get-secret", *BROKER, "--key-id", "k", "--simulator-dir", "/tmp"],
        ["get-secret", *BROKER, "--key-id", "k", "--sim-measurement", "00" * 48],
        ["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator"],
        ["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator",
         "--collector", "sev-guest", "--simulator-dir", "/tmp"],
        ["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator",
         "--simulator-dir", "/tmp", "--sim-version", "4"],
        ["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator",
         "--simulator-dir", "/tmp", "--sim-measurement", "zz"],
        ["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator",
         "--simulator-dir", "/tmp", "--sim-measurement", "00" * 47],
        ["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator",
         "--simulator-dir", "/tmp", "--sim-policy", "xyz"],
        ["get-secret", *BROKER, "--key-id", "a", "--key-id", "b"],
        ["get-secret", *BROKER, "--key-id", "a", "--key-id", "b", "--out", "/tmp/x"],
        ["get-secret", *BROKER, "--key-id", "k", "--suite", "rsa-oaep"],
        ["get-secret", *BROKER, "--key-id", "k", "--cert", "/tmp/c.pem"],
        ["get-secret", *BROKER, "--key-id", "k", "--init-data", "/nonexistent/init"],
        ["get-secret", *BROKER, "--key-id", "k", "--timeout", "soon"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Missing or contradictory arguments are usage errors (exit 2), nothing is contacted."""
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints usage and exits 0."""
    assert main(["get-secret", "--help"]) == 0
    assert "--insecure-simulator" in capsys.readouterr().out


def test_detect_without_interfaces_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """detect exits 1 and says so when no interface is usable."""
    code = main(["detect", "--tsm-root", str(tmp_path / "tsm"),
                 "--sev-guest-device", str(tmp_path / "sev-guest")])
    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""
    assert "no attestation interface" in out.err


def test_get_secret_without_hardware_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without hardware and without the simulator flag nothing is simulated: exit 1."""
    code = main(["get-secret", *BROKER, "--key-id", "k", "--tsm-root", str(tmp_path / "tsm"),
                 "--sev-guest-device", str(tmp_path / "sev-guest")])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_explicit_collector_without_device_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--collector sev-guest without the device fails locally (error, not denied)."""
    code = main(["get-secret", *BROKER, "--key-id", "k", "--collector", "sev-guest",
                 "--sev-guest-device", str(tmp_path / "sev-guest"), "--timeout", "2"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: sev-guest is not usable")


def test_unreachable_broker_is_an_error_not_a_denial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker that does not answer yields 'error: UNAVAILABLE', exit 1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["get-secret", "--broker", f"127.0.0.1:{port}", "--key-id", "k",
                 "--collector", "sev-guest", "--sev-guest-device", str(tmp_path / "x"),
                 "--timeout", "2"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")
