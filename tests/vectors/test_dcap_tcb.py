"""TCB level matching and status convergence on real TDX/SGX quotes and their collateral."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import construct as c
import pytest
from support.paths import VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.pcs_document import SignedMember
from keybroker.evidence.sgx_extensions import decode_sgx_extensions
from verifier.dcap.documents import CollateralVerifier
from verifier.dcap.schema import EnclaveIdentity, TcbInfo, TcbStatus
from verifier.dcap.tcb import (
    PlatformTcb,
    QeReport,
    TcbResult,
    TdxTcb,
    converge,
    evaluate_qe,
    evaluate_sgx,
    evaluate_tdx,
)
from verifier.dcap.trust import IntelTrustStore
from verifier.pki import parse_pem_chain

V = VECTORS
CHAIN_2018 = (V / "tdx/intel-roots/tcb-signing-chain-2018-2025.pem").read_bytes()
CHAIN_2025 = (V / "tdx/intel-roots/tcb-signing-chain-2025-2032.pem").read_bytes()
S = TcbStatus

# Test-side quote reader (the verifier's own quote parser lives elsewhere): just the fields
# TCB evaluation needs, laid out as in evidence-formats.md sections 2.1-2.5 and 3.
_TD_FIELDS = c.Struct("tee_tcb_svn" / c.Bytes(16), "mr_seam" / c.Bytes(48),
                      "mr_signer_seam" / c.Bytes(48), "seam_attributes" / c.Bytes(8))
_REPORT = c.Struct("cpu_svn" / c.Bytes(16), "miscselect" / c.Int32ul, c.Padding(28),
                   "attributes" / c.Bytes(16), "mrenclave" / c.Bytes(32), c.Padding(32),
                   "mrsigner" / c.Bytes(32), c.Padding(96), "isvprodid" / c.Int16ul,
                   "isvsvn" / c.Int16ul, c.Padding(60), "report_data" / c.Bytes(64))
_HEADER = c.Struct("version" / c.Int16ul, "att_key_type" / c.Int16ul, "tee_type" / c.Int32ul,
                   c.Padding(40))


def _raw_quote(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name == "tdx-v4-azure":
        return base64.b64decode(data)
    if path.suffix == ".hex":
        return bytes.fromhex(data.decode().strip())
    return data


_SIG_TAIL = c.Struct("sig" / c.Bytes(64), "att_key" / c.Bytes(64))
_QE_CERT = c.Struct("qe_report" / c.Bytes(384), "qe_sig" / c.Bytes(64),
                    "auth" / c.Prefixed(c.Int16ul, c.GreedyBytes))


@dataclasses.dataclass(frozen=True)
class QuoteFields:
    td: TdxTcb | None
    qe: QeReport
    chain: bytes


def quote_fields(path: Path) -> QuoteFields:
    raw = _raw_quote(path)
    header = _HEADER.parse(raw)
    if header.tee_type == 0x81:
        if header.version == 5:
            body_size = c.Int32ul.parse(raw[50:54])
            body_start, body_end = 54, 54 + body_size
        else:
            body_start, body_end = 48, 48 + 584
        fields = _TD_FIELDS.parse(raw[body_start:body_end])
        td: TdxTcb | None = TdxTcb(tee_tcb_svn=fields.tee_tcb_svn,
                                   mrsignerseam=fields.mr_signer_seam,
                                   seam_attributes=fields.seam_attributes)
        qe_start = body_end + 4 + 128 + 6  # sig_data_len, sig+key, outer cert type and size
    else:
        td = None
        qe_start = 48 + 384 + 4 + 128
    qe = _QE_CERT.parse(raw[qe_start:])
    report = _REPORT.parse(qe.qe_report)
    pem = re.search(rb"-----BEGIN CERTIFICATE-----.*-----END CERTIFICATE-----", raw, re.S)
    assert pem is not None
    return QuoteFields(td=td, qe=QeReport(miscselect=report.miscselect,
                                          attributes=report.attributes,
                                          mrsigner=report.mrsigner,
                                          isvprodid=report.isvprodid, isvsvn=report.isvsvn),
                       chain=pem.group(0))


def platform_of(fields: QuoteFields) -> PlatformTcb:
    return PlatformTcb.from_extensions(decode_sgx_extensions(parse_pem_chain(fields.chain)[0]
                                                              .cert))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclasses.dataclass(frozen=True)
class Case:
    quote: str
    tcb_info: str
    qe_identity: str | None
    at: str
    chain: Literal["2018", "2025", "bundle"] = "2025"


def _bundle(path: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((V / path).read_text())
    return data


def load_collateral(case: Case, verifier: CollateralVerifier) -> tuple[TcbInfo,
                                                                      EnclaveIdentity | None]:
    at = _at(case.at)
    chain = CHAIN_2018 if case.chain == "2018" else CHAIN_2025
    if case.tcb_info.endswith("_collateral.json"):
        b = _bundle(case.tcb_info)
        info = verifier.tcb_info(SignedMember.from_hex(b["tcb_info"].encode(),
                                                       b["tcb_info_signature"]),
                                 b["tcb_info_issuer_chain"].encode(), at=at,
                                 root_crl=bytes.fromhex(b["root_ca_crl"]))
    else:
        info = verifier.tcb_info((V / case.tcb_info).read_bytes(), chain, at=at, root_crl=None,
                                 allow_missing_crl=True)
    if case.qe_identity is None:
        return info, None
    if case.qe_identity.endswith("_collateral.json"):
        b = _bundle(case.qe_identity)
        ident = verifier.qe_identity(SignedMember.from_hex(b["qe_identity"].encode(),
                                                           b["qe_identity_signature"]),
                                     b["qe_identity_issuer_chain"].encode(), at=at,
                                     root_crl=bytes.fromhex(b["root_ca_crl"]))
    else:
        ident = verifier.qe_identity((V / case.qe_identity).read_bytes(), chain, at=at,
                                     root_crl=None, allow_missing_crl=True)
    return info, ident


def evaluate(case: Case) -> TcbResult:
    verifier = CollateralVerifier(IntelTrustStore.pinned())
    info, ident = load_collateral(case, verifier)
    fields = quote_fields(V / case.quote)
    tee: Literal["QE", "TD_QE"] = "TD_QE" if fields.td is not None else "QE"
    qe = None if ident is None else evaluate_qe(ident, fields.qe, expected_id=tee)
    platform = platform_of(fields)
    if fields.td is not None:
        return evaluate_tdx(info, platform, fields.td, qe=qe)
    return evaluate_sgx(info, platform, qe=qe)


SPR_TCB = "tdx/teekit-tcbinfo/tcbInfo-tdx-00806f050000.json"
TD_QE = "tdx/trustee-gnr-v4/enclaveIdentity.json"
OUTDATED = "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated_collateral.json"
SGX_BUNDLE = "sgx/dcapqvl-sgx-v3/sgx_quote_collateral.json"
SA = ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")

EXPECTED = {
    "trustee-spr-v4": (Case("tdx/trustee-spr-v4/tdx_quote_4.dat",
                            "tdx/gotdx-spr-e4-v4/sample_tcbInfo_response",
                            "tdx/gotdx-spr-e4-v4/sample_qeIdentity_response",
                            "2023-07-01T01:00:00Z", "2018"), S.UP_TO_DATE, ()),
    "gotdx-emr-v5": (Case("tdx/gotdx-emr-v5/quote_v5_sample.dat",
                          "tdx/gotdx-emr-v5/sample_tcbinfo_response_v5", OUTDATED,
                          "2026-03-01T00:00:00Z"), S.UP_TO_DATE, ()),
    "trustee-gnr-v4": (Case("tdx/trustee-gnr-v4/tdx_quote_6.dat",
                            "tdx/trustee-gnr-v4/tcbInfo.json", TD_QE, "2025-11-01T00:00:00Z"),
                       S.OUT_OF_DATE, ()),
    "teekit-azure": (Case("tdx/teekit-azure-spr-v4/tdx-v4-azure", SPR_TCB, TD_QE,
                          "2025-10-28T12:00:00Z"), S.UP_TO_DATE, ()),
    "gotdx-gce-ccel": (Case("tdx/gotdx-gce-spr-v4-ccel/cos-113-tdx-quote.dat", SPR_TCB, TD_QE,
                            "2025-10-28T12:00:00Z"), S.UP_TO_DATE, ()),
    "teekit-edgeless": (Case("tdx/teekit-edgeless-spr-v4/tdx-v4-edgeless.dat", SPR_TCB, TD_QE,
                             "2025-10-28T12:00:00Z"), S.OUT_OF_DATE,
                        ("INTEL-SA-00837", *SA)),
    "teekit-zkdcap": (Case("tdx/teekit-zkdcap-spr-v4/tdx-v4-zkdcap.dat", SPR_TCB, TD_QE,
                           "2025-10-28T12:00:00Z"), S.OUT_OF_DATE, SA),
    "dcapqvl-sgx": (Case("sgx/dcapqvl-sgx-v3/sgx_quote", SGX_BUNDLE, SGX_BUNDLE,
                         "2025-07-19T10:01:17Z"), S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
                    ("INTEL-SA-00289", "INTEL-SA-00615")),
    "teekit-tlsn": (Case("sgx/teekit-tlsn-v3/sgx-tlsn-quote9.dat",
                         "sgx/teekit-tcbinfo/tcbInfo-sgx-00906ed50000.json", None,
                         "2025-10-01T00:00:00Z"), S.SW_HARDENING_NEEDED,
                    ("INTEL-SA-00334", "INTEL-SA-00615")),
    "maa-signer": (Case("sgx/maa-signer-embedded-v3/maa_sharedeus_sgx_quote.bin",
                        "sgx/teekit-tcbinfo/tcbInfo-sgx-00906ed50000.json", None,
                        "2025-10-01T00:00:00Z"), S.SW_HARDENING_NEEDED,
                   ("INTEL-SA-00334", "INTEL-SA-00615")),
}

UNSUPPORTED = {
    "gotdx-spr-e4": Case("tdx/gotdx-spr-e4-v4/tdx_prod_quote_SPR_E4.dat",
                         "tdx/gotdx-spr-e4-v4/sample_tcbInfo_response",
                         "tdx/gotdx-spr-e4-v4/sample_qeIdentity_response",
                         "2023-07-01T01:00:00Z", "2018"),
    "dcapqvl-outdated": Case("tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated", OUTDATED,
                             OUTDATED, "2026-03-20T10:41:14Z"),
    "teekit-tappd": Case("tdx/teekit-tappd-gnr-v4/tdx-v4-tappd.hex",
                         "tdx/teekit-tcbinfo/tcbInfo-tdx-b0c06f000000.json", TD_QE,
                         "2025-10-28T12:00:00Z"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_status_and_advisories(name: str) -> None:
    """Each vector with a stated TCB evaluation gets exactly that status and those advisories."""
    case, status, advisories = EXPECTED[name]
    result = evaluate(case)
    assert result.status is status
    assert result.advisory_ids == advisories


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_no_matching_level_is_tcb_policy(name: str) -> None:
    """A platform below every TCB level is rejected as TCB_NOT_SUPPORTED (TCB_POLICY)."""
    with pytest.raises(KeybrokerError) as exc:
        evaluate(UNSUPPORTED[name])
    assert exc.value.category is Category.TCB_POLICY
    assert exc.value.rule == "tcb-level"


def _v5() -> tuple[TcbInfo, PlatformTcb, TdxTcb]:
    case = EXPECTED["gotdx-emr-v5"][0]
    info, _ = load_collateral(case, CollateralVerifier(IntelTrustStore.pinned()))
    fields = quote_fields(V / case.quote)
    assert fields.td is not None
    return info, platform_of(fields), fields.td


def test_tdx_result_reports_each_component_status() -> None:
    """A TDX 1.5 quote is rated by its TDX_01 module identity and reports every status."""
    result = evaluate(EXPECTED["gotdx-emr-v5"][0])
    assert (result.tee, result.sgx_status, result.tdx_status, result.module_status,
            result.qe_status) == ("TDX", S.UP_TO_DATE, S.UP_TO_DATE, S.UP_TO_DATE, S.UP_TO_DATE)
    assert result.fmspc == bytes.fromhex("90c06f000000")
    assert result.tcb_date == datetime(2024, 11, 13, tzinfo=UTC)


@pytest.mark.parametrize("change", [
    {"mrsignerseam": b"\x01" * 48},
    {"seam_attributes": b"\x01" + bytes(7)},
    {"tee_tcb_svn": bytes([0x0B, 0x09]) + bytes(14)},
    {"tee_tcb_svn": bytes([0x00, 0x01, 0x04]) + bytes(13)},
], ids=["mrsignerseam", "seam-attributes", "unknown-module", "module-svn-low"])
def test_tdx_module_identity_violations(change: dict[str, bytes]) -> None:
    """Foreign module signer, SEAM attributes, unknown module or low module SVN is TCB_POLICY."""
    info, platform, td = _v5()
    with pytest.raises(KeybrokerError) as exc:
        evaluate_tdx(info, platform, dataclasses.replace(td, **change), qe=None)
    assert exc.value.category is Category.TCB_POLICY
    assert exc.value.rule == "tdx-module"


def test_revoked_level_is_tcb_policy() -> None:
    """A platform whose matching level is Revoked is rejected."""
    info, platform, td = _v5()
    levels = tuple(dataclasses.replace(level, status=S.REVOKED) for level in info.tcb_levels)
    with pytest.raises(KeybrokerError) as exc:
        evaluate_tdx(dataclasses.replace(info, tcb_levels=levels), platform, td, qe=None)
    assert exc.value.category is Category.TCB_POLICY
    assert exc.value.rule == "tcb-status"


def test_collateral_for_another_platform_is_stale() -> None:
    """TCB Info with another FMSPC, or SGX TCB Info for a TD, is not the needed collateral."""
    info, platform, td = _v5()
    with pytest.raises(KeybrokerError) as exc:
        evaluate_tdx(info, dataclasses.replace(platform, fmspc=bytes(6)), td, qe=None)
    assert exc.value.category is Category.COLLATERAL_STALE
    with pytest.raises(KeybrokerError) as exc:
        evaluate_sgx(info, platform, qe=None)
    assert exc.value.category is Category.COLLATERAL_STALE


def _sgx_qe() -> tuple[EnclaveIdentity, QeReport]:
    case = EXPECTED["dcapqvl-sgx"][0]
    _, ident = load_collateral(case, CollateralVerifier(IntelTrustStore.pinned()))
    assert ident is not None
    return ident, quote_fields(V / case.quote).qe


@pytest.mark.parametrize("change", [
    {"mrsigner": bytes(32)}, {"isvprodid": 7}, {"miscselect": 1},
    {"attributes": bytes(16)},
], ids=["mrsigner", "isvprodid", "miscselect", "attributes"])
def test_qe_identity_mismatch_is_chain_untrusted(change: dict[str, Any]) -> None:
    """A QE report that does not match the signed QE identity is CHAIN_UNTRUSTED (row 21)."""
    ident, qe = _sgx_qe()
    with pytest.raises(KeybrokerError) as exc:
        evaluate_qe(ident, dataclasses.replace(qe, **change), expected_id="QE")
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_qe_svn_below_every_level_and_wrong_identity() -> None:
    """A QE ISVSVN below every level is TCB_POLICY; a TD_QE identity for an SGX QE is stale."""
    ident, qe = _sgx_qe()
    with pytest.raises(KeybrokerError) as exc:
        evaluate_qe(ident, dataclasses.replace(qe, isvsvn=0), expected_id="QE")
    assert exc.value.category is Category.TCB_POLICY
    with pytest.raises(KeybrokerError) as exc:
        evaluate_qe(ident, qe, expected_id="TD_QE")
    assert exc.value.category is Category.COLLATERAL_STALE


def test_out_of_date_qe_converges_into_the_result() -> None:
    """An OutOfDate QE level turns an UpToDate platform into OutOfDate and adds its advisories."""
    ident, qe = _sgx_qe()
    levels = tuple(dataclasses.replace(level, status=S.OUT_OF_DATE, advisory_ids=("SA-QE",))
                   for level in ident.tcb_levels)
    qe_result = evaluate_qe(dataclasses.replace(ident, tcb_levels=levels), qe, expected_id="QE")
    info, platform, td = _v5()
    result = evaluate_tdx(info, platform, td, qe=qe_result)
    assert result.status is S.OUT_OF_DATE
    assert result.qe_status is S.OUT_OF_DATE
    assert result.advisory_ids == ("SA-QE",)


@pytest.mark.parametrize(("level", "other", "expected"), [
    (S.UP_TO_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
    (S.SW_HARDENING_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE),
    (S.CONFIGURATION_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
    (S.CONFIGURATION_AND_SW_HARDENING_NEEDED, S.OUT_OF_DATE,
     S.OUT_OF_DATE_CONFIGURATION_NEEDED),
    (S.CONFIGURATION_NEEDED, S.UP_TO_DATE, S.CONFIGURATION_NEEDED),
    (S.UP_TO_DATE, S.REVOKED, S.REVOKED),
    (S.OUT_OF_DATE, None, S.OUT_OF_DATE),
])
def test_convergence_table(level: TcbStatus, other: TcbStatus | None,
                           expected: TcbStatus) -> None:
    """Module/QE statuses converge with the level status as in section 2.10."""
    assert converge(level, other) is expected
