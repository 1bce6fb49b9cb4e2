"""The ``tdx:`` and ``sgx:`` sections of an appraisal policy, compiled into frozen values.

Invariants:
- Compiling is as strict as for ``snp:`` (see ``verifier.snp.policy``): unknown keys, wrong
  types, bad hex and out-of-range values are ``Malformed`` naming the file, the line and the key.
  Switches default to the strict setting (no migration, no perfmon, no profiling,
  SEPT_VE_DISABLE required, missing CRLs refused).
- Accepted TCB statuses are Intel's strings (``TcbStatus`` values); "Revoked" is refused at load,
  so no policy can ever accept a revoked TCB. The default is UpToDate only. The grace date for
  OutOfDate / OutOfDateConfigurationNeeded must carry a time zone.
- Fail closed: ``mrtd`` is required unless a reference binding covers ``evidence.mr_td`` (then
  it may be absent and compiles to None: not checked by the typed appraiser, the binding is);
  ``allowed_advisories`` defaults to none. Every other list (``rtmr0``..``rtmr3``, ``mrseam``,
  ``mrsignerseam``, ``mrowner``, ``mrownerconfig``, ``allowed_xfam``, ``allowed_images``) is an
  allow-list when present and unchecked (None) when absent. An empty list is refused at load
  (``keybroker.document_reader``); a compiled empty set would match nothing.
- An SGX policy names MRENCLAVE values, or the whole MRSIGNER + ISVPRODID + minimum ISVSVN
  triple (or both); anything else is refused at load, except that neither is required when a
  reference binding covers ``evidence.mr_enclave`` or ``evidence.mr_signer``. A partial signer
  triple is always refused.
- Init-data is platform-neutral (``workload:``, see ``verifier.policy.compile``), not part of these
  sections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from keybroker.document_reader import DocumentReader
from verifier.dcap.claims import PLATFORM_SGX, PLATFORM_TDX
from verifier.dcap.schema import TcbStatus
from verifier.tee import TcbEarlyWarning
from verifier.verdict import PolicyRef
from verifier.workload import IMAGE_RE

TD_MEASUREMENT_SIZE = 48
SGX_MEASUREMENT_SIZE = 32
DEFAULT_STATUSES = (TcbStatus.UP_TO_DATE.value,)
GRACE_STATUSES = frozenset({TcbStatus.OUT_OF_DATE.value,
                            TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED.value})
_STATUS_RE = re.compile("^(" + "|".join(s.value for s in TcbStatus
                                        if s is not TcbStatus.REVOKED) + ")$")
_ADVISORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TCB_KEYS = frozenset({"accepted_tcb_statuses", "allowed_advisories", "out_of_date_grace_until",
                       "allow_missing_crl"})
_TDX_OPTIONAL = _TCB_KEYS | frozenset({
    "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam", "mrsignerseam", "mrowner", "mrownerconfig",
    "allowed_xfam", "allow_migratable", "allow_perfmon", "allow_profiling",
    "require_sept_ve_disable", "required_images", "allowed_images",
})
_SGX_OPTIONAL = _TCB_KEYS | frozenset({"mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn"})
_SIGNER_KEYS = ("mrsigner", "isv_prod_id", "min_isv_svn")
TDX_IDENTITY_CLAIMS = frozenset({"evidence.mr_td"})
SGX_IDENTITY_CLAIMS = frozenset({"evidence.mr_enclave", "evidence.mr_signer"})
EARLY_WARNING_KEY = "min_tcb_date"


@dataclass(frozen=True)
class DcapTcbPolicy:
    """What an Intel TCB evaluation must say (shared by TDX and SGX)."""

    accepted_statuses: frozenset[str] = frozenset(DEFAULT_STATUSES)
    allowed_advisories: frozenset[str] = frozenset()
    out_of_date_grace_until: datetime | None = None
    allow_missing_crl: bool = False


@dataclass(frozen=True)
class TdxPolicy:
    """Compiled ``tdx:`` section: ``None`` = that allow-list is not checked (``mrtd`` None =
    covered by a reference binding instead); an empty set matches nothing."""

    mrtd: frozenset[bytes] | None
    tcb: DcapTcbPolicy = DcapTcbPolicy()
    rtmrs: tuple[frozenset[bytes] | None, ...] = (None,) * 4
    mrseam: frozenset[bytes] | None = None
    mrsignerseam: frozenset[bytes] | None = None
    mrowner: frozenset[bytes] | None = None
    mrownerconfig: frozenset[bytes] | None = None
    allowed_xfam: frozenset[int] | None = None
    allow_migratable: bool = False
    allow_perfmon: bool = False
    allow_profiling: bool = False
    require_sept_ve_disable: bool = True
    required_images: tuple[str, ...] = ()
    allowed_images: frozenset[str] | None = None


@dataclass(frozen=True)
class SgxSigner:
    """Accept enclaves signed by one of ``mrsigner`` as product ``isv_prod_id``, SVN >= floor."""

    mrsigner: frozenset[bytes]
    isv_prod_id: int
    min_isv_svn: int


@dataclass(frozen=True)
class SgxPolicy:
    """Compiled ``sgx:`` section: MRENCLAVE allow-list and/or a signer rule (both None only
    when a reference binding covers the enclave identity)."""

    mrenclave: frozenset[bytes] | None
    signer: SgxSigner | None
    tcb: DcapTcbPolicy = DcapTcbPolicy()


def _compile_tcb(section: DocumentReader) -> DcapTcbPolicy:
    listed = section.table.get("accepted_tcb_statuses")
    if isinstance(listed, list) and TcbStatus.REVOKED.value in listed:
        raise section.fail_at(("accepted_tcb_statuses", listed.index(TcbStatus.REVOKED.value)),
                              "a revoked TCB can never be accepted",
                              "statuses other than Revoked", "Revoked")
    statuses = section.strings("accepted_tcb_statuses", list(DEFAULT_STATUSES), _STATUS_RE,
                               "an Intel TCB status other than Revoked")
    advisories = section.strings("allowed_advisories", [], _ADVISORY_RE,
                                 "an advisory id such as INTEL-SA-00837")
    return DcapTcbPolicy(
        accepted_statuses=frozenset(statuses),
        allowed_advisories=frozenset(advisories),
        out_of_date_grace_until=section.instant("out_of_date_grace_until"),
        allow_missing_crl=section.boolean("allow_missing_crl", False),
    )


def _optional_set(tdx: DocumentReader, key: str) -> frozenset[bytes] | None:
    return tdx.hex_values(key, TD_MEASUREMENT_SIZE) if tdx.has(key) else None


def compile_tdx(tdx: DocumentReader, mrtd_referenced: bool = False) -> TdxPolicy:
    """Compile a ``tdx:`` mapping; ``mrtd_referenced``: a reference binding covers
    ``evidence.mr_td``, so ``mrtd`` may be absent."""
    tdx.check_keys(frozenset(), _TDX_OPTIONAL | {"mrtd"})
    if not tdx.has("mrtd") and not mrtd_referenced:
        raise tdx.missing("mrtd", "field 'mrtd' (or a reference_values binding of "
                                  "evidence.mr_td)")
    size = TD_MEASUREMENT_SIZE
    image_what = "sha256:<64 lowercase hex digits>"
    return TdxPolicy(
        mrtd=tdx.hex_values("mrtd", size) if tdx.has("mrtd") else None,
        tcb=_compile_tcb(tdx),
        rtmrs=tuple(_optional_set(tdx, f"rtmr{i}") for i in range(4)),
        mrseam=_optional_set(tdx, "mrseam"),
        mrsignerseam=_optional_set(tdx, "mrsignerseam"),
        mrowner=_optional_set(tdx, "mrowner"),
        mrownerconfig=_optional_set(tdx, "mrownerconfig"),
        allowed_xfam=tdx.u64_values("allowed_xfam") if tdx.has("allowed_xfam") else None,
        allow_migratable=tdx.boolean("allow_migratable", False),
        allow_perfmon=tdx.boolean("allow_perfmon", False),
        allow_profiling=tdx.boolean("allow_profiling", False),
        require_sept_ve_disable=tdx.boolean("require_sept_ve_disable", True),
        required_images=tdx.strings("required_images", [], IMAGE_RE, image_what),
        allowed_images=(frozenset(tdx.strings("allowed_images", [], IMAGE_RE, image_what))
                        if tdx.has("allowed_images") else None),
    )


def compile_sgx(sgx: DocumentReader, identity_referenced: bool = False) -> SgxPolicy:
    """Compile an ``sgx:`` mapping; ``identity_referenced``: a reference binding covers
    ``evidence.mr_enclave`` or ``evidence.mr_signer``, so neither rule is required."""
    sgx.check_keys(frozenset(), _SGX_OPTIONAL)
    given = [k for k in _SIGNER_KEYS if sgx.has(k)]
    if given and len(given) != len(_SIGNER_KEYS):
        missing = next(k for k in _SIGNER_KEYS if k not in given)
        raise sgx.missing(missing, "mrsigner, isv_prod_id and min_isv_svn together",
                          f"absent (given: {', '.join(given)})")
    if not given and not sgx.has("mrenclave") and not identity_referenced:
        raise sgx.missing("mrenclave", "mrenclave, or mrsigner + isv_prod_id + min_isv_svn, "
                                       "or a reference_values binding of evidence.mr_enclave "
                                       "or evidence.mr_signer")
    signer = None
    if given:
        signer = SgxSigner(
            mrsigner=sgx.hex_values("mrsigner", SGX_MEASUREMENT_SIZE),
            isv_prod_id=sgx.integer("isv_prod_id", sgx.table["isv_prod_id"], 0, 0xFFFF),
            min_isv_svn=sgx.integer("min_isv_svn", sgx.table["min_isv_svn"], 0, 0xFFFF),
        )
    return SgxPolicy(
        mrenclave=(sgx.hex_values("mrenclave", SGX_MEASUREMENT_SIZE) if sgx.has("mrenclave")
                   else None),
        signer=signer,
        tcb=_compile_tcb(sgx),
    )


def compile_early_warning(warning: DocumentReader) -> TcbEarlyWarning:
    """The Intel keys of ``tcb_early_warning``: the next TCB date floor."""
    return TcbEarlyWarning(min_tcb_date=warning.instant(EARLY_WARNING_KEY))


def tdx_section(policy: PolicyRef) -> TdxPolicy:
    """The ``tdx:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(TdxPolicy, PLATFORM_TDX)


def sgx_section(policy: PolicyRef) -> SgxPolicy:
    """The ``sgx:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(SgxPolicy, PLATFORM_SGX)
