"""`keybroker verify` usage, output and the optional policy appraisal (simulator evidence)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.cli import main

AT = "2026-03-01T00:00:00Z"
MEASUREMENT = bytes.fromhex("5a" * 48)
INIT_DATA = b'{"image": "sha256:' + b"0" * 64 + b'"}'


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sim")
    ca = SnpTestCa.generate()
    ca.save(root / "ca")
    sim = SnpSimulator(ca, measurement=MEASUREMENT,
                       host_data=hashlib.sha256(INIT_DATA).digest())
    report, table = sim.attest(b"\x33" * 64)
    files = {"report": root / "report.bin", "table": root / "table.bin",
             "ark": root / "ca" / "ark.pem", "init": root / "init.json"}
    files["report"].write_bytes(report)
    files["table"].write_bytes(table)
    files["init"].write_bytes(INIT_DATA)
    return files


def write_policy(path: Path, measurement: bytes, *, require_init_data: bool = False) -> Path:
    path.write_text(
        "[policy]\n"
        'name = "snp-test"\n'
        "version = 3\n"
        'platform = "sev-snp"\n'
        "[snp]\n"
        f'measurements = ["{measurement.hex()}"]\n'
        "min_tcb = { bootloader = 0, tee = 0, snp = 0, microcode = 0 }\n"
        "allow_debug = false\n"
        "allowed_vmpls = [0]\n"
        "allow_migration_agent = false\n"
        "allow_smt = true\n"
        f"require_init_data = {'true' if require_init_data else 'false'}\n")
    return path


def base(files: dict[str, Path]) -> list[str]:
    return ["verify", str(files["report"]), "--tee", "snp", "--cert-table", str(files["table"]),
            "--at", AT, "--insecure-simulator-root", str(files["ark"])]


def test_simulator_evidence_verifies_with_insecure_root(
        sim_files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Simulator evidence verifies only with --insecure-simulator-root, which is announced."""
    assert main([*base(sim_files), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["verdict"] == "verified" and doc["claims"]["insecure_root"] is True
    assert "INSECURE" in captured.err
    argv = [*base(sim_files)[:-2], "--json"]
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "rejected" and doc["category"] == "CHAIN_UNTRUSTED"
    assert doc["claims"] == {} and doc["reason"]


def test_human_rejection_names_category(sim_files: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A rejection in human mode exits 1 and prints the category and reason."""
    assert main(base(sim_files)[:-2]) == 1
    out = capsys.readouterr().out
    assert "verdict: rejected (CHAIN_UNTRUSTED)" in out


def test_unsupported_tee_is_usage_error(sim_files: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A --tee that is not implemented (nitro) exits 2 with "not supported yet"."""
    assert main(["verify", str(sim_files["report"]), "--tee", "nitro"]) == 2
    assert "not supported yet" in capsys.readouterr().err


def test_unreadable_files_are_usage_errors(sim_files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A missing evidence, cert table or collateral path exits 2."""
    missing = str(tmp_path / "missing")
    assert main(["verify", missing, "--tee", "snp"]) == 2
    assert main([*base(sim_files), "--collateral", missing]) == 2
    assert main(["verify", str(sim_files["report"]), "--tee", "snp", "--cert-table",
                 missing]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--at", "yesterday"], ["--at", "2026-01-01T00:00:00"],
                                  ["--tee", "sev"], []])
def test_bad_arguments_exit_2(sim_files: dict[str, Path], argv: list[str]) -> None:
    """Bad --at values, unknown --tee values and a missing --tee are argparse errors (exit 2)."""
    full = ["verify", str(sim_files["report"])]
    if not any(a == "--tee" for a in argv) and argv:
        full += ["--tee", "snp"]
    with pytest.raises(SystemExit) as exc:
        main(full + argv)
    assert exc.value.code == 2


def test_policy_affirming(sim_files: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """With --policy the claims are appraised; a matching policy affirms (exit 0)."""
    policy = write_policy(tmp_path / "p.toml", MEASUREMENT, require_init_data=True)
    code = main([*base(sim_files), "--policy", str(policy), "--init-data",
                 str(sim_files["init"]), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    assert doc["appraisal"]["status"] == "affirming"
    assert doc["appraisal"]["policy_id"] == "snp-test@3"


def test_policy_measurement_mismatch(sim_files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A policy with another measurement rejects with MEASUREMENT (exit 1), claims shown."""
    policy = write_policy(tmp_path / "p.toml", b"\x00" * 48)
    code = main([*base(sim_files), "--policy", str(policy), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["category"] == "MEASUREMENT"
    assert doc["claims"]["measurement"] == MEASUREMENT.hex()


def test_policy_init_data_mismatch(sim_files: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """require_init_data with other init-data rejects with MEASUREMENT."""
    policy = write_policy(tmp_path / "p.toml", MEASUREMENT, require_init_data=True)
    other = tmp_path / "other.json"
    other.write_bytes(b"{}")
    code = main([*base(sim_files), "--policy", str(policy), "--init-data", str(other),
                 "--json"])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["category"] == "MEASUREMENT"


def test_unusable_policy_is_usage_error(sim_files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A policy file that does not compile exits 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nname = 3\n")
    assert main([*base(sim_files), "--policy", str(bad)]) == 2
    assert main([*base(sim_files), "--policy", str(tmp_path / "none.toml")]) == 2
    assert "policy" in capsys.readouterr().err
