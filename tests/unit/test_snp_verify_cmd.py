"""`keybroker verify` usage, output and the optional policy appraisal (simulator evidence)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest
from support.policy_docs import snp_policy_yaml

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker_cli.main import main

AT = "2026-03-01T00:00:00Z"
MEASUREMENT = bytes.fromhex("5a" * 48)
INIT_DATA = b'[workload]\nname = "demo"\nimages = ["sha256:' + b"0" * 64 + b'"]\n'


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sim")
    ca = SnpTestCa.generate()
    ca.save(root / "ca")
    crl = ca.write_collateral(root / "collateral",
                              now=datetime.fromisoformat(AT.replace("Z", "+00:00")))
    sim = SnpSimulator(ca, measurement=MEASUREMENT,
                       host_data=hashlib.sha256(INIT_DATA).digest())
    report, table = sim.attest(b"\x33" * 64)
    files = {"report": root / "report.bin", "table": root / "table.bin",
             "ark": root / "ca" / "ark.pem", "init": root / "init.toml", "crl": crl}
    files["report"].write_bytes(report)
    files["table"].write_bytes(table)
    files["init"].write_bytes(INIT_DATA)
    return files


def write_policy(path: Path, measurement: bytes, *, require_init_data: bool = False) -> Path:
    """An SNP policy file (the file holds no version: verify reports it as version 0)."""
    path.write_bytes(snp_policy_yaml(
        "snp-test", measurements=[measurement],
        min_tcb={"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0}, allow_debug=False,
        allowed_vmpls=[0], allow_migration_agent=False, allow_smt=True,
        workload={"require_init_data": require_init_data},
        tcb_early_warning={"snp_min_tcb": {"microcode": 250}}))
    return path


def base(files: dict[str, Path]) -> list[str]:
    return ["verify", str(files["report"]), "--tee", "snp", "--cert-table", str(files["table"]),
            "--at", AT, "--collateral", str(files["crl"]),
            "--insecure-simulator-root", str(files["ark"])]


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
    """A --tee that is not implemented (keystone) is not offered: exit 2, invalid choice."""
    assert main(["verify", str(sim_files["report"]), "--tee", "keystone"]) == 2
    assert "invalid choice: 'keystone'" in capsys.readouterr().err


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
    assert main(full + argv) == 2


def test_policy_affirming(sim_files: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """With --policy the claims are appraised; a matching policy affirms (exit 0) and the
    output carries the workload claims, warnings, matched references and TCB debt."""
    policy = write_policy(tmp_path / "p.yaml", MEASUREMENT, require_init_data=True)
    code = main([*base(sim_files), "--policy", str(policy), "--init-data",
                 str(sim_files["init"]), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    assert doc["appraisal"]["status"] == "affirming"
    assert doc["appraisal"]["policy_id"] == "snp-test@0"
    assert doc["appraisal"]["warnings"] == [] and doc["appraisal"]["matched"] == {}
    microcode = doc["claims"]["reported_tcb"]["microcode"]
    assert f"reported_tcb.microcode {microcode} < next floor 250" in doc["appraisal"]["tcb_debt"]
    assert doc["workload"]["name"] == "demo"
    assert doc["workload"]["init_data_register"] == "HOST_DATA"
    assert main([*base(sim_files), "--policy", str(policy), "--init-data",
                 str(sim_files["init"])]) == 0
    assert "workload.name: demo" in capsys.readouterr().out


def test_policy_measurement_mismatch(sim_files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A policy with another measurement rejects with MEASUREMENT (exit 1), claims shown."""
    policy = write_policy(tmp_path / "p.yaml", b"\x00" * 48)
    code = main([*base(sim_files), "--policy", str(policy), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["category"] == "MEASUREMENT"
    assert doc["claims"]["measurement"] == MEASUREMENT.hex()


def test_policy_init_data_mismatch(sim_files: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """require_init_data with other init-data rejects with MEASUREMENT."""
    policy = write_policy(tmp_path / "p.yaml", MEASUREMENT, require_init_data=True)
    other = tmp_path / "other.toml"
    other.write_bytes(b'[workload]\nname = "other"\n')
    code = main([*base(sim_files), "--policy", str(policy), "--init-data", str(other),
                 "--json"])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["category"] == "MEASUREMENT" and doc["rule"] == "workload.require_init_data"
    assert "workload" not in doc


def test_unusable_policy_is_usage_error(sim_files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A policy file that does not compile exits 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: AppraisalPolicy\nname: 3\n")
    assert main([*base(sim_files), "--policy", str(bad)]) == 2
    assert main([*base(sim_files), "--policy", str(tmp_path / "none.yaml")]) == 2
    assert "policy" in capsys.readouterr().err


def test_refs_file_supplies_reference_values(sim_files: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A policy binding evidence.measurement to a set is denied without --refs and affirmed
    with a ReferenceValues file holding the measurement (recorded in appraisal.matched)."""
    policy = tmp_path / "bound.yaml"
    policy.write_bytes(snp_policy_yaml(
        "snp-bound", measurements=None, allow_smt=True,
        reference_values=[("evidence.measurement", "snp-launch")]))
    refs = tmp_path / "snp-launch.yaml"
    refs.write_text("kind: ReferenceValues\nname: snp-launch\nvalues:\n"
                    f"  - name: fw-1\n    value: \"{MEASUREMENT.hex()}\"\n"
                    "    not_before: 2026-01-01T00:00:00Z\n"
                    "    not_after: 2027-01-01T00:00:00Z\n")
    code = main([*base(sim_files), "--policy", str(policy), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["category"] == "MEASUREMENT"
    assert doc["rule"] == "reference_values.snp-launch"
    code = main([*base(sim_files), "--policy", str(policy), "--refs", str(refs), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    assert doc["appraisal"]["matched"] == {"evidence.measurement": "snp-launch@1/fw-1"}
    assert main([*base(sim_files), "--refs", str(refs)]) == 2
    bad = tmp_path / "bad-refs.yaml"
    bad.write_text("kind: ReferenceValues\nname: x\n")
    assert main([*base(sim_files), "--policy", str(policy), "--refs", str(bad)]) == 2
    assert "reference values" in capsys.readouterr().err
