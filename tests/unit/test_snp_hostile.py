"""Hostile SEV-SNP evidence (hostile-evidence.md rows 1, 2, 6, 7, 10, 12-17, 43) built with the
simulator and run through SnpVerifier; each asserts the error category."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.snp_certs import GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, build_cert_table
from keybroker.evidence.snp_report import SIGNED_SIZE, SIGNING_KEY_NONE, SIGNING_KEY_VLEK
from verifier.collateral.cache import CollateralStore
from verifier.pki import Certificate
from verifier.snp.claims import SnpClaims
from verifier.snp.trust import AmdTrustStore, TrustAnchor
from verifier.snp.verify import SnpVerifier

NOW = datetime(2026, 3, 1, tzinfo=UTC)
REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def ca() -> SnpTestCa:
    return SnpTestCa.generate("Milan")


@pytest.fixture(scope="module")
def other_ca() -> SnpTestCa:
    return SnpTestCa.generate("Milan", name="attacker")


@pytest.fixture(scope="module")
def ca_dir(ca: SnpTestCa, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca")
    ca.save(path)
    return path


@pytest.fixture(scope="module")
def trust(ca_dir: Path) -> AmdTrustStore:
    return AmdTrustStore.pinned().with_simulator_roots([ca_dir / "ark.pem"])


@pytest.fixture(scope="module")
def sim(ca: SnpTestCa) -> SnpSimulator:
    return SnpSimulator(ca)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def verify(trust: AmdTrustStore, report: bytes, table: bytes = b"", *,
           collateral: CollateralStore | None = None, when: datetime = NOW,
           allow_missing_crl: bool = True) -> SnpClaims:
    """Most rows are about the report and the chain, so a missing CRL is allowed here (the
    claims then name it); the revocation rows below pass ``allow_missing_crl=False``."""
    return SnpVerifier(trust, collateral).verify(report, table, at=when,
                                                 allow_missing_crl=allow_missing_crl)


def rejected(trust: AmdTrustStore, report: bytes, table: bytes = b"", *,
             collateral: CollateralStore | None = None, when: datetime = NOW,
             allow_missing_crl: bool = True) -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        verify(trust, report, table, collateral=collateral, when=when,
               allow_missing_crl=allow_missing_crl)
    return exc.value


def resign_raw(sim: SnpSimulator, raw: bytes) -> bytes:
    """Sign arbitrary (possibly invalid) report bytes with the simulator's leaf key."""
    r, s = decode_dss_signature(sim.leaf.key.sign(raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    return raw[:SIGNED_SIZE] + r.to_bytes(72, "little") + s.to_bytes(72, "little") + raw[0x330:]


def test_simulated_evidence_verifies(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """Baseline: untouched simulator evidence verifies under the insecure simulator root."""
    report, table = sim.attest(REPORT_DATA)
    claims = verify(trust, report, table)
    assert claims.report_data == REPORT_DATA and claims.insecure_root


def test_simulator_root_not_trusted_by_default(sim: SnpSimulator) -> None:
    """Without the simulator root only AMD roots are trusted: CHAIN_UNTRUSTED."""
    report, table = sim.attest(REPORT_DATA)
    assert rejected(AmdTrustStore.pinned(), report, table).category is Category.CHAIN_UNTRUSTED


def test_ecdsa_chain_needs_an_insecure_anchor(ca: SnpTestCa, sim: SnpSimulator) -> None:
    """An ECDSA-signed chain is refused below an anchor that is not marked insecure."""
    anchor = TrustAnchor(product="Milan", ark=Certificate.from_der(der(ca.ark)),
                         ask=Certificate.from_der(der(ca.ask)), asvk=None, insecure=False)
    report, table = sim.attest(REPORT_DATA)
    assert rejected(AmdTrustStore([anchor]), report, table).category is Category.CHAIN_UNTRUSTED


# Row 1 and 2: empty and truncated.
@pytest.mark.parametrize("length", [0, 1, 0x2A0, 0x49F])
def test_row1_2_empty_or_truncated(trust: AmdTrustStore, sim: SnpSimulator, length: int) -> None:
    """Rows 1-2: empty or truncated reports are MALFORMED."""
    report, table = sim.attest(REPORT_DATA)
    assert rejected(trust, report[:length], table).category is Category.MALFORMED


def test_row1_empty_and_truncated_cert_table(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """Row 2 for the certificate table: a table cut short is MALFORMED."""
    report, table = sim.attest(REPORT_DATA)
    assert rejected(trust, report, table[:30]).category is Category.MALFORMED
    assert rejected(trust, report, table[:-10]).category is Category.MALFORMED


# Row 6: unknown version / algorithm.
@pytest.mark.parametrize("change", [{"version": 1}, {"version": 99}, {"signature_algo": 2},
                                    {"signature_algo": 0}])
def test_row6_unknown_version_or_algorithm(trust: AmdTrustStore, sim: SnpSimulator,
                                           change: dict[str, int]) -> None:
    """Row 6: VERSION 1/99 or SIGNATURE_ALGO != 1, re-signed, is MALFORMED."""
    report = sim.sign(sim.report(REPORT_DATA).with_changes(**change))
    assert rejected(trust, report, sim.cert_table()).category is Category.MALFORMED


# Row 7: reserved bits.
@pytest.mark.parametrize("policy", [0x0, 0x10000, 0x30000 | 1 << 26, 0x30000 | 1 << 63])
def test_row7_policy_reserved_bits(trust: AmdTrustStore, sim: SnpSimulator, policy: int) -> None:
    """Row 7: policy bit 17 cleared or bits 26-63 set, re-signed, is MALFORMED."""
    report = sim.sign(sim.report(REPORT_DATA).with_changes(policy=policy))
    assert rejected(trust, report, sim.cert_table()).category is Category.MALFORMED


@pytest.mark.parametrize("offset", [0x4C, 0x4F, 0x18B, 0x1EB, 0x1EF, 0x210, 0x29F, 0x2D0, 0x400])
def test_row7_mbz_bytes(trust: AmdTrustStore, sim: SnpSimulator, offset: int) -> None:
    """Row 7: a non-zero must-be-zero byte, re-signed, is MALFORMED."""
    raw = bytearray(sim.sign(sim.report(REPORT_DATA)))
    raw[offset] = 0x01
    report = resign_raw(sim, bytes(raw)) if offset < SIGNED_SIZE else bytes(raw)
    assert rejected(trust, report, sim.cert_table()).category is Category.MALFORMED


def test_unsigned_reports_rejected(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """SIGNING_KEY=NONE or MASK_CHIP_KEY: the report is unsigned, SIG_INVALID."""
    for signer_info in (SIGNING_KEY_NONE << 2, 0x2):
        report = sim.sign(sim.report(REPORT_DATA).with_changes(signer_info=signer_info))
        err = rejected(trust, report, sim.cert_table())
        assert err.category is Category.SIG_INVALID
        assert err.reason == "report is unsigned"


# Row 10: body bit flip.
def test_row10_measurement_bit_flip(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """Row 10: one MEASUREMENT bit flipped, not re-signed: SIG_INVALID."""
    report, table = sim.attest(REPORT_DATA)
    raw = bytearray(report)
    raw[0x90] ^= 0x01
    assert rejected(trust, bytes(raw), table).category is Category.SIG_INVALID


def test_row10_signature_bit_flip(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """Row 10 variant: a flipped bit in SIGNATURE.R: SIG_INVALID."""
    report, table = sim.attest(REPORT_DATA)
    raw = bytearray(report)
    raw[0x2A0] ^= 0x01
    assert rejected(trust, bytes(raw), table).category is Category.SIG_INVALID


# Row 12: wrong root.
def test_row12_vcek_under_unconfigured_ark(trust: AmdTrustStore, other_ca: SnpTestCa) -> None:
    """Row 12: report re-signed by a VCEK under an unconfigured ARK: CHAIN_UNTRUSTED."""
    attacker = SnpSimulator(other_ca)
    report, table = attacker.attest(REPORT_DATA)
    assert rejected(trust, report, table).category is Category.CHAIN_UNTRUSTED


# Row 13: root from evidence.
def test_row13_attacker_root_in_cert_table(trust: AmdTrustStore, other_ca: SnpTestCa) -> None:
    """Row 13: the attacker's self-signed ARK in the cert table: CHAIN_UNTRUSTED."""
    attacker = SnpSimulator(other_ca)
    report = attacker.sign(attacker.report(REPORT_DATA))
    table = build_cert_table([(GUID_ARK, der(other_ca.ark)), (GUID_ASK, der(other_ca.ask)),
                              (GUID_VCEK, attacker.leaf.der)])
    err = rejected(trust, report, table)
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "root"


def test_row13_unpinned_ark_next_to_valid_chain(trust: AmdTrustStore, sim: SnpSimulator,
                                                other_ca: SnpTestCa) -> None:
    """Row 13: any non-pinned ARK in the table rejects, even beside an otherwise valid chain."""
    report = sim.sign(sim.report(REPORT_DATA))
    table = build_cert_table([(GUID_ARK, der(other_ca.ark)), (GUID_ASK, der(sim.ca.ask)),
                              (GUID_VCEK, sim.leaf.der)])
    assert rejected(trust, report, table).category is Category.CHAIN_UNTRUSTED
    pinned = build_cert_table([(GUID_ARK, der(sim.ca.ark)), (GUID_ASK, der(sim.ca.ask)),
                               (GUID_VCEK, sim.leaf.der)])
    assert verify(trust, report, pinned).insecure_root


def test_row13_attacker_root_in_collateral(trust: AmdTrustStore, other_ca: SnpTestCa,
                                           tmp_path: Path) -> None:
    """Row 13: a root found in the collateral cache is never an anchor: CHAIN_UNTRUSTED."""
    attacker = SnpSimulator(other_ca)
    other_ca.save(tmp_path / "attacker")
    (tmp_path / "attacker" / "vcek.der").write_bytes(attacker.leaf.der)
    collateral = CollateralStore.load([tmp_path / "attacker"])
    report = attacker.sign(attacker.report(REPORT_DATA))
    err = rejected(trust, report, collateral=collateral)
    assert err.category is Category.CHAIN_UNTRUSTED


# Row 14: VCEK/VLEK confusion.
def test_row14_vlek_report_with_vcek_chain(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """Row 14: SIGNING_KEY=VLEK, re-signed by the VCEK, table carries the VCEK: CHAIN_UNTRUSTED."""
    report = sim.sign(sim.report(REPORT_DATA).with_changes(signer_info=SIGNING_KEY_VLEK << 2))
    err = rejected(trust, report, sim.cert_table())
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "key-type"
    in_vlek_slot = build_cert_table([(GUID_ASK, der(sim.ca.ask)), (GUID_VLEK, sim.leaf.der)])
    err = rejected(trust, report, in_vlek_slot)
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "key-type"


def test_row14_vlek_chained_via_ask(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """Row 14: a VLEK issued by the ASK instead of the ASVK: CHAIN_UNTRUSTED."""
    leaf = ca.issue_vlek(bytes.fromhex("0300000000000873"), issuer="ask")
    vlek_sim = SnpSimulator(ca, signing_key="vlek", leaf=leaf)
    report, table = vlek_sim.attest(REPORT_DATA)
    assert rejected(trust, report, table).category is Category.CHAIN_UNTRUSTED
    with_ask = build_cert_table([(GUID_ASK, der(ca.ask)), (GUID_VLEK, leaf.der)])
    assert rejected(trust, report, with_ask).category is Category.CHAIN_UNTRUSTED


def test_row14_vcek_chained_via_asvk(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """Row 14: a VCEK issued by the ASVK: CHAIN_UNTRUSTED."""
    probe = SnpSimulator(ca)
    leaf = ca.issue_vcek(probe.report(REPORT_DATA).chip_id, bytes.fromhex("0300000000000873"),
                         issuer="asvk")
    report, table = SnpSimulator(ca, leaf=leaf).attest(REPORT_DATA)
    assert rejected(trust, report, table).category is Category.CHAIN_UNTRUSTED


def test_vlek_simulated_verifies(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """Baseline for row 14: a VLEK via the ASVK verifies and reports its csp_id."""
    report, table = SnpSimulator(ca, signing_key="vlek", version=5).attest(REPORT_DATA)
    claims = verify(trust, report, table)
    assert claims.signing_key == "vlek" and claims.csp_id == "keybroker-simulator"


# Row 15: product mismatch.
def test_row15_genoa_report_with_milan_chain(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """Row 15: a Genoa report (CPUID 0x19/0x11) signed via the Milan ASK/VCEK: CHAIN_UNTRUSTED."""
    report, table = SnpSimulator(ca, cpuid=(0x19, 0x11, 0x01)).attest(REPORT_DATA)
    err = rejected(trust, report, table)
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "product"


def test_row15_milan_report_with_genoa_chain(tmp_path: Path) -> None:
    """Row 15 reversed: a Milan report with a Genoa chain (both roots trusted): CHAIN_UNTRUSTED."""
    genoa = SnpTestCa.generate("Genoa")
    genoa.save(tmp_path / "genoa")
    trust = AmdTrustStore.pinned().with_simulator_roots([tmp_path / "genoa" / "ark.pem"])
    report, table = SnpSimulator(genoa, cpuid=(0x19, 0x01, 0x01)).attest(REPORT_DATA)
    assert rejected(trust, report, table).category is Category.CHAIN_UNTRUSTED
    good_report, good_table = SnpSimulator(genoa).attest(REPORT_DATA)
    assert verify(trust, good_report, good_table).product == "Genoa"


def test_row15_product_name_mismatch_on_v2(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """Row 15 for v2 (no CPUID): productName of another line under the Milan ASK is rejected."""
    probe = SnpSimulator(ca, version=2)
    leaf = ca.issue_vcek(probe.report(REPORT_DATA).chip_id, bytes.fromhex("0300000000000873"),
                         product_name="Genoa-B0")
    report, table = SnpSimulator(ca, version=2, leaf=leaf).attest(REPORT_DATA)
    assert rejected(trust, report, table).category is Category.CHAIN_UNTRUSTED


# Row 16: certificate for another TCB or chip.
def test_row16_vcek_for_other_tcb(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """Row 16: VCEK SPLs != REPORTED_TCB: CHAIN_UNTRUSTED."""
    probe = SnpSimulator(ca)
    leaf = ca.issue_vcek(probe.report(REPORT_DATA).chip_id, bytes.fromhex("0300000000000874"))
    report, table = SnpSimulator(ca, leaf=leaf).attest(REPORT_DATA)
    err = rejected(trust, report, table)
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "tcb-extensions"


def test_row16_vcek_for_other_chip(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """Row 16: VCEK hwID != CHIP_ID: CHAIN_UNTRUSTED."""
    leaf = ca.issue_vcek(b"\x42" * 64, bytes.fromhex("0300000000000873"))
    report, table = SnpSimulator(ca, leaf=leaf).attest(REPORT_DATA)
    err = rejected(trust, report, table)
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "hwid"


def test_row16_turin_hwid_is_first_eight_bytes(tmp_path: Path) -> None:
    """Row 16 on Turin: the 8-byte hwID must equal CHIP_ID[0:8]; fmcSPL must match too."""
    turin = SnpTestCa.generate("Turin")
    turin.save(tmp_path / "turin")
    trust = AmdTrustStore.pinned().with_simulator_roots([tmp_path / "turin" / "ark.pem"])
    good = SnpSimulator(turin, version=5)
    claims = verify(trust, *good.attest(REPORT_DATA))
    assert claims.product == "Turin" and claims.reported_tcb.fmc == 0
    chip = good.report(REPORT_DATA).chip_id
    other = turin.issue_vcek(bytes([chip[0] ^ 1]) + chip[1:], bytes.fromhex("0001000300000009"))
    assert rejected(trust, *SnpSimulator(turin, leaf=other).attest(REPORT_DATA)
                    ).category is Category.CHAIN_UNTRUSTED
    fmc = turin.issue_vcek(chip, bytes.fromhex("0101000300000009"))
    assert rejected(trust, *SnpSimulator(turin, leaf=fmc).attest(REPORT_DATA)
                    ).category is Category.CHAIN_UNTRUSTED


# Row 17 and 43: CRLs.
def _crl_store(tmp_path: Path, crl: bytes) -> CollateralStore:
    (tmp_path / "ark.crl").write_bytes(crl)
    return CollateralStore.load([tmp_path / "ark.crl"])


def test_row17_revoked_ask(trust: AmdTrustStore, ca: SnpTestCa, sim: SnpSimulator,
                           tmp_path: Path) -> None:
    """Row 17: the ASK listed in the ARK's CRL: CHAIN_UNTRUSTED; not listed: verified."""
    report, table = sim.attest(REPORT_DATA)
    window = {"this_update": NOW - timedelta(days=1), "next_update": NOW + timedelta(days=30)}
    revoked = _crl_store(tmp_path, ca.issue_crl([ca.ask.serial_number], **window))
    err = rejected(trust, report, table, collateral=revoked, allow_missing_crl=False)
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "crl"
    (tmp_path / "clean").mkdir()
    clean = _crl_store(tmp_path / "clean", ca.issue_crl([12345], **window))
    claims = verify(trust, report, table, collateral=clean, allow_missing_crl=False)
    assert claims.insecure_root and claims.collateral_warnings == ()


def test_row17_revoked_asvk(trust: AmdTrustStore, ca: SnpTestCa, tmp_path: Path) -> None:
    """Row 17: a revoked ASVK rejects VLEK evidence: CHAIN_UNTRUSTED."""
    report, table = SnpSimulator(ca, signing_key="vlek").attest(REPORT_DATA)
    crl = ca.issue_crl([ca.asvk.serial_number], this_update=NOW - timedelta(days=1),
                       next_update=NOW + timedelta(days=30))
    err = rejected(trust, report, table, collateral=_crl_store(tmp_path, crl))
    assert err.category is Category.CHAIN_UNTRUSTED


def test_missing_crl_is_stale_unless_allowed_then_named(trust: AmdTrustStore,
                                                       sim: SnpSimulator) -> None:
    """No ARK CRL in the collateral: COLLATERAL_STALE (crl-missing) naming the CRL; allowed
    explicitly, the claims carry the warning (issue 10: this used to pass silently)."""
    report, table = sim.attest(REPORT_DATA)
    err = rejected(trust, report, table, allow_missing_crl=False)
    assert (err.category, err.rule) == (Category.COLLATERAL_STALE, "crl-missing")
    assert "ARK-Milan CRL" in err.reason
    claims = verify(trust, report, table, allow_missing_crl=True)
    assert claims.collateral_warnings == ("ARK-Milan CRL missing",)
    assert claims.as_dict()["collateral_warnings"] == ["ARK-Milan CRL missing"]


@pytest.mark.parametrize("allow", [False, True])
def test_row43_crl_not_signed_by_ark(trust: AmdTrustStore, ca: SnpTestCa, other_ca: SnpTestCa,
                                     sim: SnpSimulator, tmp_path: Path, allow: bool) -> None:
    """Row 43: a CRL in the ARK's name signed by another key: CHAIN_UNTRUSTED, never treated
    as missing, even when missing CRLs are allowed."""
    crl = ca.issue_crl([], this_update=NOW - timedelta(days=1),
                       next_update=NOW + timedelta(days=30), signing_key=other_ca.ark_key)
    err = rejected(trust, *sim.attest(REPORT_DATA), collateral=_crl_store(tmp_path, crl),
                   allow_missing_crl=allow)
    assert err.category is Category.CHAIN_UNTRUSTED and err.rule == "crl-signature"


def test_foreign_crl_next_to_the_genuine_one_is_ignored(
        trust: AmdTrustStore, ca: SnpTestCa, other_ca: SnpTestCa, sim: SnpSimulator,
        tmp_path: Path) -> None:
    """A CRL of another root under the same name is ignored when the ARK's own CRL is there,
    and the genuine CRL's revocations still apply."""
    window = {"this_update": NOW - timedelta(days=1), "next_update": NOW + timedelta(days=30)}
    (tmp_path / "foreign.crl").write_bytes(ca.issue_crl([], signing_key=other_ca.ark_key,
                                                        **window))
    (tmp_path / "own.crl").write_bytes(ca.issue_crl([], **window))
    store = CollateralStore.load([tmp_path])
    report, table = sim.attest(REPORT_DATA)
    claims = verify(trust, report, table, collateral=store, allow_missing_crl=False)
    assert claims.collateral_warnings == ()
    (tmp_path / "own.crl").write_bytes(ca.issue_crl([ca.ask.serial_number], **window))
    err = rejected(trust, report, table, collateral=CollateralStore.load([tmp_path]),
                   allow_missing_crl=False)
    assert (err.category, err.rule) == (Category.CHAIN_UNTRUSTED, "crl")


def test_row43_crl_past_next_update(trust: AmdTrustStore, ca: SnpTestCa, sim: SnpSimulator,
                                    tmp_path: Path) -> None:
    """Row 43: the only CRL is past its nextUpdate (or not yet valid): COLLATERAL_STALE."""
    report, table = sim.attest(REPORT_DATA)
    crl = ca.issue_crl([], this_update=NOW - timedelta(days=40),
                       next_update=NOW - timedelta(days=10))
    store = _crl_store(tmp_path, crl)
    err = rejected(trust, report, table, collateral=store, allow_missing_crl=False)
    assert err.category is Category.COLLATERAL_STALE and err.rule == "crl-window"
    assert verify(trust, report, table, collateral=store, when=NOW - timedelta(days=20),
                  allow_missing_crl=False)
    stale = verify(trust, report, table, collateral=store, allow_missing_crl=True)
    assert stale.collateral_warnings == ("ARK-Milan CRL stale",)


# Validity and collateral.
def test_expired_vcek(trust: AmdTrustStore, ca: SnpTestCa) -> None:
    """A VCEK used after its notAfter: CHAIN_UNTRUSTED."""
    probe = SnpSimulator(ca)
    leaf = ca.issue_vcek(probe.report(REPORT_DATA).chip_id, bytes.fromhex("0300000000000873"),
                         not_after=NOW - timedelta(seconds=1))
    report, table = SnpSimulator(ca, leaf=leaf).attest(REPORT_DATA)
    assert rejected(trust, report, table).category is Category.CHAIN_UNTRUSTED
    assert verify(trust, report, table, when=NOW - timedelta(days=1)).signing_key == "vcek"


def test_missing_vcek_is_stale(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """No VCEK in the evidence and none in collateral: COLLATERAL_STALE."""
    report = sim.sign(sim.report(REPORT_DATA))
    assert rejected(trust, report).category is Category.COLLATERAL_STALE


def test_vcek_and_ask_from_collateral(sim: SnpSimulator, ca: SnpTestCa, tmp_path: Path) -> None:
    """A VCEK found in collateral by (hwID, TCB), its ASK from collateral too, verifies."""
    (tmp_path / "vcek.der").write_bytes(sim.leaf.der)
    (tmp_path / "chain.pem").write_bytes(ca.ask.public_bytes(Encoding.PEM)
                                         + ca.ark.public_bytes(Encoding.PEM))
    (tmp_path / "noise.txt").write_text("not a certificate")
    (tmp_path / "ark.pem").write_bytes(ca.ark_pem)
    trust = AmdTrustStore.pinned().with_simulator_roots([tmp_path / "ark.pem"])
    report = sim.sign(sim.report(REPORT_DATA))
    claims = verify(trust, report, collateral=CollateralStore.load([tmp_path]))
    assert claims.chip_id == sim.report(REPORT_DATA).chip_id


def test_simulator_cache_and_window(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """Repeated reports reuse cached chain signatures; the window is still checked each time."""
    verifier = SnpVerifier(trust)
    table = sim.cert_table()
    verifier.verify(sim.sign(sim.report(REPORT_DATA)), table, at=NOW, allow_missing_crl=True)
    misses = verifier.cache_stats.misses
    for i in range(3):
        verifier.verify(sim.sign(sim.report(bytes([i]) * 64)), table, at=NOW,
                        allow_missing_crl=True)
    assert verifier.cache_stats.misses == misses
    assert verifier.cache_stats.hits >= 9
    with pytest.raises(KeybrokerError) as exc:
        verifier.verify(sim.sign(sim.report(REPORT_DATA)), table,
                        at=datetime(2100, 1, 1, tzinfo=UTC), allow_missing_crl=True)
    assert exc.value.category is Category.CHAIN_UNTRUSTED


def test_signature_over_received_bytes(trust: AmdTrustStore, sim: SnpSimulator) -> None:
    """The signature covers bytes 0..0x29F exactly: a change of REPORT_DATA breaks it."""
    report, table = sim.attest(REPORT_DATA)
    raw = bytearray(report)
    struct.pack_into("<B", raw, 0x50, raw[0x50] ^ 0x80)
    assert rejected(trust, bytes(raw), table).category is Category.SIG_INVALID


def _reissued_ask(ca: SnpTestCa, *, constraints: bool, key_usage: x509.KeyUsage | None
                  ) -> x509.Certificate:
    """The simulator's ASK (same name and key) re-signed by its ARK with other CA extensions."""
    builder = (x509.CertificateBuilder().subject_name(ca.ask.subject)
               .issuer_name(ca.ark.subject).public_key(ca.ask_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(ca.ask.not_valid_before_utc)
               .not_valid_after(ca.ask.not_valid_after_utc))
    if constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, True)
    return builder.sign(ca.ark_key, hashes.SHA384())


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=False, encipher_only=False,
                         decipher_only=False)


@pytest.mark.parametrize(("constraints", "usage", "rule"), [
    (False, _usage(cert_sign=True), "ca-constraints"),
    (True, None, "ca-key-usage"),
    (True, _usage(cert_sign=False), "ca-key-usage"),
])
def test_ask_without_ca_extensions_is_untrusted(ca: SnpTestCa, sim: SnpSimulator,
                                                constraints: bool, usage: x509.KeyUsage | None,
                                                rule: str) -> None:
    """An ASK that verifies under the ARK but lacks basicConstraints CA:TRUE or keyUsage
    keyCertSign is CHAIN_UNTRUSTED (issue 10: these were only checked when present); the
    same chain with the simulator's own ASK verifies."""
    anchor = TrustAnchor(product="Milan", ark=Certificate.from_der(der(ca.ark)), ask=None,
                         asvk=None, insecure=True)
    trust = AmdTrustStore([anchor])
    report = sim.sign(sim.report(REPORT_DATA))
    bad = _reissued_ask(ca, constraints=constraints, key_usage=usage)
    table = build_cert_table([(GUID_ASK, der(bad)), (GUID_VCEK, sim.leaf.der)])
    err = rejected(trust, report, table)
    assert (err.category, err.rule) == (Category.CHAIN_UNTRUSTED, rule)
    good = build_cert_table([(GUID_ASK, der(ca.ask)), (GUID_VCEK, sim.leaf.der)])
    assert verify(trust, report, good).insecure_root
