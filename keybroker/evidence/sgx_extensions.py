"""The Intel SGX extension of PCK certificates (OID 1.2.840.113741.1.13.1, section 2.7).

Invariants:
- The extension is decoded with the strict DER reader in ``keybroker.evidence.der``: a SEQUENCE of
  SEQUENCE {OID, value}; every OID appears at most once; PPID, TCB, PCE-ID, FMSPC and SGX Type
  are required, with exact sizes (PPID 16, CPUSVN 16, PCE-ID 2, FMSPC 6 bytes).
- The TCB member holds exactly the 16 COMPnn SVNs (0..255), PCESVN (0..65535) and CPUSVN, each
  exactly once. Unknown members are rejected (an unexpected layout cannot be matched).
- Any decoding failure raises ``ChainUntrusted`` (the certificate cannot be matched against TCB
  collateral); the original ``Malformed`` detail is kept as the cause.
- ``encode_sgx_extension`` is the exact inverse of ``parse_sgx_extension`` (Intel's encoding:
  SEQUENCE OF SEQUENCE {OID, value}, members in OID order), for simulators and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from keybroker.errors import ChainUntrusted, Malformed
from keybroker.evidence import der

SGX_ARC = "1.2.840.113741.1.13.1"
OID_SGX_EXTENSION = x509.ObjectIdentifier(SGX_ARC)
SGX_TYPES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}
_TCB_ARC = f"{SGX_ARC}.2."
_CONFIG_ARC = f"{SGX_ARC}.7."


@dataclass(frozen=True)
class PlatformConfiguration:
    """The Configuration member (Platform CA-issued PCKs only); None where absent."""

    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


@dataclass(frozen=True)
class SgxExtensions:
    """Decoded SGX extension of a PCK certificate."""

    ppid: bytes
    sgx_tcb_svns: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    configuration: PlatformConfiguration | None

    @property
    def sgx_type_name(self) -> str:
        """"Standard", "Scalable" or "ScalableWithIntegrity"."""
        return SGX_TYPES.get(self.sgx_type, f"unknown({self.sgx_type})")


def _members(tlv: der.Tlv, what: str) -> dict[str, der.Tlv]:
    out: dict[str, der.Tlv] = {}
    for item in der.sequence(tlv, what):
        oid_tlv, value = der.sequence(item, what, 2)
        name = der.oid(oid_tlv, what)
        if name in out:
            raise Malformed(f"{what}: duplicate member", actual=name)
        out[name] = value
    return out


def _tcb(tlv: der.Tlv) -> tuple[tuple[int, ...], int, bytes]:
    members = _members(tlv, "SGX TCB")
    expected = {f"{_TCB_ARC}{i}" for i in range(1, 19)}
    if set(members) != expected:
        raise Malformed("SGX TCB: wrong members", expected="COMP01..16, PCESVN, CPUSVN",
                        actual=", ".join(sorted(set(members) ^ expected)))
    svns = []
    for i in range(1, 17):
        value = der.uint(members[f"{_TCB_ARC}{i}"], f"SGX TCB COMP{i:02d} SVN")
        if value > 0xFF:
            raise Malformed(f"SGX TCB COMP{i:02d} SVN out of range", expected="0..255",
                            actual=str(value))
        svns.append(value)
    pcesvn = der.uint(members[f"{_TCB_ARC}17"], "PCESVN")
    if pcesvn > 0xFFFF:
        raise Malformed("PCESVN out of range", expected="0..65535", actual=str(pcesvn))
    cpusvn = der.octets(members[f"{_TCB_ARC}18"], "CPUSVN", 16)
    return tuple(svns), pcesvn, cpusvn


def _configuration(tlv: der.Tlv) -> PlatformConfiguration:
    members = _members(tlv, "SGX Configuration")
    known = {f"{_CONFIG_ARC}{i}" for i in (1, 2, 3)}
    if not set(members) <= known:
        raise Malformed("SGX Configuration: unknown member",
                        actual=", ".join(sorted(set(members) - known)))

    def flag(i: int) -> bool | None:
        value = members.get(f"{_CONFIG_ARC}{i}")
        return None if value is None else der.boolean(value, f"SGX Configuration .7.{i}")

    return PlatformConfiguration(dynamic_platform=flag(1), cached_keys=flag(2),
                                 smt_enabled=flag(3))


def _parse(raw: bytes) -> SgxExtensions:
    """Decode without error translation (raises ``Malformed``)."""
    members = _members(der.read_one(raw, "SGX extension"), "SGX extension")
    known = {f"{SGX_ARC}.{i}" for i in range(1, 8)}
    unknown = set(members) - known
    missing = {f"{SGX_ARC}.{i}" for i in range(1, 6)} - set(members)
    if unknown or missing:
        raise Malformed("SGX extension: unknown or missing members",
                        expected="PPID, TCB, PCE-ID, FMSPC, SGX Type",
                        actual=f"unknown {sorted(unknown)} missing {sorted(missing)}")
    svns, pcesvn, cpusvn = _tcb(members[f"{SGX_ARC}.2"])
    sgx_type = der.uint(members[f"{SGX_ARC}.5"], "SGX Type", der.TAG_ENUMERATED)
    if sgx_type not in SGX_TYPES:
        raise Malformed("SGX Type unknown", expected="0, 1 or 2", actual=str(sgx_type))
    instance = members.get(f"{SGX_ARC}.6")
    config = members.get(f"{SGX_ARC}.7")
    return SgxExtensions(
        ppid=der.octets(members[f"{SGX_ARC}.1"], "PPID", 16), sgx_tcb_svns=svns,
        pcesvn=pcesvn, cpusvn=cpusvn,
        pce_id=der.octets(members[f"{SGX_ARC}.3"], "PCE-ID", 2),
        fmspc=der.octets(members[f"{SGX_ARC}.4"], "FMSPC", 6), sgx_type=sgx_type,
        platform_instance_id=(None if instance is None
                              else der.octets(instance, "PlatformInstanceID", 16)),
        configuration=None if config is None else _configuration(config))


def parse_sgx_extension(raw: bytes) -> SgxExtensions:
    """Decode the extnValue bytes of the SGX extension; raises ``ChainUntrusted``."""
    try:
        return _parse(raw)
    except Malformed as exc:
        raise ChainUntrusted(f"PCK SGX extension does not decode: {exc.reason}",
                             rule="pck-extension", expected=exc.expected,
                             actual=exc.actual) from exc


def decode_sgx_extensions(cert: x509.Certificate) -> SgxExtensions:
    """The SGX extension of a PCK certificate; raises ``ChainUntrusted`` if absent or bad."""
    try:
        ext = cert.extensions.get_extension_for_oid(OID_SGX_EXTENSION)
    except x509.ExtensionNotFound as exc:
        raise ChainUntrusted("PCK certificate has no SGX extension", rule="pck-extension",
                             expected=SGX_ARC, actual="absent") from exc
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ChainUntrusted(f"certificate extensions do not parse: {exc}") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ChainUntrusted("SGX extension has an unexpected type",
                             actual=type(value).__name__)
    return parse_sgx_extension(value.value)


def _member(arc: str, value: bytes) -> bytes:
    return der.der_tlv(0x30, der.der_oid(arc) + value)


def encode_sgx_extension(ext: SgxExtensions) -> bytes:
    """The extnValue DER of the SGX extension (see the module invariants)."""
    tcb = b"".join(_member(f"{SGX_ARC}.2.{i}", der.der_uint(svn))
                   for i, svn in enumerate(ext.sgx_tcb_svns, start=1))
    tcb += _member(f"{SGX_ARC}.2.17", der.der_uint(ext.pcesvn))
    tcb += _member(f"{SGX_ARC}.2.18", der.der_tlv(0x04, ext.cpusvn))
    members = [_member(f"{SGX_ARC}.1", der.der_tlv(0x04, ext.ppid)),
               _member(f"{SGX_ARC}.2", der.der_tlv(0x30, tcb)),
               _member(f"{SGX_ARC}.3", der.der_tlv(0x04, ext.pce_id)),
               _member(f"{SGX_ARC}.4", der.der_tlv(0x04, ext.fmspc)),
               _member(f"{SGX_ARC}.5", der.der_uint(ext.sgx_type, 0x0A))]
    if ext.platform_instance_id is not None:
        members.append(_member(f"{SGX_ARC}.6", der.der_tlv(0x04, ext.platform_instance_id)))
    if ext.configuration is not None:
        cfg = ext.configuration
        flags = b"".join(
            _member(f"{SGX_ARC}.7.{i}", der.der_tlv(0x01, b"\xff" if flag else b"\x00"))
            for i, flag in ((1, cfg.dynamic_platform), (2, cfg.cached_keys),
                            (3, cfg.smt_enabled)) if flag is not None)
        members.append(_member(f"{SGX_ARC}.7", der.der_tlv(0x30, flags)))
    return der.der_tlv(0x30, b"".join(members))
