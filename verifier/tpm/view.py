"""The TPM claims view: ``tpm_claims_from_dict``, the exact inverse of ``TpmClaims.as_dict()``,
and the sample claims policies are type-checked against.

Invariants:
- ``tpm_claims_from_dict(c.as_dict()) == c`` for every claims value. Input is untrusted:
  ``verifier.claim_fields`` rules (every key, no unknown key, no coercion, ``Malformed`` rule
  ``claims.schema`` naming the dotted path); PCR values must have their bank's size.
- ``sample_tpm_claims`` is a realistic, fully populated value (no null, no empty map): a type
  template for CEL conditions, not evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from verifier.claim_fields import U32, U64, ClaimFields, describe
from verifier.eventlog.boot import BootClaims
from verifier.eventlog.secure_boot import SecureBootClaims
from verifier.tpm.claims import PLATFORM_TPM, TpmClaims
from verifier.tpm.policy import BANK_SIZES

_KEYS = frozenset({
    "platform", "ak_name", "ak_key", "signature", "extra_data", "nonce_checked", "clock",
    "reset_count", "restart_count", "firmware_version", "pcrs", "eventlog_pcrs", "ak_chain",
    "ak_trust", "insecure_root", "ima", "secure_boot", "boot"})
_BOOT_KEYS = frozenset({"firmware", "boot_applications", "kernel", "initrd", "kernel_cmdline"})
_HEX_RE = re.compile(r"(?:[0-9a-f]{2}){0,130}")
_FIRMWARE_RE = re.compile(r"0x[0-9a-f]{16}")
_DIGEST_RE = re.compile(r"[a-z0-9]{1,16}:[0-9a-f]{1,256}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _hex(fields: ClaimFields, key: str) -> bytes:
    return bytes.fromhex(fields.string(key, pattern=_HEX_RE, what="lowercase hex"))


def _map(fields: ClaimFields, key: str) -> Mapping[object, object]:
    value = fields.raw(key)
    if not isinstance(value, Mapping):
        raise fields.fail(key, "a map", value)
    return value


def _pcrs(fields: ClaimFields) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in _map(fields, "pcrs").items():
        size = BANK_SIZES.get(str(bank))
        if size is None or not isinstance(values, Mapping):
            raise fields.fail("pcrs", "bank name -> map of PCR index to hex",
                              f"{describe(bank)}: {describe(values)}")
        sub = ClaimFields(values, f"{fields.path}.pcrs.{bank}", {str(k) for k in values})
        out[str(bank)] = {}
        for index in values:
            if not str(index).isdigit() or int(str(index)) > 23:
                raise sub.fail(str(index), "PCR index 0..23", index)
            out[str(bank)][int(str(index))] = sub.hex_bytes(str(index), size)
    return out


def _eventlog_pcrs(fields: ClaimFields) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for bank, pcrs in _map(fields, "eventlog_pcrs").items():
        if (str(bank) not in BANK_SIZES or not isinstance(pcrs, list)
                or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 23
                           for p in pcrs)):
            raise fields.fail("eventlog_pcrs", "bank name -> list of PCR indices 0..23",
                              f"{describe(bank)}: {describe(pcrs)}")
        out[str(bank)] = tuple(int(p) for p in pcrs)
    return out


def _ima(fields: ClaimFields) -> tuple[dict[str, str] | None, int]:
    if fields.is_null("ima"):
        return None, 0
    ima = fields.sub("ima", {"files", "pending"})
    files: dict[str, str] = {}
    for path, digest in _map(ima, "files").items():
        if not isinstance(path, str) or not isinstance(digest, str) \
                or not _DIGEST_RE.fullmatch(digest):
            raise ima.fail("files", "path -> alg:hex", f"{describe(path)}: {describe(digest)}")
        files[path] = digest
    return files, ima.integer("pending", U32)


def _secure_boot(fields: ClaimFields) -> SecureBootClaims | None:
    if fields.is_null("secure_boot"):
        return None
    boot = fields.sub("secure_boot", {"enabled", "variables"})
    variables: dict[str, str] = {}
    for name, digest in _map(boot, "variables").items():
        if not isinstance(name, str) or not isinstance(digest, str) \
                or not _SHA256_RE.fullmatch(digest):
            raise boot.fail("variables", "name -> SHA-256 hex",
                            f"{describe(name)}: {describe(digest)}")
        variables[name] = digest
    return SecureBootClaims(enabled=boot.boolean("enabled"), variables=variables)


def _boot(fields: ClaimFields) -> BootClaims | None:
    if fields.is_null("boot"):
        return None
    boot = fields.sub("boot", _BOOT_KEYS)
    return BootClaims(firmware=boot.strings("firmware"),
                      boot_applications=boot.strings("boot_applications"),
                      kernel=boot.opt_string("kernel"), initrd=boot.opt_string("initrd"),
                      kernel_cmdline=boot.opt_string("kernel_cmdline"))


def tpm_claims_from_dict(evidence: Mapping[str, object]) -> TpmClaims:
    """The exact inverse of ``TpmClaims.as_dict()`` (see the module invariants)."""
    f = ClaimFields(evidence, "evidence", _KEYS)
    f.string("platform", choices=(PLATFORM_TPM,))
    ima_files, ima_pending = _ima(f)
    return TpmClaims(
        ak_name=_hex(f, "ak_name"),
        ak_key=f.string("ak_key"),
        signature=f.string("signature"),
        extra_data=_hex(f, "extra_data"),
        nonce_checked=f.boolean("nonce_checked"),
        clock=f.integer("clock", U64),
        reset_count=f.integer("reset_count", U32),
        restart_count=f.integer("restart_count", U32),
        firmware_version=int(f.string("firmware_version", pattern=_FIRMWARE_RE,
                                      what="0x and 16 hex digits"), 16),
        pcrs=_pcrs(f),
        eventlog_pcrs=_eventlog_pcrs(f),
        ak_chain=f.strings("ak_chain"),
        ima_files=ima_files,
        ima_pending=ima_pending,
        secure_boot=_secure_boot(f),
        ak_trust=f.string("ak_trust", choices=("enrolled", "certificate", "operator")),
        insecure=f.boolean("insecure_root"),
        boot=_boot(f),
    )


def sample_tpm_claims() -> TpmClaims:
    """Realistic, fully populated claims of an enrolled AK's quote with a replayed boot log
    and IMA log."""
    return TpmClaims(
        ak_name=bytes.fromhex("000b" + "5a" * 32), ak_key="ECC-P256", signature="ECDSA-SHA256",
        extra_data=bytes.fromhex("33" * 64), nonce_checked=True, clock=123456789,
        reset_count=3, restart_count=0, firmware_version=0x2000_0000_0016_0000,
        pcrs={"sha256": {i: bytes([i]) * 32 for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10)}},
        eventlog_pcrs={"sha256": (0, 1, 2, 3, 4, 5, 6, 7)},
        ak_chain=("EK " + "ab" * 32,),
        ima_files={"/usr/bin/workload": "sha256:" + "cd" * 32}, ima_pending=0,
        secure_boot=SecureBootClaims(enabled=True, variables={"PK": "01" * 32, "db": "02" * 32}),
        ak_trust="enrolled", insecure=False,
        boot=BootClaims(firmware=("0a" * 32,), boot_applications=("0b" * 32, "0c" * 32),
                        kernel="0c" * 32, initrd="0d" * 32,
                        kernel_cmdline="console=ttyS0 root=/dev/vda1 ro"),
    )

