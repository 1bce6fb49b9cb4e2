"""AMD SEV-SNP ATTESTATION_REPORT layout (evidence-formats.md section 1.1), in construct.

Invariants enforced by ``parse_report``:
- exactly 0x4A0 bytes; VERSION in {2, 3, 4, 5}; SIGNATURE_ALGO == 1 (ECDSA P-384/SHA-384);
- every reserved (must-be-zero) range for that version is zero, including the unused high
  bytes of the little-endian R and S fields and the signature's reserved tail;
- GUEST_POLICY bit 17 is 1 and bits 26..63 are 0; SIGNER_INFO bits 5..31 are 0 and
  SIGNING_KEY is VCEK (0), VLEK (1) or NONE (7); PLATFORM_INFO bit 6 and bits 8..63 are 0.
Any violation raises ``Malformed`` (only ``Malformed``, whatever the input bytes).
``build_report`` is the exact inverse (used by the simulator and by round-trip tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import construct as c

from keybroker.errors import Malformed
from keybroker.evidence.content import refuse_foreign

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_COMPONENT_SIZE = 72
SIG_SIGNIFICANT = 48
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

POLICY_SMT = 1 << 16
POLICY_RESERVED_1 = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
_POLICY_MBZ = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF
_SIGNER_INFO_MBZ = ~0x1F & 0xFFFF_FFFF
_PLATFORM_INFO_MBZ = ~0xBF & 0xFFFF_FFFF_FFFF_FFFF

_LAYOUT = c.Struct(
    "version" / c.Int32ul,
    "guest_svn" / c.Int32ul,
    "policy" / c.Int64ul,
    "family_id" / c.Bytes(16),
    "image_id" / c.Bytes(16),
    "vmpl" / c.Int32ul,
    "signature_algo" / c.Int32ul,
    "current_tcb" / c.Bytes(8),
    "platform_info" / c.Int64ul,
    "signer_info" / c.Int32ul,
    "reserved_04c" / c.Bytes(4),
    "report_data" / c.Bytes(64),
    "measurement" / c.Bytes(48),
    "host_data" / c.Bytes(32),
    "id_key_digest" / c.Bytes(48),
    "author_key_digest" / c.Bytes(48),
    "report_id" / c.Bytes(32),
    "report_id_ma" / c.Bytes(32),
    "reported_tcb" / c.Bytes(8),
    "cpuid_fam_id" / c.Int8ul,
    "cpuid_mod_id" / c.Int8ul,
    "cpuid_step" / c.Int8ul,
    "reserved_18b" / c.Bytes(21),
    "chip_id" / c.Bytes(64),
    "committed_tcb" / c.Bytes(8),
    "current_build" / c.Int8ul,
    "current_minor" / c.Int8ul,
    "current_major" / c.Int8ul,
    "reserved_1eb" / c.Bytes(1),
    "committed_build" / c.Int8ul,
    "committed_minor" / c.Int8ul,
    "committed_major" / c.Int8ul,
    "reserved_1ef" / c.Bytes(1),
    "launch_tcb" / c.Bytes(8),
    "launch_mit_vector" / c.Int64ul,
    "current_mit_vector" / c.Int64ul,
    "reserved_208" / c.Bytes(SIGNED_SIZE - 0x208),
    "signature_r" / c.Bytes(SIG_COMPONENT_SIZE),
    "signature_s" / c.Bytes(SIG_COMPONENT_SIZE),
    "reserved_330" / c.Bytes(REPORT_SIZE - 0x330),
)
assert _LAYOUT.sizeof() == REPORT_SIZE


@dataclass(frozen=True)
class SnpReport:
    """Every field of a parsed report. TCB fields are the raw 8 bytes (layout depends on
    the product; see verifier.snp.tcb). ``signed_bytes`` is report[0:0x2A0] as received."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: bytes
    launch_mit_vector: int
    current_mit_vector: int
    signature_r: int
    signature_s: int
    signed_bytes: bytes = dataclasses.field(repr=False, default=b"")

    @property
    def signing_key(self) -> int:
        """SIGNER_INFO bits 4:2: 0 VCEK, 1 VLEK, 7 NONE."""
        return (self.signer_info >> 2) & 0x7

    @property
    def author_key_en(self) -> bool:
        """SIGNER_INFO bit 0."""
        return bool(self.signer_info & 0x1)

    @property
    def mask_chip_key(self) -> bool:
        """SIGNER_INFO bit 1: the firmware did not sign the report."""
        return bool(self.signer_info & 0x2)

    @property
    def has_cpuid(self) -> bool:
        """Version 3 and later carry CPUID family/model/stepping."""
        return self.version >= 3

    def with_changes(self, **changes: object) -> SnpReport:
        """A copy with fields replaced (simulator and tests); signed_bytes is recomputed."""
        updated = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(updated, signed_bytes=build_report(updated)[:SIGNED_SIZE])


def _zero(raw: bytes, start: int, end: int, what: str) -> None:
    chunk = raw[start:end]
    if any(chunk):
        raise Malformed(f"reserved bytes {what} (0x{start:03X}..0x{end - 1:03X}) are not zero",
                        expected="all zero", actual=chunk.hex())


def parse_report(raw: bytes) -> SnpReport:
    """Parse and structurally validate an SNP report; raises only ``Malformed``."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise Malformed("SNP report must be bytes", expected="bytes", actual=type(raw).__name__)
    raw = bytes(raw)
    if len(raw) != REPORT_SIZE or int.from_bytes(raw[:4], "little") not in SUPPORTED_VERSIONS:
        refuse_foreign(raw, f"a binary SNP attestation report ({REPORT_SIZE} bytes)")
    if len(raw) != REPORT_SIZE:
        raise Malformed("SNP report has the wrong size", expected=f"{REPORT_SIZE} bytes",
                        actual=f"{len(raw)} bytes")
    f = _LAYOUT.parse(raw)
    if f.version not in SUPPORTED_VERSIONS:
        raise Malformed("unsupported SNP report version",
                        expected=f"one of {SUPPORTED_VERSIONS}", actual=str(f.version))
    if f.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise Malformed("unsupported SNP signature algorithm",
                        expected="1 (ECDSA P-384 with SHA-384)", actual=str(f.signature_algo))
    if not f.policy & POLICY_RESERVED_1:
        raise Malformed("guest policy bit 17 must be 1", expected="1", actual="0")
    if f.policy & _POLICY_MBZ:
        raise Malformed("guest policy reserved bits 26..63 are set", expected="0",
                        actual=hex(f.policy & _POLICY_MBZ))
    if f.signer_info & _SIGNER_INFO_MBZ:
        raise Malformed("signer info reserved bits 5..31 are set", expected="0",
                        actual=hex(f.signer_info & _SIGNER_INFO_MBZ))
    signing_key = (f.signer_info >> 2) & 0x7
    if signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SIGNING_KEY_NONE):
        raise Malformed("reserved SIGNING_KEY value", expected="0 (VCEK), 1 (VLEK) or 7 (NONE)",
                        actual=str(signing_key))
    if f.platform_info & _PLATFORM_INFO_MBZ:
        raise Malformed("platform info reserved bits are set", expected="bits 6 and 8..63 zero",
                        actual=hex(f.platform_info))
    if f.vmpl > 3:
        raise Malformed("VMPL out of range", expected="0..3", actual=str(f.vmpl))
    _zero(raw, 0x04C, 0x050, "after SIGNER_INFO")
    _zero(raw, 0x188 if f.version == 2 else 0x18B, 0x1A0, "after REPORTED_TCB")
    _zero(raw, 0x1EB, 0x1EC, "after CURRENT_MAJOR")
    _zero(raw, 0x1EF, 0x1F0, "after COMMITTED_MAJOR")
    _zero(raw, 0x208 if f.version >= 5 else 0x1F8, SIGNED_SIZE, "before the signature")
    _zero(raw, 0x2A0 + SIG_SIGNIFICANT, 0x2E8, "high bytes of SIGNATURE.R")
    _zero(raw, 0x2E8 + SIG_SIGNIFICANT, 0x330, "high bytes of SIGNATURE.S")
    _zero(raw, 0x330, REPORT_SIZE, "signature reserved area")
    return SnpReport(
        version=f.version,
        guest_svn=f.guest_svn,
        policy=f.policy,
        family_id=f.family_id,
        image_id=f.image_id,
        vmpl=f.vmpl,
        signature_algo=f.signature_algo,
        current_tcb=f.current_tcb,
        platform_info=f.platform_info,
        signer_info=f.signer_info,
        report_data=f.report_data,
        measurement=f.measurement,
        host_data=f.host_data,
        id_key_digest=f.id_key_digest,
        author_key_digest=f.author_key_digest,
        report_id=f.report_id,
        report_id_ma=f.report_id_ma,
        reported_tcb=f.reported_tcb,
        cpuid_fam_id=f.cpuid_fam_id,
        cpuid_mod_id=f.cpuid_mod_id,
        cpuid_step=f.cpuid_step,
        chip_id=f.chip_id,
        committed_tcb=f.committed_tcb,
        current_build=f.current_build,
        current_minor=f.current_minor,
        current_major=f.current_major,
        committed_build=f.committed_build,
        committed_minor=f.committed_minor,
        committed_major=f.committed_major,
        launch_tcb=f.launch_tcb,
        launch_mit_vector=f.launch_mit_vector,
        current_mit_vector=f.current_mit_vector,
        signature_r=int.from_bytes(f.signature_r, "little"),
        signature_s=int.from_bytes(f.signature_s, "little"),
        signed_bytes=raw[:SIGNED_SIZE],
    )


def build_report(report: SnpReport) -> bytes:
    """Serialize ``report`` to its exact 0x4A0 bytes (reserved areas zero)."""
    fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    fields.pop("signed_bytes")
    fields["signature_r"] = report.signature_r.to_bytes(SIG_COMPONENT_SIZE, "little")
    fields["signature_s"] = report.signature_s.to_bytes(SIG_COMPONENT_SIZE, "little")
    fields["reserved_04c"] = bytes(4)
    fields["reserved_18b"] = bytes(21)
    fields["reserved_1eb"] = bytes(1)
    fields["reserved_1ef"] = bytes(1)
    fields["reserved_208"] = bytes(SIGNED_SIZE - 0x208)
    fields["reserved_330"] = bytes(REPORT_SIZE - 0x330)
    try:
        out: bytes = _LAYOUT.build(fields)
    except (c.ConstructError, OverflowError, TypeError) as exc:
        raise Malformed(f"cannot build SNP report: {exc}") from exc
    return out
