"""attester-agent command line: usage errors exit 2, detect, error reporting."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from attester_agent.cli import main

BROKER = ["--broker", "127.0.0.1:1", "--insecure-plaintext"]
SIM = ["--insecure-simulator", "--simulator-dir", "/tmp"]


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
        # transport: TLS unless the loud flag, which is loopback-only and excludes TLS options
        ["get-secret", "--broker", "127.0.0.1:1", "--key-id", "k", *SIM],
        ["get-secret", "--broker", "10.0.0.1:1", "--insecure-plaintext", "--key-id", "k", *SIM],
        ["get-secret", *BROKER, "--ca", "/tmp/ca.pem", "--key-id", "k", *SIM],
        ["get-secret", "--broker", "127.0.0.1:1", "--ca", "/nonexistent/ca.pem", "--key-id",
         "k", *SIM],
        # TDX / SGX simulator options
        ["get-secret", *BROKER, "--key-id", "k", "--sim-tee", "tdx"],
        ["get-secret", *BROKER, "--key-id", "k", "--sim-debug"],
        ["get-secret", *BROKER, "--key-id", "k", "--sim-mrtd", "00" * 48],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "keystone"],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-mrtd", "00" * 48],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tcb", "OutOfDate"],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "tdx",
         "--sim-measurement", "00" * 48],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "tdx",
         "--sim-mrenclave", "00" * 32],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "tdx", "--sim-version", "3"],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "tdx",
         "--sim-mrtd", "00" * 47],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "tdx",
         "--sim-mr-config-id", "xy"],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "tdx",
         "--sim-td-attributes", "1" + "0" * 16],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "tdx", "--sim-tcb", "Great"],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "sgx", "--sim-version", "3"],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "sgx",
         "--sim-mrsigner", "00" * 48],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "sgx",
         "--sim-mr-config-id", "00" * 48],
        ["get-secret", *BROKER, "--key-id", "k", *SIM, "--sim-tee", "sgx",
         "--sim-isv-svn", "one"],
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
    code = main(["detect", *no_interfaces(tmp_path)])
    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""
    assert "no attestation interface" in out.err


def no_interfaces(tmp_path: Path) -> list[str]:
    """Interface flags pointing at paths that do not exist."""
    return ["--tsm-root", str(tmp_path / "tsm"), "--sev-guest-device", str(tmp_path / "sev"),
            "--tdx-guest-device", str(tmp_path / "tdx"),
            "--attestation-dir", str(tmp_path / "attestation")]


def test_detect_lists_gramine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """detect prints each usable interface with where it reads from, and exits 0."""
    attestation = tmp_path / "attestation"
    attestation.mkdir()
    (attestation / "attestation_type").write_text("dcap\n")
    code = main(["detect", *no_interfaces(tmp_path)])
    assert code == 0
    assert capsys.readouterr().out == f"gramine\t{attestation} attestation_type=dcap\n"


def test_get_secret_without_hardware_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without hardware and without the simulator flag nothing is simulated: exit 1."""
    code = main(["get-secret", *BROKER, "--key-id", "k", *no_interfaces(tmp_path)])
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
    code = main(["get-secret", "--broker", f"127.0.0.1:{port}", "--insecure-plaintext",
                 "--key-id", "k",
                 "--collector", "sev-guest", "--sev-guest-device", str(tmp_path / "x"),
                 "--timeout", "2"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


@pytest.mark.parametrize("collector", ["tdx-guest", "gramine", "configfs-tsm"])
def test_explicit_tdx_sgx_collectors_without_interface_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], collector: str
) -> None:
    """--collector tdx-guest / gramine / configfs-tsm on a guest without them: UNAVAILABLE."""
    code = main(["get-secret", *BROKER, "--key-id", "k", "--collector", collector,
                 *no_interfaces(tmp_path), "--timeout", "2"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_dcap_simulator_without_ca_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tee: str
) -> None:
    """--sim-tee tdx|sgx without DIR/dcap fails locally: the test CA cannot be loaded."""
    code = main(["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator",
                 "--simulator-dir", str(tmp_path), "--sim-tee", tee])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: UNAVAILABLE: cannot load the DCAP simulator test CA from "
                          f"{tmp_path / 'dcap'}")
    assert "keybroker demo --workdir DIR --prepare-only" in err  # how to make one
    assert "No such file or directory" in err  # the cause, not only the symptom


def test_snp_simulator_without_ca_names_the_cause(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The README case: --simulator-dir without a simulator CA says which file is missing and
    which command writes one (UNAVAILABLE, exit 1)."""
    code = main(["get-secret", *BROKER, "--key-id", "k", "--insecure-simulator",
                 "--simulator-dir", str(tmp_path / "sim")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: UNAVAILABLE: cannot load the simulator test CA from "
                          f"{tmp_path / 'sim'}")
    assert "ark.pem" in err and "--prepare-only" in err


@pytest.mark.parametrize("extra", [
    ["--sim-tee", "tdx", "--sim-mrtd", "11" * 48, "--sim-td-attributes", "0x10000000",
     "--sim-tcb", "OutOfDate", "--sim-version", "5", "--sim-debug",
     "--sim-mr-config-id", "22" * 48],
    ["--sim-tee", "sgx", "--sim-mrenclave", "33" * 32, "--sim-mrsigner", "44" * 32,
     "--sim-isv-prod-id", "3", "--sim-isv-svn", "4", "--sim-tcb", "SWHardeningNeeded"],
], ids=["tdx", "sgx"])
def test_dcap_simulator_options_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    """Every TDX/SGX simulator option is accepted; the unreachable broker is the only error."""
    from attester_agent.simulator.dcap import DcapTestCa  # noqa: PLC0415

    DcapTestCa.generate().save(tmp_path / "dcap")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["get-secret", "--broker", f"127.0.0.1:{port}", "--insecure-plaintext",
                 "--key-id", "k",
                 "--insecure-simulator", "--simulator-dir", str(tmp_path), *extra,
                 "--timeout", "2"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")
