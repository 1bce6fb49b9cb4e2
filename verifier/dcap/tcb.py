"""TCB level matching and status convergence for SGX and TDX (evidence-formats.md sections 2.9
steps 5, 6, 9, 11, 2.10 and 3.3, following Intel's reference verification semantics).

Invariants:
- Inputs are plain typed values (SVN tuples, byte strings) taken from the PCK certificate and
  the quote, never from the caller's choice of collateral: SGX components and PCESVN come from
  the PCK certificate. The collateral must be for this platform (same FMSPC and PCE-ID, TCB Info
  id TDX for TDX and SGX for SGX, QE identity id TD_QE / QE) or the call is ``CollateralStale``.
- The platform level is the FIRST level (collateral order, newest first) whose 16 SGX SVNs and
  PCESVN are all >= the level's; for TDX the TDX level is the first that additionally has every
  TEE_TCB_SVN[i] >= tdxtcbcomponents[i] (i = 0 and 1 skipped when TEE_TCB_SVN[1] > 0, the module
  then being rated by its identity). No such level -> ``TcbPolicyViolation`` (TCB_NOT_SUPPORTED).
- TDX module identity: TDX_%02X of TEE_TCB_SVN[1] (tdxModule for 0); MRSIGNERSEAM must equal its
  mrsigner, SEAMATTRIBUTES must be zero and match under the mask; the module level is the first
  with isvsvn <= TEE_TCB_SVN[0]. Any failure -> ``TcbPolicyViolation``.
- QE identity mismatches (MISCSELECT, ATTRIBUTES under mask, MRSIGNER, ISVPRODID) are
  ``ChainUntrusted``; a QE ISVSVN below every level is ``TcbPolicyViolation``.
- Statuses converge as in section 2.10 (module, then QE); a final Revoked is
  ``TcbPolicyViolation``. Which non-Revoked statuses and advisories are acceptable is policy,
  decided by the caller from ``TcbResult``. The TDX 1.5 "relaunch advised" refinement is not
  applied (such platforms report OutOfDate).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from keybroker.errors import ChainUntrusted, CollateralStale, Malformed, TcbPolicyViolation
from keybroker.evidence.sgx_extensions import SgxExtensions
from verifier.dcap.schema import (
    EnclaveIdentity,
    IsvTcbLevel,
    TcbInfo,
    TcbLevel,
    TcbStatus,
    TdxModule,
)

S = TcbStatus
_HARDENING_OR_OK = (S.UP_TO_DATE, S.SW_HARDENING_NEEDED)
_CONFIG = (S.CONFIGURATION_NEEDED, S.CONFIGURATION_AND_SW_HARDENING_NEEDED)


@dataclass(frozen=True)
class PlatformTcb:
    """The PCK certificate's TCB values."""

    sgx_svns: tuple[int, ...]
    pcesvn: int
    fmspc: bytes
    pce_id: bytes

    @classmethod
    def from_extensions(cls, ext: SgxExtensions) -> PlatformTcb:
        """From a decoded PCK SGX extension."""
        return cls(sgx_svns=ext.sgx_tcb_svns, pcesvn=ext.pcesvn, fmspc=ext.fmspc,
                   pce_id=ext.pce_id)


@dataclass(frozen=True)
class TdxTcb:
    """TD report values used for TCB evaluation."""

    tee_tcb_svn: bytes
    mrsignerseam: bytes
    seam_attributes: bytes


@dataclass(frozen=True)
class QeReport:
    """QE report values checked against the QE identity (MISCSELECT as the u32 it is)."""

    miscselect: int
    attributes: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int


@dataclass(frozen=True)
class QeResult:
    """The QE identity's verdict for one QE report."""

    identity_id: str
    status: TcbStatus
    tcb_date: datetime
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TcbResult:
    """Converged TCB status of a platform (never Revoked; no match is an error)."""

    tee: Literal["SGX", "TDX"]
    status: TcbStatus
    advisory_ids: tuple[str, ...]
    tcb_date: datetime
    fmspc: bytes
    tcb_evaluation_data_number: int
    sgx_status: TcbStatus
    tdx_status: TcbStatus | None
    module_status: TcbStatus | None
    qe_status: TcbStatus | None


def converge(level: TcbStatus, other: TcbStatus | None) -> TcbStatus:
    """Combine a platform level status with a module or QE status (section 2.10 steps 3, 5)."""
    if other is S.REVOKED:
        return S.REVOKED
    if other is S.OUT_OF_DATE:
        if level in _HARDENING_OR_OK:
            return S.OUT_OF_DATE
        if level in _CONFIG:
            return S.OUT_OF_DATE_CONFIGURATION_NEEDED
    return level


def _merge(*groups: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out.extend(a for a in group if a not in out)
    return tuple(out)


def _check_collateral(info: TcbInfo, platform: PlatformTcb, tee: str) -> None:
    if info.id != tee:
        raise CollateralStale("TCB Info is for another TEE", rule="tcb-info-id", expected=tee,
                              actual=info.id)
    if info.fmspc != platform.fmspc or info.pce_id != platform.pce_id:
        raise CollateralStale("TCB Info is for another platform", rule="fmspc",
                              expected=f"fmspc {platform.fmspc.hex()} pceId "
                                       f"{platform.pce_id.hex()}",
                              actual=f"fmspc {info.fmspc.hex()} pceId {info.pce_id.hex()}")
    if len(platform.sgx_svns) != 16:
        raise Malformed("PCK TCB must have 16 SVNs", actual=str(len(platform.sgx_svns)))


def _sgx_ok(level: TcbLevel, platform: PlatformTcb) -> bool:
    return (all(have >= need for have, need in zip(platform.sgx_svns, level.sgx_svns, strict=True))
            and platform.pcesvn >= level.pcesvn)


def _first_sgx(info: TcbInfo, platform: PlatformTcb) -> TcbLevel:
    for level in info.tcb_levels:
        if _sgx_ok(level, platform):
            return level
    raise TcbPolicyViolation("no TCB level matches the PCK certificate (TCB_NOT_SUPPORTED)",
                             rule="tcb-level",
                             expected="SGX SVNs and PCESVN >= some level's",
                             actual=f"svns {list(platform.sgx_svns)} pcesvn {platform.pcesvn}")


def _finish(tee: Literal["SGX", "TDX"], info: TcbInfo, level: TcbLevel, status: TcbStatus, *,
            sgx: TcbLevel, module: IsvTcbLevel | None, qe: QeResult | None) -> TcbResult:
    final = converge(status, qe.status if qe else None)
    advisories = _merge(level.advisory_ids, module.advisory_ids if module else (),
                        qe.advisory_ids if qe else ())
    if final is S.REVOKED:
        raise TcbPolicyViolation(f"{tee} TCB is revoked", rule="tcb-status",
                                 expected="not Revoked",
                                 actual=f"Revoked (advisories {', '.join(advisories) or '-'})")
    return TcbResult(tee=tee, status=final, advisory_ids=advisories, tcb_date=level.tcb_date,
                     fmspc=info.fmspc,
                     tcb_evaluation_data_number=info.tcb_evaluation_data_number,
                     sgx_status=sgx.status,
                     tdx_status=level.status if tee == "TDX" else None,
                     module_status=module.status if module else None,
                     qe_status=qe.status if qe else None)


def evaluate_sgx(info: TcbInfo, platform: PlatformTcb, *, qe: QeResult | None) -> TcbResult:
    """TCB status of an SGX platform; ``qe`` None evaluates the platform TCB only."""
    _check_collateral(info, platform, "SGX")
    level = _first_sgx(info, platform)
    return _finish("SGX", info, level, level.status, sgx=level, module=None, qe=qe)


def _module_identity(info: TcbInfo, td: TdxTcb) -> TdxModule:
    version = td.tee_tcb_svn[1]
    if version == 0:
        assert info.tdx_module is not None  # schema: TDX TCB Info carries tdxModule
        return info.tdx_module
    wanted = f"TDX_{version:02X}"
    for module in info.tdx_module_identities:
        if module.id.upper() == wanted:
            return module
    raise TcbPolicyViolation("no TDX module identity for the running module", rule="tdx-module",
                             expected=wanted,
                             actual=", ".join(m.id for m in info.tdx_module_identities) or "none")


def evaluate_tdx(info: TcbInfo, platform: PlatformTcb, td: TdxTcb, *,
                 qe: QeResult | None) -> TcbResult:
    """TCB status of a TDX platform and module; ``qe`` None skips the QE convergence."""
    _check_collateral(info, platform, "TDX")
    if len(td.tee_tcb_svn) != 16 or len(td.mrsignerseam) != 48 or len(td.seam_attributes) != 8:
        raise Malformed("TD TCB values have the wrong sizes",
                        expected="TEE_TCB_SVN 16, MRSIGNERSEAM 48, SEAMATTRIBUTES 8")
    module = _module_identity(info, td)
    if td.mrsignerseam != module.mrsigner:
        raise TcbPolicyViolation("MRSIGNERSEAM is not the TDX module signer", rule="tdx-module",
                                 expected=module.mrsigner.hex(), actual=td.mrsignerseam.hex())
    masked = bytes(a & m for a, m in zip(td.seam_attributes, module.attributes_mask,
                                         strict=True))
    if any(td.seam_attributes) or masked != module.attributes:
        raise TcbPolicyViolation("SEAMATTRIBUTES do not match the module identity",
                                 rule="tdx-module", expected=module.attributes.hex(),
                                 actual=td.seam_attributes.hex())
    sgx = _first_sgx(info, platform)
    skip = 2 if td.tee_tcb_svn[1] > 0 else 0
    tdx_level = next((level for level in info.tcb_levels if _sgx_ok(level, platform)
                      and level.tdx_svns is not None
                      and all(td.tee_tcb_svn[i] >= level.tdx_svns[i] for i in range(skip, 16))),
                     None)
    if tdx_level is None:
        raise TcbPolicyViolation("no TDX TCB level matches TEE_TCB_SVN (TCB_NOT_SUPPORTED)",
                                 rule="tcb-level", expected="TEE_TCB_SVN >= some level's",
                                 actual=td.tee_tcb_svn.hex())
    module_level: IsvTcbLevel | None = None
    status = tdx_level.status
    if td.tee_tcb_svn[1] > 0:
        module_level = next((m for m in module.tcb_levels if m.isvsvn <= td.tee_tcb_svn[0]),
                            None)
        if module_level is None:
            raise TcbPolicyViolation("TDX module SVN is below every module TCB level",
                                     rule="tdx-module",
                                     expected=f">= {min(m.isvsvn for m in module.tcb_levels)}",
                                     actual=str(td.tee_tcb_svn[0]))
        status = converge(status, module_level.status)
    return _finish("TDX", info, tdx_level, status, sgx=sgx, module=module_level, qe=qe)


def evaluate_qe(identity: EnclaveIdentity, qe: QeReport, *,
                expected_id: Literal["QE", "TD_QE", "QVE"]) -> QeResult:
    """Match a QE report against its identity and pick its TCB level (section 2.9 step 9)."""
    if identity.id != expected_id:
        raise CollateralStale("enclave identity is for another enclave", rule="qe-identity-id",
                              expected=expected_id, actual=identity.id)
    if qe.miscselect & identity.miscselect_mask != identity.miscselect:
        raise ChainUntrusted("QE MISCSELECT does not match its identity", rule="qe-identity",
                             expected=f"{identity.miscselect:08x}", actual=f"{qe.miscselect:08x}")
    masked = bytes(a & m for a, m in zip(qe.attributes, identity.attributes_mask, strict=True))
    if masked != identity.attributes:
        raise ChainUntrusted("QE ATTRIBUTES do not match its identity", rule="qe-identity",
                             expected=identity.attributes.hex(), actual=qe.attributes.hex())
    if qe.mrsigner != identity.mrsigner:
        raise ChainUntrusted("QE MRSIGNER is not the identity's signer", rule="qe-identity",
                             expected=identity.mrsigner.hex(), actual=qe.mrsigner.hex())
    if qe.isvprodid != identity.isvprodid:
        raise ChainUntrusted("QE ISVPRODID does not match its identity", rule="qe-identity",
                             expected=str(identity.isvprodid), actual=str(qe.isvprodid))
    for level in identity.tcb_levels:
        if level.isvsvn <= qe.isvsvn:
            return QeResult(identity_id=identity.id, status=level.status,
                            tcb_date=level.tcb_date, advisory_ids=level.advisory_ids)
    raise TcbPolicyViolation("QE ISVSVN is below every QE TCB level (TCB_NOT_SUPPORTED)",
                             rule="qe-tcb", expected=f">= {identity.tcb_levels[-1].isvsvn}",
                             actual=str(qe.isvsvn))
