"""The claims view: the JSON that policies, CEL conditions, reference-value bindings, recorded
appraisals and policy test fixtures see, and its exact inverse back to typed claims.

Invariants:
- ``claims_view`` is ``{"platform", "evidence", "workload"}`` where ``evidence`` is the
  platform claims' ``as_dict()`` and ``workload`` the ``WorkloadClaims.as_dict()``; nothing
  else, so a CEL expression and a reference binding name the same paths as tokens and records.
- ``platform_claims_from_dict`` is the exact inverse of ``SnpClaims`` / ``TdxClaims`` /
  ``SgxClaims.as_dict()``: ``platform_claims_from_dict(c.as_dict()) == c`` for every claims
  value. Input is untrusted (files, YAML fixtures, recorded rows): every key must be present,
  no unknown key is accepted, nothing is coerced (a bool is not an integer, hex has its exact
  length), and every failure is ``Malformed`` (rule ``claims.schema``) naming the dotted path.
- Decoded bit fields are authoritative over their ``raw`` encodings, so a fixture may change
  one named flag (``policy.debug: true``) or one TCB component (``reported_tcb.microcode``)
  without re-encoding: ``raw`` contributes only the bits / bytes that have no named field
  (reserved bits of GUEST_POLICY and PLATFORM_INFO, reserved TCB_VERSION bytes, SGX
  ATTRIBUTES other than DEBUG). ``td_attributes.raw`` is fully determined by its named bits
  and ``unknown_bits``; it must still be well-formed.
- ``sample_activation(platform)`` is a fully populated, realistic view (no null, no empty list)
  used to type-check CEL conditions at policy compile time; it is a type template, not
  evidence (its workload has every field set even where a platform cannot bind init-data).
- ``lookup`` never raises ``KeyError`` / ``IndexError``: a path that does not exist is
  ``Malformed`` (rule ``claims.path``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Final

from keybroker.errors import Malformed
from verifier.dcap.claims import (
    TD_ATTRIBUTE_BITS,
    DcapTcbClaims,
    SgxClaims,
    TdAttributes,
    TdxClaims,
)
from verifier.dcap.schema import TcbStatus
from verifier.eventlog.measured import TdEventClaims
from verifier.snp.claims import FirmwareVersion, GuestPolicy, PlatformInfo, SnpClaims
from verifier.snp.tcb import PRODUCTS, TcbVersion
from verifier.workload import WorkloadClaims

PlatformClaims = SnpClaims | TdxClaims | SgxClaims

PLATFORM_SNP: Final = "sev-snp"
PLATFORM_TDX: Final = "tdx"
PLATFORM_SGX: Final = "sgx"
VIEW_VARIABLES: Final = ("platform", "evidence", "workload")
U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF

_HEX_RE = re.compile(r"[0-9a-fA-F]*")
_PREFIXED_HEX_RE = re.compile(r"0x[0-9a-f]{1,16}")
_FIRMWARE_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,5})")
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
_STATUSES = frozenset(s.value for s in TcbStatus)
_GUEST_POLICY_BITS = {"smt": 16, "migrate_ma": 18, "debug": 19, "single_socket": 20,
                      "cxl_allow": 21, "mem_aes_256_xts": 22, "rapl_dis": 23,
                      "ciphertext_hiding": 24, "page_swap_disable": 25}
_PLATFORM_INFO_BITS = {"smt_en": 0, "tsme_en": 1, "ecc_en": 2, "rapl_dis": 3,
                       "ciphertext_hiding_en": 4, "alias_check_complete": 5, "sev_tio_en": 7}
_SGX_DEBUG_BIT = 1
_SNP_KEYS = frozenset({
    "platform", "version", "product", "signing_key", "measurement", "host_data", "report_data",
    "family_id", "image_id", "guest_svn", "policy", "vmpl", "platform_info", "reported_tcb",
    "committed_tcb", "current_tcb", "launch_tcb", "chip_id", "id_key_digest",
    "author_key_digest", "author_key_en", "report_id", "report_id_ma", "current_firmware",
    "committed_firmware", "launch_mit_vector", "current_mit_vector", "cpuid", "csp_id",
    "signer_fingerprint", "insecure_root"})
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


def describe(value: object) -> str:
    """A short type-and-value description for error messages."""
    if isinstance(value, str):
        return "str " + (repr(value) if len(value) <= 80 else repr(value[:80] + "..."))
    if isinstance(value, Mapping):
        return "map"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"[:100]


class _Fields:
    """Strict typed access to one map of a claims dict; failures name the dotted path."""

    def __init__(self, data: object, path: str, keys: Collection[str]) -> None:
        self.path = path
        if not isinstance(data, Mapping):
            raise self._fail(path, "wrong type", "a map", describe(data))
        for key in data:
            if not isinstance(key, str) or key not in keys:
                raise self._fail(self._at(str(key)), "unknown claim",
                                 "one of " + ", ".join(sorted(keys)), repr(key)[:80])
        for key in sorted(keys):
            if key not in data:
                raise self._fail(self._at(key), "missing claim", "present", "absent")
        self.data: Mapping[str, object] = data

    @staticmethod
    def _fail(path: str, what: str, expected: str, actual: str) -> Malformed:
        return Malformed(f"claims: {what} at '{path}'", rule="claims.schema",
                         expected=expected, actual=actual)

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str, value: object) -> Malformed:
        return self._fail(self._at(key), "wrong value", expected, describe(value))

    def sub(self, key: str, keys: Collection[str]) -> _Fields:
        return _Fields(self.data[key], self._at(key), keys)

    def raw(self, key: str) -> object:
        return self.data[key]

    def is_null(self, key: str) -> bool:
        return self.data[key] is None

    def integer(self, key: str, maximum: int) -> int:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            raise self.fail(key, f"integer 0..{maximum}", value)
        return value

    def opt_integer(self, key: str, maximum: int) -> int | None:
        return None if self.data[key] is None else self.integer(key, maximum)

    def boolean(self, key: str) -> bool:
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.fail(key, "boolean", value)
        return value

    def string(self, key: str, *, pattern: re.Pattern[str] | None = None,
               choices: Collection[str] | None = None, what: str = "string") -> str:
        value = self.data[key]
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise self.fail(key, what, value)
        if choices is not None and value not in choices:
            raise self.fail(key, "one of " + ", ".join(sorted(choices)), value)
        return value

    def opt_string(self, key: str, *, choices: Collection[str] | None = None) -> str | None:
        return None if self.data[key] is None else self.string(key, choices=choices)

    def hex_bytes(self, key: str, size: int) -> bytes:
        value = self.data[key]
        if (not isinstance(value, str) or len(value) != 2 * size
                or not _HEX_RE.fullmatch(value)):
            raise self.fail(key, f"{2 * size} hex digits ({size} bytes)", value)
        return bytes.fromhex(value)

    def opt_hex_bytes(self, key: str, size: int) -> bytes | None:
        return None if self.data[key] is None else self.hex_bytes(key, size)

    def hex_int(self, key: str, digits: int) -> int:
        """A fixed-width hex integer without prefix (``f"{x:016x}"``)."""
        value = self.data[key]
        if (not isinstance(value, str) or len(value) != digits
                or not _HEX_RE.fullmatch(value)):
            raise self.fail(key, f"{digits} hex digits", value)
        return int(value, 16)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data[key]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "list of strings", value)
        return tuple(str(v) for v in value)

    def instant(self, key: str) -> datetime:
        value = self.data[key]
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise self.fail(key, "RFC 3339 date-time with a time zone", value) from None
        elif isinstance(value, datetime):
            parsed = value
        else:
            raise self.fail(key, "RFC 3339 date-time with a time zone", value)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise self.fail(key, "RFC 3339 date-time with a time zone", value)
        return parsed.astimezone(UTC)


def _bits(fields: _Fields, raw: int, names: Mapping[str, int]) -> int:
    """``raw`` with every named bit replaced by its decoded boolean."""
    for name, bit in names.items():
        raw = raw | 1 << bit if fields.boolean(name) else raw & ~(1 << bit)
    return raw


def _guest_policy(fields: _Fields) -> GuestPolicy:
    raw = _prefixed_hex(fields, "raw")
    raw = _bits(fields, raw, _GUEST_POLICY_BITS)
    raw = raw & ~0xFFFF | fields.integer("abi_major", U8) << 8 | fields.integer("abi_minor", U8)
    return GuestPolicy(raw)


def _platform_info(fields: _Fields) -> PlatformInfo:
    return PlatformInfo(_bits(fields, _prefixed_hex(fields, "raw"), _PLATFORM_INFO_BITS))


def _prefixed_hex(fields: _Fields, key: str) -> int:
    """A ``hex(x)`` string (``0x30000``)."""
    return int(fields.string(key, pattern=_PREFIXED_HEX_RE, what="0x-prefixed lowercase hex"),
               16)


def _tcb_positions(product: str) -> dict[str, int]:
    """Component -> byte index in a TCB_VERSION of ``product`` (decoded from a probe)."""
    return TcbVersion.decode(bytes(range(8)), product).components()


def _tcb_version(fields: _Fields, product: str) -> TcbVersion:
    raw = bytearray(fields.hex_bytes("raw", 8))
    for name, index in _tcb_positions(product).items():
        raw[index] = fields.integer(name, U8)
    return TcbVersion.decode(bytes(raw), product)


def _tcb_keys(product: str) -> frozenset[str]:
    return frozenset(_tcb_positions(product)) | {"raw"}


def _firmware(fields: _Fields, key: str) -> FirmwareVersion:
    match = _FIRMWARE_RE.fullmatch(fields.string(key, pattern=_FIRMWARE_RE,
                                                 what="firmware version major.minor.build"))
    assert match is not None
    major, minor, build = (int(g) for g in match.groups())
    if major > U8 or minor > U8 or build > U16:
        raise fields.fail(key, "major, minor <= 255 and build <= 65535", fields.raw(key))
    return FirmwareVersion(major, minor, build)


def _cpuid(fields: _Fields) -> tuple[int, int, int] | None:
    value = fields.raw("cpuid")
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U8
                       for v in value)):
        raise fields.fail("cpuid", "null or [family, model, stepping] (integers 0..255)", value)
    return (int(value[0]), int(value[1]), int(value[2]))


def snp_claims_from_dict(evidence: Mapping[str, object]) -> SnpClaims:
    """The exact inverse of ``SnpClaims.as_dict()`` (see the module invariants)."""
    f = _Fields(evidence, "evidence", _SNP_KEYS)
    f.string("platform", choices=(PLATFORM_SNP,))
    product = f.string("product", choices=PRODUCTS)
    tcb_keys = _tcb_keys(product)
    return SnpClaims(
        version=f.integer("version", U32),
        product=product,
        signing_key=f.string("signing_key", choices=("vcek", "vlek")),
        measurement=f.hex_bytes("measurement", 48),
        host_data=f.hex_bytes("host_data", 32),
        report_data=f.hex_bytes("report_data", 64),
        family_id=f.hex_bytes("family_id", 16),
        image_id=f.hex_bytes("image_id", 16),
        guest_svn=f.integer("guest_svn", U32),
        policy=_guest_policy(f.sub("policy", {"raw", "abi_major", "abi_minor",
                                              *_GUEST_POLICY_BITS})),
        vmpl=f.integer("vmpl", U32),
        platform_info=_platform_info(f.sub("platform_info", {"raw", *_PLATFORM_INFO_BITS})),
        reported_tcb=_tcb_version(f.sub("reported_tcb", tcb_keys), product),
        committed_tcb=_tcb_version(f.sub("committed_tcb", tcb_keys), product),
        current_tcb=_tcb_version(f.sub("current_tcb", tcb_keys), product),
        launch_tcb=_tcb_version(f.sub("launch_tcb", tcb_keys), product),
        chip_id=f.hex_bytes("chip_id", 64),
        id_key_digest=f.hex_bytes("id_key_digest", 48),
        author_key_digest=f.hex_bytes("author_key_digest", 48),
        author_key_en=f.boolean("author_key_en"),
        report_id=f.hex_bytes("report_id", 32),
        report_id_ma=f.hex_bytes("report_id_ma", 32),
        current_firmware=_firmware(f, "current_firmware"),
        committed_firmware=_firmware(f, "committed_firmware"),
        launch_mit_vector=f.opt_integer("launch_mit_vector", U64),
        current_mit_vector=f.opt_integer("current_mit_vector", U64),
        cpuid=_cpuid(f),
        csp_id=f.opt_string("csp_id"),
        signer_fingerprint=f.string("signer_fingerprint", pattern=_FINGERPRINT_RE,
                                    what="64 lowercase hex digits"),
        insecure_root=f.boolean("insecure_root"),
    )


def _dcap_tcb(f: _Fields) -> DcapTcbClaims:
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


def _td_attributes(f: _Fields) -> TdAttributes:
    f.hex_int("raw", 16)
    unknown = f.hex_int("unknown_bits", 16)
    known = sum(1 << i for i in TD_ATTRIBUTE_BITS)
    if unknown & known:
        raise f.fail("unknown_bits", "only bits without a name", f.raw("unknown_bits"))
    return TdAttributes(_bits(f, unknown, {name: i for i, name in TD_ATTRIBUTE_BITS.items()}))


def _events(f: _Fields) -> TdEventClaims:
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
    f = _Fields(evidence, "evidence", _TDX_KEYS)
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
    f = _Fields(evidence, "evidence", _SGX_KEYS)
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


_FROM_DICT: Mapping[str, Callable[[Mapping[str, object]], PlatformClaims]] = {
    PLATFORM_SNP: snp_claims_from_dict, PLATFORM_TDX: tdx_claims_from_dict,
    PLATFORM_SGX: sgx_claims_from_dict}


def platform_of(claims: PlatformClaims) -> str:
    """``sev-snp`` | ``tdx`` | ``sgx``."""
    if isinstance(claims, SnpClaims):
        return PLATFORM_SNP
    return PLATFORM_TDX if isinstance(claims, TdxClaims) else PLATFORM_SGX


def platform_claims_from_dict(evidence: Mapping[str, object]) -> PlatformClaims:
    """Typed claims from an ``as_dict()`` map of any platform (chosen by its ``platform``)."""
    if not isinstance(evidence, Mapping):
        raise Malformed("claims: wrong type at 'evidence'", rule="claims.schema",
                        expected="a map", actual=describe(evidence))
    platform = evidence.get("platform")
    if not isinstance(platform, str) or platform not in _FROM_DICT:
        raise Malformed("claims: unknown platform at 'evidence.platform'", rule="claims.schema",
                        expected="one of " + ", ".join(_FROM_DICT), actual=describe(platform))
    return _FROM_DICT[platform](evidence)


def claims_view(claims: PlatformClaims, workload: WorkloadClaims) -> dict[str, object]:
    """The view policies and CEL conditions see (module invariants)."""
    return {"platform": platform_of(claims), "evidence": claims.as_dict(),
            "workload": workload.as_dict()}


def lookup(view: Mapping[str, object], dotted: str) -> object:
    """The value at a dotted path (``evidence.tcb.status``; list items by index,
    ``evidence.cpuid.0``); ``Malformed`` when the path does not exist."""
    value: object = view
    walked: list[str] = []
    for part in dotted.split("."):
        walked.append(part)
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif (isinstance(value, list | tuple) and part.isdigit() and part.isascii()
              and int(part) < len(value)):
            value = value[int(part)]
        else:
            raise Malformed(f"claims: no claim at '{'.'.join(walked)}'", rule="claims.path",
                            expected="an existing claim path such as evidence.measurement",
                            actual=dotted)
    return value


# --- the sample activation ----------------------------------------------------------------

_SAMPLE_TCB_DATE = datetime(2025, 11, 12, tzinfo=UTC)
_SAMPLE_IMAGE = "sha256:" + "ab" * 32


def sample_snp_claims() -> SnpClaims:
    """Realistic, fully populated claims of a VLEK-signed v5 Genoa report."""
    tcb = TcbVersion.decode(bytes.fromhex("04000000000018db"), "Genoa")
    return SnpClaims(
        version=5, product="Genoa", signing_key="vlek",
        measurement=bytes.fromhex("6a6519d757e68c2e939c9dbbbc1828498e8de35d2766dd05f1a2cca5059d0cf4"
                                  "ae62a36d75c837974dd50b315506e73e"),
        host_data=bytes.fromhex("1f" * 32), report_data=bytes.fromhex("33" * 64),
        family_id=bytes(16), image_id=bytes(16), guest_svn=1, policy=GuestPolicy(0x30000),
        vmpl=0, platform_info=PlatformInfo(0x25), reported_tcb=tcb, committed_tcb=tcb,
        current_tcb=tcb, launch_tcb=tcb, chip_id=bytes.fromhex("42" * 64),
        id_key_digest=bytes(48), author_key_digest=bytes(48), author_key_en=False,
        report_id=bytes.fromhex("01" * 32), report_id_ma=bytes.fromhex("ff" * 32),
        current_firmware=FirmwareVersion(1, 55, 40), committed_firmware=FirmwareVersion(1, 55, 40),
        launch_mit_vector=0x0B, current_mit_vector=0x0B, cpuid=(0x19, 0x11, 0x01),
        csp_id="keybroker-simulator", signer_fingerprint="5c" * 32, insecure_root=False,
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


def _sample_workload(register: str, digest: bytes) -> WorkloadClaims:
    return WorkloadClaims(
        init_data_register=register, init_data_digest=digest.hex(), name="demo",
        images=(_SAMPLE_IMAGE,), agent_policy="default",
        agent_policy_digest="sha256:" + "cd" * 32, measured_register="RTMR3",
        measured_images=(_SAMPLE_IMAGE,))


def sample_claims(platform: str) -> tuple[PlatformClaims, WorkloadClaims]:
    """Realistic, fully populated claims and workload claims for ``platform``."""
    if platform == PLATFORM_SNP:
        snp = sample_snp_claims()
        return snp, _sample_workload("HOST_DATA", snp.host_data)
    if platform == PLATFORM_TDX:
        tdx = sample_tdx_claims()
        return tdx, _sample_workload("MRCONFIGID", tdx.mr_config_id)
    if platform == PLATFORM_SGX:
        return sample_sgx_claims(), _sample_workload("MRCONFIGID", bytes.fromhex("2c" * 48))
    raise Malformed("unknown platform", rule="claims.platform",
                    expected="one of " + ", ".join(_FROM_DICT), actual=platform)


def sample_activation(platform: str) -> dict[str, object]:
    """The CEL variables (``platform``, ``evidence``, ``workload``) of a fully populated,
    realistic appraisal of ``platform`` (module invariants)."""
    claims, workload = sample_claims(platform)
    return claims_view(claims, workload)

