"""``keybroker admin policy test``: case directories with passing and failing cases (real
processes, real simulator claims)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.admin import MEASUREMENT, SnpLab, admin, snp_policy

PASSING = {
    "01-good.yaml": ("genuine guest", "evidence_file: ../claims/good.json\ninsecure: true\n",
                     "{decision: affirming}"),
    "02-debug.yaml": ("debug guest is refused",
                      "evidence_file: ../claims/good.json\ninsecure: true\n"
                      "set: {policy.debug: true}\n",
                      "{decision: deny, category: PLATFORM_POLICY, rule: snp.allow_debug}"),
    "03-microcode.yaml": ("old microcode is refused",
                          "evidence_file: ../claims/verify-output.json\ninsecure: true\n"
                          "set: {reported_tcb.microcode: 100, committed_tcb.microcode: 100}\n",
                          "{decision: deny, category: TCB_POLICY}"),
    "04-root.yaml": ("simulator root needs the insecure switch",
                     "evidence_file: ../claims/good.json\n",
                     "{decision: deny, category: CHAIN_UNTRUSTED, rule: snp.insecure_root}"),
}


def _case(name: str, body: str, expect: str) -> str:
    return (f"kind: PolicyTestCase\nname: {name}\nat: 2026-03-01T00:00:00Z\n{body}"
            f"expect: {expect}\n")


@pytest.fixture(scope="module")
def claims_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy-cases")
    lab = SnpLab.create(root / "ca")
    claims = lab.claims().as_dict()
    (root / "claims").mkdir()
    (root / "claims" / "good.json").write_text(json.dumps(claims))
    (root / "claims" / "verify-output.json").write_text(
        json.dumps({"verdict": "verified", "claims": claims, "error": None}))
    workload = {"init_data_register": "HOST_DATA", "init_data_digest": claims["host_data"],
                "name": "demo", "images": [], "agent_policy": None, "agent_policy_digest": None,
                "measured_register": None, "measured_images": []}
    (root / "claims" / "verify-workload.json").write_text(
        json.dumps({"verdict": "verified", "claims": claims, "workload": workload}))
    return root


def _cases(root: Path, name: str, cases: dict[str, tuple[str, str, str]]) -> Path:
    directory = root / name
    directory.mkdir()
    for file, (title, body, expect) in cases.items():
        (directory / file).write_text(_case(title, body, expect))
    return directory


def test_passing_cases_exit_zero(claims_dir: Path, tmp_path: Path) -> None:
    """Every case meets its expectation: one PASS line each and exit 0."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(snp_policy())
    cases = _cases(claims_dir, "passing", PASSING)
    result = admin("policy", "test", policy, "--cases", cases)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[:4] == [
        "PASS genuine guest", "PASS debug guest is refused", "PASS old microcode is refused",
        "PASS simulator root needs the insecure switch"]
    assert "4 passed, 0 failed" in result.stdout


def test_failing_case_exits_one(claims_dir: Path, tmp_path: Path) -> None:
    """A case whose expectation is wrong prints FAIL with expected and got; exit 1."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(snp_policy())
    cases = _cases(claims_dir, "failing", {
        **PASSING,
        "05-wrong.yaml": ("debug guest wrongly expected to pass",
                          "evidence_file: ../claims/good.json\ninsecure: true\n"
                          "set: {policy.debug: true}\n", "{decision: affirming}"),
    })
    result = admin("policy", "test", policy, "--cases", cases)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[4].startswith("FAIL debug guest wrongly expected to pass: expected "
                               "affirming, got deny PLATFORM_POLICY snp.allow_debug")
    assert "4 passed, 1 failed" in lines[5]


def test_bad_case_file_fails_with_line(claims_dir: Path, tmp_path: Path) -> None:
    """A case that overrides a field the evidence does not have fails with file:line."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(snp_policy())
    cases = _cases(claims_dir, "bad", {
        "01-typo.yaml": ("typo", "evidence_file: ../claims/good.json\n"
                                 "set: {policy.debugg: true}\n", "{decision: affirming}")})
    result = admin("policy", "test", policy, "--cases", cases)
    assert result.returncode == 1
    assert "FAIL 01-typo.yaml: case could not be loaded" in result.stdout
    assert f"{cases / '01-typo.yaml'}:5:" in result.stderr


def test_reference_files_count_as_active(claims_dir: Path, tmp_path: Path) -> None:
    """A policy bound to a reference set passes with --refs and is denied MEASUREMENT
    without."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(snp_policy(measurements="", extra=(
        "reference_values:\n  - claim: evidence.measurement\n    set: snp-launch\n")))
    refs = tmp_path / "refs.yaml"
    refs.write_text("kind: ReferenceValues\nname: snp-launch\nvalues:\n"
                    f"  - name: ovmf\n    value: \"{MEASUREMENT.hex()}\"\n"
                    "    not_before: 2026-01-01T00:00:00Z\n"
                    "    not_after: 2027-01-01T00:00:00Z\n")
    cases = _cases(claims_dir, "refs", {"01-good.yaml": PASSING["01-good.yaml"]})
    with_refs = admin("policy", "test", policy, "--cases", cases, "--refs", refs)
    assert with_refs.returncode == 0, with_refs.stdout + with_refs.stderr
    without = admin("policy", "test", policy, "--cases", cases)
    assert without.returncode == 1
    assert ("got deny MEASUREMENT reference_values.snp-launch" in without.stdout)


def test_release_rules_cannot_be_tested(claims_dir: Path, tmp_path: Path) -> None:
    """Only appraisal policies run against cases; a case dir without cases is a usage error."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(snp_policy())
    empty = claims_dir / "empty"
    empty.mkdir()
    assert admin("policy", "test", policy, "--cases", empty).returncode == 2
    refs = tmp_path / "refs.yaml"
    refs.write_text("kind: ReferenceValues\nname: x\nvalues: []\n")
    assert admin("policy", "test", refs, "--cases", empty).returncode == 2


def test_verify_output_workload_is_the_default(claims_dir: Path, tmp_path: Path) -> None:
    """The workload of a verify --json output is used unless the case declares its own."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(snp_policy(extra="workload:\n  names: [demo]\n"))
    cases = _cases(claims_dir, "workload", {
        "01-from-file.yaml": ("workload from the verify output",
                              "evidence_file: ../claims/verify-workload.json\ninsecure: true\n",
                              "{decision: affirming}"),
        "02-no-workload.yaml": ("claims JSON has no workload",
                                "evidence_file: ../claims/good.json\ninsecure: true\n",
                                "{decision: deny, category: MEASUREMENT, rule: workload.names}"),
    })
    result = admin("policy", "test", policy, "--cases", cases)
    assert result.returncode == 0, result.stdout + result.stderr
