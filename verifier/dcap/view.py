"""The Intel DCAP claims view: ``tdx_claims_from_dict`` / ``sgx_claims_from_dict``, the exact
inverses of ``TdxClaims`` / ``SgxClaims.as_dict()``, and the sample claims policies are
type-checked against.

Invariants:
- ``tdx_claims_from_dict(c.as_dict()) == c`` (likewise SGX) for every claims value. Input is
  untrusted: ``verifier.claim_fields`` rules (every key, no unknown key, no coercion,
  ``Malformed`` rule ``claims.schema`` naming the dotted path).
- Decoded bit fields are authoritative over their ``raw`` encodings: ``td_attributes.raw`` is
  fully determined by its named bits and ``unknown_bits`` (it must still be well-formed); SGX
  ``debug`` decides ATTRIBUTES.DEBUG and ``attributes`` contributes the other bits.
- The samples are realistic, fully populated values (no null, no empty list): type templates
  for CEL conditions, not evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from verifier.claim_fields import U16, U32, ClaimFields, bits
from verifier.dcap.claims import (
    PLATFORM_SGX,
    PLATFORM_TDX,
    TD_ATTRIBUTE_BITS,
    DcapTcbClaims,
    SgxClaims,
    TdAttributes,
    TdxClaims,
)
from verifier.dcap.schema import TcbStatus
from verifier.eventlog.measured import TdEventClaims

_STATUSES = frozenset(s.value for s in TcbStatus)
_SGX_DEBUG_BIT = 1
_SAMPLE_IMAGE = "sha256:" + "ab" * 32
_SAMPLE_TCB_DATE = datetime(2025, 11, 12, tzinfo=UTC)
_TDX_KEYS = frozenset({
    "platform", "version", "body_type", "tee_tcb_svn", "mr_seam", "mr_signer_seam",
    "seam_attributes", "td_attributes", "xfam", "mr_td", "mr_config_id", "mr_owner",
    "mr_owner_config", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data", "tee_tcb_svn2",
    "mr_service_td", "tcb", "insecure_root", "events"})
_SGX_KEYS = frozenset({
    "platform", "version", "cpu_svn", "misc_select", "attributes", "debug", "mr_enclave",
    "mr_signer", "isv_prod_id", "isv_svn", "config_id", "config_svn", "isv_family_id",
    "isv_ext_prod_id", "report_data", "tcb", "insecure_root"})
_DCAP_TCB_KEYS = frozenset({
    "status", "advisory_ids", "tcb_date", "fmspc", "pce_id", "tcb_evaluation_data_number",
    "sgx_status", "tdx_status", "module_status", "qe_status", "collateral_warnings"})
_EVENT_KEYS = frozenset({"firmware", "boot_applications", "kernel", "initrd", "kernel_cmdline",
                         "images", "event_count"})


def _dcap_tcb(f: ClaimFields) -> DcapTcbClaims:
    return DcapTcbClaims(
        status=f.string("status", choices=_STATUSES),
        advisory_ids=f.strings("advisory_ids"),
        tcb_date=f.instant("tcb_date"),
        fmspc=f.hex_bytes("fmspc", 6),
        pce_id=f.hex_bytes("pce_id", 2),
        tcb_evaluation_data_number=f.integer("tcb_evaluation_data_number", U32),
        sgx_status=f.string("sgx_status", choices=_STATUSES),
        tdx_status=f.opt_string("tdx_status", choices=_STATUSES),
        module_status=f.opt_string("module_status", choices=_STATUSES),
        qe_status=f.string("qe_status", choices=_STATUSES),
        collateral_warnings=f.strings("collateral_warnings"),
    )


def _td_attributes(f: ClaimFields) -> TdAttributes:
    f.hex_int("raw", 16)
    unknown = f.hex_int("unknown_bits", 16)
    known = sum(1 << i for i in TD_ATTRIBUTE_BITS)
    if unknown & known:
        raise f.fail("unknown_bits", "only bits without a name", f.raw("unknown_bits"))
    return TdAttributes(bits(f, unknown, {name: i for i, name in TD_ATTRIBUTE_BITS.items()}))


def _events(f: ClaimFields) -> TdEventClaims:
    return TdEventClaims(
        firmware=f.strings("firmware"),
        boot_applications=f.strings("boot_applications"),
        kernel=f.opt_string("kernel"),
        initrd=f.opt_string("initrd"),
        kernel_cmdline=f.opt_string("kernel_cmdline"),
        images=f.strings("images"),
        event_count=f.integer("event_count", U32),
    )


def tdx_claims_from_dict(evidence: Mapping[str, object]) -> TdxClaims:
    """The exact inverse of ``TdxClaims.as_dict()`` (see the module invariants)."""
    f = ClaimFields(evidence, "evidence", _TDX_KEYS)
    f.string("platform", choices=(PLATFORM_TDX,))
    return TdxClaims(
        version=f.integer("version", U16),
        body_type=f.integer("body_type", U16),
        tee_tcb_svn=f.hex_bytes("tee_tcb_svn", 16),
        mr_seam=f.hex_bytes("mr_seam", 48),
        mr_signer_seam=f.hex_bytes("mr_signer_seam", 48),
        seam_attributes=f.hex_bytes("seam_attributes", 8),
        td_attributes=_td_attributes(f.sub("td_attributes", {
            "raw", "unknown_bits", *TD_ATTRIBUTE_BITS.values()})),
        xfam=f.hex_int("xfam", 16),
        mr_td=f.hex_bytes("mr_td", 48),
        mr_config_id=f.hex_bytes("mr_config_id", 48),
        mr_owner=f.hex_bytes("mr_owner", 48),
        mr_owner_config=f.hex_bytes("mr_owner_config", 48),
        rtmrs=(f.hex_bytes("rtmr0", 48), f.hex_bytes("rtmr1", 48), f.hex_bytes("rtmr2", 48),
               f.hex_bytes("rtmr3", 48)),
        report_data=f.hex_bytes("report_data", 64),
        tee_tcb_svn2=f.opt_hex_bytes("tee_tcb_svn2", 16),
        mr_service_td=f.opt_hex_bytes("mr_service_td", 48),
        tcb=_dcap_tcb(f.sub("tcb", _DCAP_TCB_KEYS)),
        insecure_root=f.boolean("insecure_root"),
        events=None if f.is_null("events") else _events(f.sub("events", _EVENT_KEYS)),
    )


def sgx_claims_from_dict(evidence: Mapping[str, object]) -> SgxClaims:
    """The exact inverse of ``SgxClaims.as_dict()`` (see the module invariants)."""
    f = ClaimFields(evidence, "evidence", _SGX_KEYS)
    f.string("platform", choices=(PLATFORM_SGX,))
    attributes = bytearray(f.hex_bytes("attributes", 16))
    if f.boolean("debug"):
        attributes[0] |= 1 << _SGX_DEBUG_BIT
    else:
        attributes[0] &= ~(1 << _SGX_DEBUG_BIT) & 0xFF
    return SgxClaims(
        version=f.integer("version", U16),
        cpu_svn=f.hex_bytes("cpu_svn", 16),
        misc_select=f.hex_int("misc_select", 8),
        attributes=bytes(attributes),
        mr_enclave=f.hex_bytes("mr_enclave", 32),
        mr_signer=f.hex_bytes("mr_signer", 32),
        isv_prod_id=f.integer("isv_prod_id", U16),
        isv_svn=f.integer("isv_svn", U16),
        config_id=f.hex_bytes("config_id", 64),
        config_svn=f.integer("config_svn", U16),
        isv_family_id=f.hex_bytes("isv_family_id", 16),
        isv_ext_prod_id=f.hex_bytes("isv_ext_prod_id", 16),
        report_data=f.hex_bytes("report_data", 64),
        tcb=_dcap_tcb(f.sub("tcb", _DCAP_TCB_KEYS)),
        insecure_root=f.boolean("insecure_root"),
    )


def _sample_dcap_tcb(*, tdx: bool) -> DcapTcbClaims:
    return DcapTcbClaims(
        status="UpToDate", advisory_ids=("INTEL-SA-00837",), tcb_date=_SAMPLE_TCB_DATE,
        fmspc=bytes.fromhex("00806f050000" if tdx else "00906ed50000"), pce_id=bytes(2),
        tcb_evaluation_data_number=17, sgx_status="UpToDate",
        tdx_status="UpToDate", module_status="UpToDate", qe_status="UpToDate",
        collateral_warnings=("pck-crl missing",))


def sample_tdx_claims() -> TdxClaims:
    """Realistic, fully populated claims of a v5 TD quote with replayed event logs."""
    return TdxClaims(
        version=5, body_type=3, tee_tcb_svn=bytes.fromhex("04010700") + bytes(12),
        mr_seam=bytes.fromhex("5e" * 48), mr_signer_seam=bytes(48), seam_attributes=bytes(8),
        td_attributes=TdAttributes(1 << 28), xfam=0x602E7,
        mr_td=bytes.fromhex("dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954db"
                            "a41394c7717cb2735396c1d04231f94a"),
        mr_config_id=bytes.fromhex("2c" * 48), mr_owner=bytes(48), mr_owner_config=bytes(48),
        rtmrs=(bytes.fromhex("10" * 48), bytes.fromhex("11" * 48), bytes.fromhex("12" * 48),
               bytes.fromhex("13" * 48)),
        report_data=bytes.fromhex("33" * 64), tee_tcb_svn2=bytes.fromhex("04010700") + bytes(12),
        mr_service_td=bytes(48), tcb=_sample_dcap_tcb(tdx=True), insecure_root=False,
        events=TdEventClaims(firmware=("a0" * 48,), boot_applications=("b0" * 48, "b1" * 48),
                             kernel="c0" * 48, initrd="d0" * 48,
                             kernel_cmdline="console=ttyS0 root=/dev/vda1",
                             images=(_SAMPLE_IMAGE,), event_count=42),
    )


def sample_sgx_claims() -> SgxClaims:
    """Realistic, fully populated claims of a v3 SGX quote."""
    return SgxClaims(
        version=3, cpu_svn=bytes.fromhex("0c0c1003ff8006000000000000000000"), misc_select=0,
        attributes=bytes.fromhex("0500000000000000e700000000000000"),
        mr_enclave=bytes.fromhex("5a" * 32), mr_signer=bytes.fromhex("c3" * 32), isv_prod_id=7,
        isv_svn=4, config_id=bytes(64), config_svn=0, isv_family_id=bytes(16),
        isv_ext_prod_id=bytes(16), report_data=bytes.fromhex("33" * 64),
        tcb=_sample_dcap_tcb(tdx=False), insecure_root=False,
    )
