"""``keybroker admin policy dry-run``: recorded appraisals re-appraised with a candidate
(records built from real simulator claims; the CLI runs as a real process)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from support.admin import (
    MEASUREMENT,
    OTHER_MEASUREMENT,
    VERIFIED_AT,
    SnpLab,
    admin,
    snp_policy,
    store_references,
    write_verifier_config,
)

from verifier.records import AppraisalRecord, RecordStore
from verifier.workload import NO_WORKLOAD

AFFIRMING = {"policy_id": "sim@1", "status": "affirming"}
SINCE = "2026-02-28T00:00:00Z"
REFS = ("kind: ReferenceValues\nname: snp-launch\nvalues:\n"
        f"  - name: ovmf-current\n    value: \"{MEASUREMENT.hex()}\"\n"
        "    not_before: 2026-01-01T00:00:00Z\n    not_after: 2027-01-01T00:00:00Z\n"
        f"  - name: ovmf-next\n    value: \"{OTHER_MEASUREMENT.hex()}\"\n"
        "    not_before: 2026-01-01T00:00:00Z\n    not_after: 2027-01-01T00:00:00Z\n")


def _deny(category: str, rule: str) -> dict[str, str]:
    return {"policy_id": "sim@1", "status": "deny", "category": category, "rule": rule,
            "reason": "recorded"}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dry-run")
    lab = SnpLab.create(root / "ca")
    config = write_verifier_config(
        root / "verifier", admins='{ secops = ["policy-admin", "refvalue-admin"] }')
    specs: list[tuple[str, dict[str, object] | None, bool, dict[str, dict[str, str]]]] = []

    def add(request_id: str, claims: dict[str, object] | None, decisions: dict[str, object],
            *, workload: bool = True) -> None:
        specs.append((request_id, claims, workload, decisions))  # type: ignore[arg-type]

    add("req-115", lab.claims(microcode=115, chip=1).as_dict(), {"sim": AFFIRMING})
    add("req-120", lab.claims(microcode=120, chip=2).as_dict(), {"sim": AFFIRMING})
    add("req-130", lab.claims(microcode=130, chip=3).as_dict(), {"sim": AFFIRMING})
    add("req-debug", lab.claims(microcode=115, chip=4, policy=0x30000 | 1 << 19).as_dict(),
        {"sim": _deny("PLATFORM_POLICY", "snp.allow_debug")})
    add("req-other-policy", lab.claims(microcode=115, chip=6).as_dict(),
        {"other": AFFIRMING})
    add("req-unverified", None, {"sim": _deny("SIG_INVALID", "snp.signature")})
    add("req-no-workload", lab.claims(microcode=140, chip=5).as_dict(), {"sim": AFFIRMING},
        workload=False)
    add("req-next-fw", lab.claims(microcode=140, chip=7, measurement=OTHER_MEASUREMENT
                                  ).as_dict(), {"sim": _deny("MEASUREMENT", "snp.measurements")})
    records = [
        AppraisalRecord(
            at=VERIFIED_AT + timedelta(minutes=i), request_id=request_id, platform="sev-snp",
            evidence_digest=hashlib.sha256(request_id.encode()).hexdigest(),
            evidence=claims, workload=NO_WORKLOAD.as_dict() if claims and workload else None,
            init_data=b"", insecure=True, decisions=decisions)
        for i, (request_id, claims, workload, decisions) in enumerate(specs)]
    store = RecordStore(config.parent / "state.db", retention=timedelta(days=7))
    store.append_many(records)
    store.close()
    return config


def _dry_run(config: Path, policy: Path, *extra: str) -> list[dict[str, object]]:
    result = admin("policy", "dry-run", policy, "--config", config, "--since", SINCE, "--json",
                   *extra)
    assert result.returncode == 0, result.stderr
    out: list[dict[str, object]] = json.loads(result.stdout)
    return out


def test_raised_microcode_floor_flips_exactly_the_records_below_it(
        config: Path, tmp_path: Path) -> None:
    """Raising snp.min_tcb.microcode to 125 lists exactly the affirming records below it."""
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(snp_policy(floor="{bootloader: 3, tee: 0, snp: 8, microcode: 125}"))
    entries = _dry_run(config, candidate)
    flipped = {e["request_id"]: e for e in entries if e["changed"]}
    assert set(flipped) == {"req-115", "req-120"}
    for entry in flipped.values():
        assert (entry["before"], entry["after"]) == ("affirming", "deny")
        assert (entry["category"], entry["rule"]) == ("TCB_POLICY", "snp.min_tcb.microcode")
        assert entry["evidence_digest"] == hashlib.sha256(
            str(entry["request_id"]).encode()).hexdigest()
        assert entry["at"] and entry["would_match"] == []

    text = admin("policy", "dry-run", candidate, "--config", config, "--since", SINCE)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    digest = hashlib.sha256(b"req-115").hexdigest()[:12]
    assert lines[0].startswith(f"2026-03-01T00:00:00Z req-115 {digest} chip:")
    assert ": affirming -> deny TCB_POLICY snp.min_tcb.microcode: " in lines[0]
    assert "req-120" in lines[1]
    assert lines[-1].startswith("2 of 6 decisions would change")


def test_unchanged_candidate_changes_nothing(config: Path, tmp_path: Path) -> None:
    """The recorded policy itself as candidate reproduces every recorded decision."""
    candidate = tmp_path / "same.yaml"
    candidate.write_text(snp_policy())
    assert _dry_run(config, candidate) == []


def test_staged_reference_set_is_reported_as_would_match(config: Path, tmp_path: Path) -> None:
    """A candidate bound to a staged set: matches are listed as would_match, and the record of
    the not-yet-approved firmware flips to affirming."""
    refs = tmp_path / "refs.yaml"
    refs.write_text(REFS)
    store_references(config, refs, comment="next firmware")
    candidate = tmp_path / "bound.yaml"
    candidate.write_text(snp_policy(measurements="", extra=(
        "reference_values:\n  - claim: evidence.measurement\n    set: snp-launch\n")))
    entries = {e["request_id"]: e for e in _dry_run(config, candidate)}
    assert {k for k, e in entries.items() if e["changed"]} == {"req-next-fw"}
    assert entries["req-next-fw"]["after"] == "affirming"
    assert entries["req-next-fw"]["would_match"] == [
        "evidence.measurement: snp-launch@1/ovmf-next"]
    assert set(entries) == {"req-115", "req-120", "req-130", "req-no-workload", "req-next-fw"}
    assert entries["req-130"]["would_match"] == ["evidence.measurement: snp-launch@1/ovmf-current"]
    text = admin("policy", "dry-run", candidate, "--config", config, "--since", SINCE)
    assert "would_match req-130" in text.stdout
    assert text.stdout.splitlines()[-1].startswith("1 of 6 decisions would change")


def test_dry_run_needs_a_verifier_config(tmp_path: Path) -> None:
    """A broker config is a usage error (exit 2)."""
    broker = tmp_path / "broker.toml"
    broker.write_text("[broker]\n")
    candidate = tmp_path / "c.yaml"
    candidate.write_text(snp_policy())
    result = admin("policy", "dry-run", candidate, "--config", broker, "--since", "7d")
    assert result.returncode == 2
