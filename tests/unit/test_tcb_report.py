"""``keybroker admin tcb report``: platforms that pass today but sit below the in-force
policy's next TCB floor (real simulator SNP claims, typed TDX claims, real processes)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.admin import (
    VERIFIED_AT,
    SnpLab,
    admin,
    snp_policy,
    store_policy,
    write_verifier_config,
)

from verifier.dcap.claims import DcapTcbClaims, TdAttributes, TdxClaims
from verifier.records import AppraisalRecord, RecordStore
from verifier.workload import NO_WORKLOAD

MRTD = hashlib.sha384(b"td firmware").digest()
SINCE = "2026-02-28T00:00:00Z"
AFFIRMING = {"status": "affirming", "policy_id": "x@1"}
TDX_POLICY = ("kind: AppraisalPolicy\nname: tdx-sim\nplatform: tdx\n"
              f"tdx:\n  mrtd: [{MRTD.hex()}]\n"
              "tcb_early_warning:\n  min_tcb_date: 2025-01-01T00:00:00Z\n")


def _tdx(fmspc: str, tcb_date: datetime) -> dict[str, object]:
    tcb = DcapTcbClaims(
        status="UpToDate", advisory_ids=(), tcb_date=tcb_date, fmspc=bytes.fromhex(fmspc),
        pce_id=bytes(2), tcb_evaluation_data_number=17, sgx_status="UpToDate",
        tdx_status="UpToDate", module_status="UpToDate", qe_status="UpToDate")
    return TdxClaims(
        version=4, body_type=2, tee_tcb_svn=bytes.fromhex("04010700") + bytes(12),
        mr_seam=b"\x5e" * 48, mr_signer_seam=bytes(48), seam_attributes=bytes(8),
        td_attributes=TdAttributes(1 << 28), xfam=0xE7, mr_td=MRTD, mr_config_id=bytes(48),
        mr_owner=bytes(48), mr_owner_config=bytes(48),
        rtmrs=(bytes(48), bytes(48), bytes(48), bytes(48)), report_data=bytes(64),
        tee_tcb_svn2=None, mr_service_td=None, tcb=tcb, insecure_root=False,
        events=None).as_dict()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("tcb-report")
    snp = SnpLab.create(root / "ca")
    config = write_verifier_config(root / "verifier", admins='{ secops = ["policy-admin"] }')
    for name, text in (("sim", snp_policy(extra="tcb_early_warning:\n  snp_min_tcb: "
                                                "{microcode: 125}\n")),
                       ("tdx-sim", TDX_POLICY)):
        path = root / f"{name}.yaml"
        path.write_text(text)
        store_policy(config, path, comment="initial")
    rows: list[tuple[str, dict[str, object], dict[str, dict[str, str]]]] = [
        ("chip1-old", snp.claims(microcode=115, chip=1).as_dict(), {"sim": AFFIRMING}),
        ("chip2", snp.claims(microcode=120, chip=2).as_dict(), {"sim": AFFIRMING}),
        ("chip3", snp.claims(microcode=130, chip=3).as_dict(), {"sim": AFFIRMING}),
        ("chip4-debug", snp.claims(microcode=115, chip=4, policy=0x30000 | 1 << 19).as_dict(),
         {"sim": AFFIRMING}),
        ("chip5-unknown-policy", snp.claims(microcode=100, chip=5).as_dict(),
         {"retired-policy": AFFIRMING}),
        ("tdx-old", _tdx("00806f050000", datetime(2024, 3, 13, tzinfo=UTC)),
         {"tdx-sim": AFFIRMING}),
        ("tdx-new", _tdx("00a06d080000", datetime(2025, 6, 1, tzinfo=UTC)),
         {"tdx-sim": AFFIRMING}),
        ("chip1-updated", snp.claims(microcode=140, chip=1).as_dict(), {"sim": AFFIRMING}),
    ]
    records = [AppraisalRecord(
        at=VERIFIED_AT + timedelta(minutes=i), request_id=request_id,
        platform=str(evidence["platform"]), evidence_digest=hashlib.sha256(
            request_id.encode()).hexdigest(), evidence=evidence, workload=NO_WORKLOAD.as_dict(),
        init_data=b"", insecure=True, decisions=decisions)
        for i, (request_id, evidence, decisions) in enumerate(rows)]
    store = RecordStore(config.parent / "state.db", retention=timedelta(days=7))
    store.append_many(records)
    store.close()
    chips = {request_id: f"chip:{str(evidence['chip_id'])[:16]}"
             for request_id, evidence, _ in rows if evidence["platform"] == "sev-snp"}
    return config, chips


def _report(config: Path) -> dict[str, dict[str, object]]:
    result = admin("tcb", "report", "--config", config, "--since", SINCE, "--json")
    assert result.returncode == 0, result.stderr
    return {str(e["identity"]): e for e in json.loads(result.stdout)}


def test_report_lists_latest_passing_appraisal_with_debt(
        lab: tuple[Path, dict[str, str]]) -> None:
    """Only platforms whose latest passing appraisal is below the next floor are listed; an
    updated chip, a denied guest and a platform above the floor are not."""
    config, chips = lab
    report = _report(config)
    assert set(report) == {chips["chip2"], "fmspc:00806f050000"}
    snp = report[chips["chip2"]]
    assert (snp["request_id"], snp["policy_id"], snp["status"]) == ("chip2", "sim@1",
                                                                    "affirming")
    assert snp["tcb_debt"] == ["reported_tcb.microcode 120 < next floor 125",
                               "committed_tcb.microcode 120 < next floor 125"]
    tdx = report["fmspc:00806f050000"]
    assert tdx["tcb_debt"] == ["tcb_date 2024-03-13T00:00:00Z < next floor "
                               "2025-01-01T00:00:00Z"]
    text = admin("tcb", "report", "--config", config, "--since", SINCE)
    assert text.stdout.splitlines()[-1] == "2 platform(s) with TCB debt"
    assert any(line.startswith(f"{chips['chip2']} sim@1 ") for line in
               text.stdout.splitlines())


def test_report_follows_the_policy_in_force(lab: tuple[Path, dict[str, str]],
                                            tmp_path: Path) -> None:
    """A new version with a higher next floor adds the platforms now below it; --since
    excludes older records."""
    config, chips = lab
    raised = tmp_path / "sim-v2.yaml"
    raised.write_text(snp_policy(extra="tcb_early_warning:\n  snp_min_tcb: {microcode: 135}\n"))
    store_policy(config, raised, comment="next floor 135")
    report = _report(config)
    assert set(report) == {chips["chip2"], chips["chip3"], "fmspc:00806f050000"}
    assert report[chips["chip3"]]["policy_id"] == "sim@2"
    later = admin("tcb", "report", "--config", config, "--since", "2026-03-01T00:02:00Z",
                  "--json")
    assert {e["request_id"] for e in json.loads(later.stdout)} == {"chip3", "tdx-old"}
