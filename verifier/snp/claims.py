"""Typed claims of a verified SEV-SNP report.

Invariants: an ``SnpClaims`` value exists only for a report whose signature verified under a
VCEK/VLEK that chained to a pinned (or, with the insecure flag, simulator) root and whose
certificate extensions matched the report. Appraisal consumes claims, never raw bytes.
``collateral_warnings`` names every revocation list the verification was explicitly allowed to
go without; appraisal refuses such claims unless the policy allows missing CRLs.
"""

from __future__ import annotations

from dataclasses import dataclass

from verifier.snp.tcb import TcbVersion

PLATFORM_SNP = "sev-snp"


@dataclass(frozen=True)
class GuestPolicy:
    """Decoded GUEST_POLICY (section 1.2)."""

    raw: int

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.raw >> 8) & 0xFF

    @property
    def smt(self) -> bool:
        return bool(self.raw >> 16 & 1)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.raw >> 18 & 1)

    @property
    def debug(self) -> bool:
        return bool(self.raw >> 19 & 1)

    @property
    def single_socket(self) -> bool:
        return bool(self.raw >> 20 & 1)

    def as_dict(self) -> dict[str, object]:
        names = ("cxl_allow", "mem_aes_256_xts", "rapl_dis", "ciphertext_hiding",
                 "page_swap_disable")
        out: dict[str, object] = {
            "raw": hex(self.raw), "abi_major": self.abi_major, "abi_minor": self.abi_minor,
            "smt": self.smt, "migrate_ma": self.migrate_ma, "debug": self.debug,
            "single_socket": self.single_socket,
        }
        for bit, name in enumerate(names, start=21):
            out[name] = bool(self.raw >> bit & 1)
        return out


@dataclass(frozen=True)
class PlatformInfo:
    """Decoded PLATFORM_INFO (section 1.3)."""

    raw: int

    @property
    def smt_enabled(self) -> bool:
        return bool(self.raw & 1)

    def as_dict(self) -> dict[str, object]:
        names = ("smt_en", "tsme_en", "ecc_en", "rapl_dis", "ciphertext_hiding_en",
                 "alias_check_complete")
        out: dict[str, object] = {"raw": hex(self.raw)}
        for bit, name in enumerate(names):
            out[name] = bool(self.raw >> bit & 1)
        out["sev_tio_en"] = bool(self.raw >> 7 & 1)
        return out


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True)
class SnpClaims:
    """Everything a verified report says, typed."""

    version: int
    product: str
    signing_key: str  # "vcek" | "vlek"
    measurement: bytes
    host_data: bytes
    report_data: bytes
    family_id: bytes
    image_id: bytes
    guest_svn: int
    policy: GuestPolicy
    vmpl: int
    platform_info: PlatformInfo
    reported_tcb: TcbVersion
    committed_tcb: TcbVersion
    current_tcb: TcbVersion
    launch_tcb: TcbVersion
    chip_id: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    author_key_en: bool
    report_id: bytes
    report_id_ma: bytes
    current_firmware: FirmwareVersion
    committed_firmware: FirmwareVersion
    launch_mit_vector: int | None  # v5 only
    current_mit_vector: int | None  # v5 only
    cpuid: tuple[int, int, int] | None  # (family, model, stepping), v3+
    csp_id: str | None  # VLEK only
    signer_fingerprint: str  # SHA-256 hex of the VCEK/VLEK DER
    insecure_root: bool  # True when the chain ended at a simulator (test) root
    collateral_warnings: tuple[str, ...] = ()  # e.g. "ARK-Milan CRL missing" (allowed)

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims, bytes as lowercase hex (used in tokens and `keybroker verify`)."""
        return {
            "platform": PLATFORM_SNP,
            "version": self.version,
            "product": self.product,
            "signing_key": self.signing_key,
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "report_data": self.report_data.hex(),
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "guest_svn": self.guest_svn,
            "policy": self.policy.as_dict(),
            "vmpl": self.vmpl,
            "platform_info": self.platform_info.as_dict(),
            "reported_tcb": self.reported_tcb.as_dict(),
            "committed_tcb": self.committed_tcb.as_dict(),
            "current_tcb": self.current_tcb.as_dict(),
            "launch_tcb": self.launch_tcb.as_dict(),
            "chip_id": self.chip_id.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "author_key_en": self.author_key_en,
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "current_firmware": str(self.current_firmware),
            "committed_firmware": str(self.committed_firmware),
            "launch_mit_vector": self.launch_mit_vector,
            "current_mit_vector": self.current_mit_vector,
            "cpuid": list(self.cpuid) if self.cpuid else None,
            "csp_id": self.csp_id,
            "signer_fingerprint": self.signer_fingerprint,
            "insecure_root": self.insecure_root,
            "collateral_warnings": list(self.collateral_warnings),
        }
