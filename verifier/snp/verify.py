"""SEV-SNP report verification: structure, endorsement chain, certificate-vs-report match and
the report signature, producing ``SnpClaims`` (evidence-formats.md section 1.12 steps 1-7).

Invariants:
- Structural problems (report or certificate table) are ``Malformed``; an unsigned report
  (SIGNING_KEY NONE or MASK_CHIP_KEY) and a signature that does not verify are
  ``SignatureInvalid``; chain, certificate, extension, product and key-type problems are
  ``ChainUntrusted``; a VCEK/VLEK that is not in the evidence or the collateral cache, a stale
  CRL, or a missing ARK CRL without ``allow_missing_crl`` is ``CollateralStale``. With
  ``allow_missing_crl`` a missing CRL is named in ``SnpClaims.collateral_warnings`` (the
  policy's ``allow_missing_crl`` then decides); a CRL that fails its signature never counts
  as missing (``ChainUntrusted``).
- An ARK carried in the certificate table is accepted only if it is byte-equal to a configured
  ARK; roots are never taken from evidence.
- The endorsement key's SPLs equal REPORTED_TCB (layout of its product), a VCEK's hwID equals
  CHIP_ID (Turin: CHIP_ID[0:8]), the product agrees with CPUID (v3+) or productName (v2).
- The report signature is checked over the received bytes 0x000..0x29F, r/s little-endian.
"""

from __future__ import annotations

import logging
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import ChainUntrusted, CollateralStale, KeybrokerError, SignatureInvalid
from keybroker.evidence.snp_certs import GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, parse_cert_table
from keybroker.evidence.snp_report import (
    SIGNING_KEY_NONE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    SnpReport,
    parse_report,
)
from verifier.collateral.cache import CollateralStore
from verifier.pki import CacheStats, Certificate
from verifier.snp.chain import ChainValidator, EndorsementKey
from verifier.snp.claims import FirmwareVersion, GuestPolicy, PlatformInfo, SnpClaims
from verifier.snp.tcb import TcbVersion, product_from_cpuid
from verifier.snp.trust import AmdTrustStore, KeyKind

_log = logging.getLogger(__name__)


class SnpVerifier:
    """Verifies SEV-SNP reports; holds the caches, so keep one per process."""

    def __init__(self, trust: AmdTrustStore, collateral: CollateralStore | None = None) -> None:
        self._trust = trust
        self._collateral = collateral if collateral is not None else CollateralStore.empty()
        self._chains = ChainValidator(trust, self._collateral)

    @property
    def cache_stats(self) -> CacheStats:
        """Counters of the chain cache (certificate signatures verified vs reused)."""
        return self._chains.stats

    def verify(self, report: bytes, cert_table: bytes = b"", *, at: datetime,
               allow_missing_crl: bool = False) -> SnpClaims:
        """Verify ``report`` (1184 bytes) with an optional GHCB certificate table at time
        ``at`` (timezone-aware); returns the claims or raises a typed error."""
        if at.tzinfo is None:
            raise ValueError("verification time must be timezone-aware")
        parsed = parse_report(report)
        if parsed.signing_key == SIGNING_KEY_NONE or parsed.mask_chip_key:
            raise SignatureInvalid("report is unsigned", rule="signing-key",
                                   expected="signed by a VCEK or VLEK",
                                   actual=f"SIGNING_KEY={parsed.signing_key} "
                                          f"MASK_CHIP_KEY={int(parsed.mask_chip_key)}")
        table = parse_cert_table(cert_table)
        ark = table.get(GUID_ARK)
        if ark is not None and not self._trust.is_pinned_root(ark):
            raise ChainUntrusted("the evidence carries a root that is not a configured ARK",
                                 rule="root", expected="a pinned ARK or none",
                                 actual=f"{len(ark)}-byte certificate")
        kind: KeyKind = "vcek" if parsed.signing_key == SIGNING_KEY_VCEK else "vlek"
        product = self._product_from_cpuid(parsed)
        evidence_certs = [self._chains.certificate(der)
                          for der in (table.get(GUID_ASK),) if der is not None]
        leaves = self._leaf_candidates(parsed, kind, table.get(GUID_VCEK), table.get(GUID_VLEK))
        first_error: KeybrokerError | None = None
        for leaf in leaves:
            try:
                key = self._chains.validate(leaf, kind=kind, product=product,
                                            evidence_certs=evidence_certs, at=at,
                                            allow_missing_crl=allow_missing_crl)
                _match_report(key, parsed)
                _check_signature(key.public_key, parsed)
            except KeybrokerError as exc:
                first_error = first_error or exc
                continue
            _log.info("SNP report verified: product=%s key=%s signer=%s insecure=%s",
                      key.product, kind, key.leaf.fingerprint[:16], key.insecure)
            return _claims(parsed, key)
        assert first_error is not None
        raise first_error

    @staticmethod
    def _product_from_cpuid(report: SnpReport) -> str | None:
        if not report.has_cpuid or (report.cpuid_fam_id, report.cpuid_mod_id) == (0, 0):
            return None
        product = product_from_cpuid(report.cpuid_fam_id, report.cpuid_mod_id)
        if product is None:
            raise ChainUntrusted("the report's CPUID names an unsupported product",
                                 rule="product", expected="Milan | Genoa | Turin",
                                 actual=f"family {report.cpuid_fam_id:#x} "
                                        f"model {report.cpuid_mod_id:#x}")
        return product

    def _leaf_candidates(self, report: SnpReport, kind: KeyKind, vcek: bytes | None,
                         vlek: bytes | None) -> list[Certificate]:
        wanted, other = (vcek, vlek) if kind == "vcek" else (vlek, vcek)
        if wanted is not None:
            return [self._chains.certificate(wanted)]
        if kind == "vcek":
            found = self._collateral.vceks_for(report.chip_id, report.reported_tcb)
        else:
            found = self._collateral.vleks_for(report.reported_tcb)
        if found:
            return found
        if other is not None:
            raise ChainUntrusted("the evidence carries an endorsement key of the other type",
                                 rule="key-type", expected=kind.upper(),
                                 actual="VLEK" if kind == "vcek" else "VCEK")
        if kind == "vcek":
            raise _no_vcek(report, self._collateral.vcek_mismatches(report.chip_id,
                                                                    report.reported_tcb))
        raise CollateralStale("no VLEK for this report in the evidence or the collateral cache",
                              rule="collateral",
                              expected=f"VLEK at TCB {report.reported_tcb.hex()}",
                              actual="none found")


def _no_vcek(report: SnpReport, mismatches: list[str]) -> CollateralStale:
    """COLLATERAL_STALE naming why the VCEKs at hand do not fit (chip or TCB), if any."""
    expected = (f"VCEK for CHIP_ID {report.chip_id.hex()[:16]}… at TCB "
                f"{report.reported_tcb.hex()}")
    if not mismatches:
        return CollateralStale("no VCEK for this report in the evidence or the collateral cache",
                               rule="collateral", expected=expected, actual="none found")
    same_chip = any(m.startswith("this chip") for m in mismatches)
    reason = ("the collateral's VCEK for this chip is for another TCB" if same_chip else
              "the collateral's VCEKs are for other chips (hwID differs from CHIP_ID)")
    return CollateralStale(reason, rule="collateral", expected=expected,
                           actual="; ".join(mismatches[:4]))


def _match_report(key: EndorsementKey, report: SnpReport) -> None:
    """Certificate extensions against the report (SPLs, hwID)."""
    mismatches = key.extensions.spl_mismatches(report.reported_tcb)
    if mismatches:
        raise ChainUntrusted(f"{key.kind.upper()} TCB does not equal REPORTED_TCB",
                             rule="tcb-extensions", expected=report.reported_tcb.hex(),
                             actual="; ".join(mismatches))
    hw_id = key.extensions.hw_id
    if key.kind == "vcek" and hw_id is not None:
        chip = report.chip_id[:8] if key.product == "Turin" else report.chip_id
        if hw_id != chip:
            raise ChainUntrusted("VCEK hwID does not equal CHIP_ID", rule="hwid",
                                 expected=chip.hex(), actual=hw_id.hex())
    expected_key = SIGNING_KEY_VCEK if key.kind == "vcek" else SIGNING_KEY_VLEK
    if report.signing_key != expected_key:  # defensive: the kind was chosen from the report
        raise ChainUntrusted("endorsement key type does not match SIGNING_KEY", rule="key-type")


def _check_signature(public_key: ec.EllipticCurvePublicKey, report: SnpReport) -> None:
    der = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        public_key.verify(der, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise SignatureInvalid("report signature does not verify under the endorsement key",
                               rule="report-signature") from exc


def _claims(report: SnpReport, key: EndorsementKey) -> SnpClaims:
    product = key.product
    v5 = report.version >= 5
    return SnpClaims(
        version=report.version,
        product=product,
        signing_key=key.kind,
        measurement=report.measurement,
        host_data=report.host_data,
        report_data=report.report_data,
        family_id=report.family_id,
        image_id=report.image_id,
        guest_svn=report.guest_svn,
        policy=GuestPolicy(report.policy),
        vmpl=report.vmpl,
        platform_info=PlatformInfo(report.platform_info),
        reported_tcb=TcbVersion.decode(report.reported_tcb, product),
        committed_tcb=TcbVersion.decode(report.committed_tcb, product),
        current_tcb=TcbVersion.decode(report.current_tcb, product),
        launch_tcb=TcbVersion.decode(report.launch_tcb, product),
        chip_id=report.chip_id,
        id_key_digest=report.id_key_digest,
        author_key_digest=report.author_key_digest,
        author_key_en=report.author_key_en,
        report_id=report.report_id,
        report_id_ma=report.report_id_ma,
        current_firmware=FirmwareVersion(report.current_major, report.current_minor,
                                         report.current_build),
        committed_firmware=FirmwareVersion(report.committed_major, report.committed_minor,
                                           report.committed_build),
        launch_mit_vector=report.launch_mit_vector if v5 else None,
        current_mit_vector=report.current_mit_vector if v5 else None,
        cpuid=(report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step)
        if report.has_cpuid else None,
        csp_id=key.extensions.csp_id,
        signer_fingerprint=key.leaf.fingerprint,
        insecure_root=key.insecure,
        collateral_warnings=(key.crl_warning,) if key.crl_warning else (),
    )
