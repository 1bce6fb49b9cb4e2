"""Differential test against dcap-qvl (a Rust implementation of Intel's quote verification,
installed as a test dependency): for every quote with full collateral, the same collateral
bytes go to both verifiers at the same time, and our TCB status and advisory ids equal
dcap-qvl's; where dcap-qvl rejects the platform's TCB, we reject it as TCB_POLICY. dcap-qvl
also refuses debug TDs/enclaves outright, which for us is appraisal policy: there our claims
must say debug."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
import pytest
from support.paths import VECTORS

from attester_agent.simulator.dcap import DcapTestCa, SgxSimulator, TdxSimulator
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.pcs_document import split_signed_body
from verifier.collateral.cache import CollateralStore
from verifier.dcap.trust import IntelTrustStore
from verifier.dcap.verify import DcapVerifier

V = VECTORS
ROOTS = V / "tdx/intel-roots"
GOTDX = V / "tdx/gotdx-spr-e4-v4"
SPR_E4_TRAILER = b"\nextra bytes(only for testing purpose)\n"


@dataclass(frozen=True)
class Collateral:
    """One complete collateral set in dcap-qvl's QuoteCollateralV3 shape."""

    tcb_info: str
    tcb_info_signature: bytes
    tcb_info_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes
    qe_identity_issuer_chain: str
    pck_crl: bytes
    root_ca_crl: bytes
    pck_crl_issuer_chain: str

    def for_dcap_qvl(self) -> dcap_qvl.QuoteCollateralV3:
        """The same bytes as dcap-qvl's collateral object."""
        return dcap_qvl.QuoteCollateralV3(
            self.pck_crl_issuer_chain, self.root_ca_crl, self.pck_crl,
            self.tcb_info_issuer_chain, self.tcb_info, self.tcb_info_signature,
            self.qe_identity_issuer_chain, self.qe_identity, self.qe_identity_signature)

    def write_pcs_files(self, directory: Path) -> list[Path]:
        """The same bytes as PCS-format files (JSON bodies, DER CRLs, PEM chains)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            "tcb": ('{"tcbInfo":' + self.tcb_info + ',"signature":"'
                    + self.tcb_info_signature.hex() + '"}').encode(),
            "qe": ('{"enclaveIdentity":' + self.qe_identity + ',"signature":"'
                   + self.qe_identity_signature.hex() + '"}').encode(),
            "tcb-chain": self.tcb_info_issuer_chain.encode(),
            "qe-chain": self.qe_identity_issuer_chain.encode(),
            "pck-chain": self.pck_crl_issuer_chain.encode(),
            "pck-crl": self.pck_crl, "root-crl": self.root_ca_crl,
        }
        for name, data in files.items():
            (directory / name).write_bytes(data)
        return [directory / name for name in files]


def pcs_member(body: bytes, member: str) -> tuple[str, bytes]:
    """The exact member text and the signature of a PCS JSON body."""
    signed = split_signed_body(body, member)
    return signed.raw.decode(), signed.signature


def from_pcs(tcb_body: bytes, qe_body: bytes, tcb_chain: bytes, pck_crl: bytes,
             root_crl: bytes, pck_chain: bytes) -> Collateral:
    """A collateral set from PCS bodies, chains and DER CRLs."""
    tcb, tcb_sig = pcs_member(tcb_body, "tcbInfo")
    qe, qe_sig = pcs_member(qe_body, "enclaveIdentity")
    return Collateral(tcb_info=tcb, tcb_info_signature=tcb_sig,
                      tcb_info_issuer_chain=tcb_chain.decode(), qe_identity=qe,
                      qe_identity_signature=qe_sig, qe_identity_issuer_chain=tcb_chain.decode(),
                      pck_crl=pck_crl, root_ca_crl=root_crl,
                      pck_crl_issuer_chain=pck_chain.decode())


def from_bundle(path: Path, **override: object) -> Collateral:
    """A collateral set from a dcap-qvl bundle JSON (hex CRLs and signatures)."""
    b = json.loads(path.read_text())
    fields: dict[str, object] = {
        "tcb_info": b["tcb_info"], "tcb_info_signature": bytes.fromhex(b["tcb_info_signature"]),
        "tcb_info_issuer_chain": b["tcb_info_issuer_chain"], "qe_identity": b["qe_identity"],
        "qe_identity_signature": bytes.fromhex(b["qe_identity_signature"]),
        "qe_identity_issuer_chain": b["qe_identity_issuer_chain"],
        "pck_crl": bytes.fromhex(b["pck_crl"]), "root_ca_crl": bytes.fromhex(b["root_ca_crl"]),
        "pck_crl_issuer_chain": b["pck_crl_issuer_chain"]}
    fields.update(override)
    return Collateral(**fields)  # type: ignore[arg-type]


def spr_2023() -> Collateral:
    """go-tdx-guest's full 2023 collateral for FMSPC 50806f000000."""
    return from_pcs((GOTDX / "sample_tcbInfo_response").read_bytes(),
                    (GOTDX / "sample_qeIdentity_response").read_bytes(),
                    (ROOTS / "tcb-signing-chain-2018-2025.pem").read_bytes(),
                    (GOTDX / "pckcrl").read_bytes(), (GOTDX / "rootcrl.der").read_bytes(),
                    (ROOTS / "pck-crl-issuer-chain-platform.pem").read_bytes())


def emr_v5() -> Collateral:
    """go-tdx-guest's v5 TCB Info with the dcap-qvl bundle's QE identity and CRLs."""
    tcb, sig = pcs_member((V / "tdx/gotdx-emr-v5/sample_tcbinfo_response_v5").read_bytes(),
                          "tcbInfo")
    return from_bundle(V / "tdx/dcapqvl-emr-v5-tcb-unsupported/"
                       "tdx_quote_outdated_collateral.json", tcb_info=tcb,
                       tcb_info_signature=sig)


def spr_e4_without_trailer() -> bytes:
    """The go-tdx-guest SPR E4 quote without the non-zero test bytes appended to it."""
    raw = (GOTDX / "tdx_prod_quote_SPR_E4.dat").read_bytes()
    assert raw.endswith(SPR_E4_TRAILER)
    return raw[:-len(SPR_E4_TRAILER)]


# name: (tee, quote bytes, collateral, verification time)
REAL = {
    "trustee-spr-2023": lambda: ("tdx", (V / "tdx/trustee-spr-v4/tdx_quote_4.dat").read_bytes(),
                                 spr_2023(), "2023-07-01T01:00:00Z"),
    "gotdx-spr-e4-2023": lambda: ("tdx", spr_e4_without_trailer(), spr_2023(),
                                  "2023-07-01T01:00:00Z"),
    "gotdx-emr-v5": lambda: ("tdx", (V / "tdx/gotdx-emr-v5/quote_v5_sample.dat").read_bytes(),
                             emr_v5(), "2026-03-01T00:00:00Z"),
    "dcapqvl-emr-v5-bundle": lambda: (
        "tdx", (V / "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated").read_bytes(),
        from_bundle(V / "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated_collateral.json"),
        "2026-03-20T10:41:14Z"),
    "dcapqvl-sgx-bundle": lambda: (
        "sgx", (V / "sgx/dcapqvl-sgx-v3/sgx_quote").read_bytes(),
        from_bundle(V / "sgx/dcapqvl-sgx-v3/sgx_quote_collateral.json"), "2025-07-19T10:01:17Z"),
}


def theirs(quote: bytes, collateral: Collateral, at: datetime,
           root_der: bytes | None = None) -> tuple[str, list[str]] | str:
    """dcap-qvl's (status, advisory ids), or its error text when it rejects."""
    now = int(at.timestamp())
    try:
        if root_der is None:
            report = dcap_qvl.verify(quote, collateral.for_dcap_qvl(), now)
        else:
            report = dcap_qvl.verify_with_root_ca(quote, collateral.for_dcap_qvl(), root_der,
                                                  now)
    except ValueError as exc:
        return str(exc)
    return str(report.status), list(report.advisory_ids)


@dataclass(frozen=True)
class Outcome:
    """Our verdict on a quote: TCB status, advisory ids and the debug flag."""

    status: str
    advisories: list[str]
    debug: bool


def ours(tee: str, quote: bytes, store: CollateralStore, at: datetime,
         simulator_roots: tuple[IntelTrustStore, ...] = ()) -> Outcome | Category:
    """Our outcome, or the category of our rejection."""
    verifier = DcapVerifier(store, simulator_roots=simulator_roots)
    try:
        if tee == "tdx":
            td = verifier.verify_tdx(quote, at=at)
            tcb, debug = td.tcb, td.td_attributes.debug
        else:
            enclave = verifier.verify_sgx(quote, at=at)
            tcb, debug = enclave.tcb, enclave.debug
    except KeybrokerError as exc:
        return exc.category
    return Outcome(status=tcb.status, advisories=list(tcb.advisory_ids), debug=debug)


def compare(mine: Outcome | Category, peer: tuple[str, list[str]] | str) -> None:
    """Equal status and advisories; a dcap-qvl TCB rejection must be our TCB_POLICY and its
    debug refusal our debug claim."""
    if isinstance(peer, str) and "Debug mode" in peer:
        assert isinstance(mine, Outcome) and mine.debug, (mine, peer)
        return
    if isinstance(peer, str):
        assert "TCB" in peer, f"dcap-qvl rejected for another reason: {peer}"
        assert mine is Category.TCB_POLICY, (mine, peer)
        return
    assert isinstance(mine, Outcome), (mine, peer)
    assert not mine.debug
    assert (mine.status, mine.advisories) == peer


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_quotes_match_dcap_qvl(name: str, tmp_path: Path) -> None:
    """Real quotes with full collateral: same status and advisories as dcap-qvl."""
    tee, quote, collateral, when = REAL[name]()
    at = datetime.fromisoformat(when.replace("Z", "+00:00"))
    peer = theirs(quote, collateral, at)
    store = CollateralStore.load(collateral.write_pcs_files(tmp_path))
    compare(ours(tee, quote, store, at), peer)


def test_the_differential_covers_accepted_and_rejected_platforms(tmp_path: Path) -> None:
    """The real set holds UpToDate, a non-trivial status with advisories, and TCB rejections
    (so the comparison above is not vacuous)."""
    outcomes = {}
    for name, case in REAL.items():
        _, quote, collateral, when = case()
        outcomes[name] = theirs(quote, collateral,
                                datetime.fromisoformat(when.replace("Z", "+00:00")))
    assert outcomes["gotdx-emr-v5"] == ("UpToDate", [])
    assert outcomes["trustee-spr-2023"] == "Verification failed: Debug mode is enabled"
    assert outcomes["dcapqvl-sgx-bundle"] == ("ConfigurationAndSWHardeningNeeded",
                                              ["INTEL-SA-00289", "INTEL-SA-00615"])
    assert isinstance(outcomes["dcapqvl-emr-v5-bundle"], str)
    assert isinstance(outcomes["gotdx-spr-e4-2023"], str)


@pytest.fixture(scope="module")
def ca() -> DcapTestCa:
    """One simulator PKI for the simulated platforms."""
    return DcapTestCa.generate(name="differential")


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
@pytest.mark.parametrize("tcb", ["UpToDate", "SWHardeningNeeded", "OutOfDate", "Revoked",
                                 "unsupported"])
def test_simulated_platforms_match_dcap_qvl(ca: DcapTestCa, tee: str, tcb: str,
                                            tmp_path: Path) -> None:
    """Simulated TDX and SGX platforms at every TCB profile (under the simulator root for
    both verifiers): same status and advisories, same rejections."""
    now = datetime.now(UTC).replace(microsecond=0)
    simulator = TdxSimulator(ca, tcb=tcb) if tee == "tdx" else SgxSimulator(ca, tcb=tcb)
    quote = simulator.quote(bytes(64))
    collateral = from_pcs(ca.tcb_info("TDX" if tee == "tdx" else "SGX", now=now),
                          ca.qe_identity("TD_QE" if tee == "tdx" else "QE", now=now),
                          ca.tcb_signing_chain_pem(), ca.pck_crl(now=now), ca.root_crl(now=now),
                          ca.pck_crl_issuer_chain_pem())
    peer = theirs(quote, collateral, now, root_der=ca.root_der)
    store = CollateralStore.load(collateral.write_pcs_files(tmp_path))
    mine = ours(tee, quote, store, now, (IntelTrustStore.from_der(ca.root_der),))
    if tcb == "Revoked":
        assert isinstance(peer, str)
        assert mine is Category.TCB_POLICY
        return
    compare(mine, peer)
