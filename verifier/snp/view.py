"""The SEV-SNP claims view: ``snp_claims_from_dict``, the exact inverse of
``SnpClaims.as_dict()``, and the sample claims policies are type-checked against.

Invariants:
- ``snp_claims_from_dict(c.as_dict()) == c`` for every claims value. Input is untrusted:
  ``verifier.claim_fields`` rules (every key, no unknown key, no coercion, ``Malformed`` rule
  ``claims.schema`` naming the dotted path).
- Decoded bit fields are authoritative over their ``raw`` encodings, so a fixture may change
  one named flag (``policy.debug: true``) or one TCB component (``reported_tcb.microcode``)
  without re-encoding: ``raw`` contributes only the bits / bytes that have no named field
  (reserved bits of GUEST_POLICY and PLATFORM_INFO, reserved TCB_VERSION bytes).
- ``sample_snp_claims`` is a realistic, fully populated value (no null, no empty list): a type
  template for CEL conditions, not evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from verifier.claim_fields import U8, U16, U32, U64, ClaimFields, bits
from verifier.snp.claims import PLATFORM_SNP, FirmwareVersion, GuestPolicy, PlatformInfo, SnpClaims
from verifier.snp.tcb import PRODUCTS, TcbVersion

_PREFIXED_HEX_RE = re.compile(r"0x[0-9a-f]{1,16}")
_FIRMWARE_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,5})")
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
_GUEST_POLICY_BITS = {"smt": 16, "migrate_ma": 18, "debug": 19, "single_socket": 20,
                      "cxl_allow": 21, "mem_aes_256_xts": 22, "rapl_dis": 23,
                      "ciphertext_hiding": 24, "page_swap_disable": 25}
_PLATFORM_INFO_BITS = {"smt_en": 0, "tsme_en": 1, "ecc_en": 2, "rapl_dis": 3,
                       "ciphertext_hiding_en": 4, "alias_check_complete": 5, "sev_tio_en": 7}
_SNP_KEYS = frozenset({
    "platform", "version", "product", "signing_key", "measurement", "host_data", "report_data",
    "family_id", "image_id", "guest_svn", "policy", "vmpl", "platform_info", "reported_tcb",
    "committed_tcb", "current_tcb", "launch_tcb", "chip_id", "id_key_digest",
    "author_key_digest", "author_key_en", "report_id", "report_id_ma", "current_firmware",
    "committed_firmware", "launch_mit_vector", "current_mit_vector", "cpuid", "csp_id",
    "signer_fingerprint", "insecure_root"})
# Claims added after the first recorded release (absent in older records: neutral value).
_SNP_ADDED = frozenset({"collateral_warnings"})


def _guest_policy(fields: ClaimFields) -> GuestPolicy:
    raw = _prefixed_hex(fields, "raw")
    raw = bits(fields, raw, _GUEST_POLICY_BITS)
    raw = raw & ~0xFFFF | fields.integer("abi_major", U8) << 8 | fields.integer("abi_minor", U8)
    return GuestPolicy(raw)


def _platform_info(fields: ClaimFields) -> PlatformInfo:
    return PlatformInfo(bits(fields, _prefixed_hex(fields, "raw"), _PLATFORM_INFO_BITS))


def _prefixed_hex(fields: ClaimFields, key: str) -> int:
    """A ``hex(x)`` string (``0x30000``)."""
    return int(fields.string(key, pattern=_PREFIXED_HEX_RE, what="0x-prefixed lowercase hex"),
               16)


def _tcb_positions(product: str) -> dict[str, int]:
    """Component -> byte index in a TCB_VERSION of ``product`` (decoded from a probe)."""
    return TcbVersion.decode(bytes(range(8)), product).components()


def _tcb_version(fields: ClaimFields, product: str) -> TcbVersion:
    raw = bytearray(fields.hex_bytes("raw", 8))
    for name, index in _tcb_positions(product).items():
        raw[index] = fields.integer(name, U8)
    return TcbVersion.decode(bytes(raw), product)


def _tcb_keys(product: str) -> frozenset[str]:
    return frozenset(_tcb_positions(product)) | {"raw"}


def _firmware(fields: ClaimFields, key: str) -> FirmwareVersion:
    match = _FIRMWARE_RE.fullmatch(fields.string(key, pattern=_FIRMWARE_RE,
                                                 what="firmware version major.minor.build"))
    assert match is not None
    major, minor, build = (int(g) for g in match.groups())
    if major > U8 or minor > U8 or build > U16:
        raise fields.fail(key, "major, minor <= 255 and build <= 65535", fields.raw(key))
    return FirmwareVersion(major, minor, build)


def _cpuid(fields: ClaimFields) -> tuple[int, int, int] | None:
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
    f = ClaimFields(evidence, "evidence", _SNP_KEYS, _SNP_ADDED)
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
        collateral_warnings=f.strings("collateral_warnings"),
    )


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
        collateral_warnings=("ARK-Genoa CRL missing",),
    )
