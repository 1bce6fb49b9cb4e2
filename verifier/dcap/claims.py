"""Typed claims of a verified Intel DCAP quote (TDX v4/v5, SGX v3).

Invariants:
- A ``TdxClaims`` / ``SgxClaims`` value exists only for a quote whose signature verified under
  an attestation key bound (QE report data) to a QE report signed by a PCK key that chained to
  a pinned Intel root (or, with the insecure flag, a simulator root), and whose QE identity and
  TCB level were evaluated against signed, current collateral. Appraisal consumes claims, never
  raw quote bytes.
- ``DcapTcbClaims.collateral_warnings`` names every revocation list that was explicitly allowed
  to be missing; it is empty when all collateral was present. Appraisal refuses a non-empty
  list unless the policy allows missing CRLs.
- ``TdEventClaims`` exist only after the CCEL and the runtime log replayed to the quoted RTMRs.
- ``as_dict`` is JSON-able (bytes as lowercase hex, times as RFC 3339 UTC) and is what goes
  into result tokens and ``keybroker verify`` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from verifier.eventlog.measured import TdEventClaims

TD_ATTRIBUTE_BITS = {
    0: "debug",
    4: "hgs_plus_prof",
    5: "perf_prof",
    6: "pmt_prof",
    16: "icssd",
    17: "servtd_ext",
    27: "lass",
    28: "sept_ve_disable",
    29: "migratable",
    30: "pks",
    31: "kl",
    62: "tpa",
    63: "perfmon",
}
SGX_FLAG_DEBUG = 1 << 1
PLATFORM_TDX = "tdx"
PLATFORM_SGX = "sgx"


def rfc3339(value: datetime) -> str:
    """``2025-01-02T03:04:05Z`` for an aware UTC datetime."""
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class TdAttributes:
    """Decoded TDATTRIBUTES (evidence-formats.md section 2.4)."""

    raw: int

    def bit(self, name: str) -> bool:
        """Whether the named bit is set (names from ``TD_ATTRIBUTE_BITS``)."""
        for index, bit_name in TD_ATTRIBUTE_BITS.items():
            if bit_name == name:
                return bool(self.raw >> index & 1)
        raise KeyError(name)

    @property
    def debug(self) -> bool:
        return bool(self.raw & 1)

    @property
    def unknown_bits(self) -> int:
        """Set bits that have no name (reserved or not yet defined)."""
        known = sum(1 << i for i in TD_ATTRIBUTE_BITS)
        return self.raw & ~known

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"raw": f"{self.raw:016x}"}
        for index, name in TD_ATTRIBUTE_BITS.items():
            out[name] = bool(self.raw >> index & 1)
        out["unknown_bits"] = f"{self.unknown_bits:016x}"
        return out


@dataclass(frozen=True)
class DcapTcbClaims:
    """The platform's TCB evaluation against Intel's (or the simulator's) signed collateral."""

    status: str  # Intel's spelling: "UpToDate", "OutOfDate", "SWHardeningNeeded", ...
    advisory_ids: tuple[str, ...]
    tcb_date: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    sgx_status: str
    tdx_status: str | None
    module_status: str | None
    qe_status: str
    collateral_warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "advisory_ids": list(self.advisory_ids),
            "tcb_date": rfc3339(self.tcb_date),
            "fmspc": self.fmspc.hex(),
            "pce_id": self.pce_id.hex(),
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
            "sgx_status": self.sgx_status,
            "tdx_status": self.tdx_status,
            "module_status": self.module_status,
            "qe_status": self.qe_status,
            "collateral_warnings": list(self.collateral_warnings),
        }


@dataclass(frozen=True)
class TdxClaims:
    """Everything a verified TDX quote says, typed."""

    version: int  # quote version, 4 or 5
    body_type: int  # 2 = TD report 1.0, 3 = TD report 1.5
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: TdAttributes
    xfam: int
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mr_service_td: bytes | None
    tcb: DcapTcbClaims
    insecure_root: bool = False
    events: TdEventClaims | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims (used in tokens and ``keybroker verify``)."""
        return {
            "platform": PLATFORM_TDX,
            "version": self.version,
            "body_type": self.body_type,
            "tee_tcb_svn": self.tee_tcb_svn.hex(),
            "mr_seam": self.mr_seam.hex(),
            "mr_signer_seam": self.mr_signer_seam.hex(),
            "seam_attributes": self.seam_attributes.hex(),
            "td_attributes": self.td_attributes.as_dict(),
            "xfam": f"{self.xfam:016x}",
            "mr_td": self.mr_td.hex(),
            "mr_config_id": self.mr_config_id.hex(),
            "mr_owner": self.mr_owner.hex(),
            "mr_owner_config": self.mr_owner_config.hex(),
            "rtmr0": self.rtmrs[0].hex(),
            "rtmr1": self.rtmrs[1].hex(),
            "rtmr2": self.rtmrs[2].hex(),
            "rtmr3": self.rtmrs[3].hex(),
            "report_data": self.report_data.hex(),
            "tee_tcb_svn2": self.tee_tcb_svn2.hex() if self.tee_tcb_svn2 is not None else None,
            "mr_service_td": (self.mr_service_td.hex() if self.mr_service_td is not None
                              else None),
            "tcb": self.tcb.as_dict(),
            "insecure_root": self.insecure_root,
            "events": self.events.as_dict() if self.events is not None else None,
        }


@dataclass(frozen=True)
class SgxClaims:
    """Everything a verified SGX quote says about the enclave, typed."""

    version: int
    cpu_svn: bytes
    misc_select: int
    attributes: bytes  # 16 bytes: FLAGS (u64 LE) || XFRM (u64 LE)
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    config_id: bytes
    config_svn: int
    isv_family_id: bytes
    isv_ext_prod_id: bytes
    report_data: bytes
    tcb: DcapTcbClaims
    insecure_root: bool = False

    @property
    def flags(self) -> int:
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        return bool(self.flags & SGX_FLAG_DEBUG)

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims (used in tokens and ``keybroker verify``)."""
        return {
            "platform": PLATFORM_SGX,
            "version": self.version,
            "cpu_svn": self.cpu_svn.hex(),
            "misc_select": f"{self.misc_select:08x}",
            "attributes": self.attributes.hex(),
            "debug": self.debug,
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "config_id": self.config_id.hex(),
            "config_svn": self.config_svn,
            "isv_family_id": self.isv_family_id.hex(),
            "isv_ext_prod_id": self.isv_ext_prod_id.hex(),
            "report_data": self.report_data.hex(),
            "tcb": self.tcb.as_dict(),
            "insecure_root": self.insecure_root,
        }
