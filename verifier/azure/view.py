"""The Azure CVM claims view: ``azure_claims_from_dict``, the exact inverse of
``AzureVmClaims.as_dict()``, and the sample claims policies are type-checked against.

Invariants:
- ``azure_claims_from_dict(c.as_dict()) == c``. Input is untrusted: ``verifier.claim_fields``
  rules for every key of this family. ``hardware`` and ``vm_configuration`` are kept as the
  maps they are (the hardware family's own claims, the HCL's JSON); ``hardware.platform`` must
  be the platform's hardware (sev-snp or tdx).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from verifier.azure.claims import CLAIMS_TYPES, PLATFORM_AZ_SNP, PLATFORM_AZ_TDX, AzureVmClaims
from verifier.claim_fields import U32, ClaimFields, describe

_KEYS = frozenset({"platform", "hardware", "measurement", "debug", "tcb_status",
                   "collateral_warnings", "vm_configuration", "user_data", "pcrs",
                   "extra_data", "reset_count", "restart_count", "insecure_root"})
_HARDWARE = {PLATFORM_AZ_SNP: "sev-snp", PLATFORM_AZ_TDX: "tdx"}
_HEX_RE = re.compile(r"(?:[0-9a-f]{2}){0,64}")


def _map(fields: ClaimFields, key: str) -> dict[str, Any]:
    value = fields.raw(key)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise fields.fail(key, "a map", describe(value))
    return dict(value)


def _pcrs(fields: ClaimFields) -> dict[int, bytes]:
    value = _map(fields, "pcrs")
    sub = ClaimFields(value, f"{fields.path}.pcrs", value.keys())
    out: dict[int, bytes] = {}
    for key in value:
        if not key.isdigit() or int(key) > 23:
            raise sub.fail(key, "PCR index 0..23", key)
        out[int(key)] = sub.hex_bytes(key, 32)
    return out


def azure_claims_from_dict(evidence: Mapping[str, object]) -> AzureVmClaims:
    """The exact inverse of ``AzureVmClaims.as_dict()`` (see the module invariants)."""
    f = ClaimFields(evidence, "evidence", _KEYS)
    platform = f.string("platform", choices=tuple(_HARDWARE))
    hardware = _map(f, "hardware")
    if hardware.get("platform") != _HARDWARE[platform]:
        raise f.fail("hardware", f"claims of platform {_HARDWARE[platform]}",
                     hardware.get("platform"))
    measurement = bytes.fromhex(f.string("measurement", pattern=re.compile(r"[0-9a-f]{96}"),
                                         what="96 hex digits"))
    return CLAIMS_TYPES[platform](
        platform=platform, hardware=hardware, measurement=measurement,
        debug=f.boolean("debug"), tcb_status=f.opt_string("tcb_status"),
        collateral_warnings=f.strings("collateral_warnings"),
        vm_configuration=_map(f, "vm_configuration"),
        user_data=bytes.fromhex(f.string("user_data", pattern=_HEX_RE, what="hex")),
        pcrs=_pcrs(f),
        extra_data=bytes.fromhex(f.string("extra_data", pattern=_HEX_RE, what="hex")),
        reset_count=f.integer("reset_count", U32), restart_count=f.integer("restart_count", U32),
        insecure=f.boolean("insecure_root"))


def sample_azure_claims(platform: str) -> AzureVmClaims:
    """Realistic, fully populated claims of ``platform`` (hardware kept minimal)."""
    return CLAIMS_TYPES[platform](
        platform=platform,
        hardware={"platform": _HARDWARE[platform], "measurement": "6a" * 48},
        measurement=bytes.fromhex("6a" * 48), debug=False,
        tcb_status="UpToDate" if platform == PLATFORM_AZ_TDX else None,
        collateral_warnings=("ARK-Milan CRL missing",),
        vm_configuration={"console-enabled": True, "secure-boot": True, "tpm-enabled": True,
                          "vmUniqueId": "26F8BC30-774E-4290-8E7A-535F3B672AEE"},
        user_data=bytes.fromhex("33" * 64), pcrs={i: bytes([i]) * 32 for i in range(24)},
        extra_data=bytes.fromhex("33" * 64), reset_count=1, restart_count=0, insecure=False)
