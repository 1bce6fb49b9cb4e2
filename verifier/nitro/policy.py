"""The ``nitro:`` section of an appraisal policy, compiled into frozen values.

```yaml
nitro:
  pcrs:                       # PCRs that must be present (48 bytes) with one of the values
    - {pcr: 0, values: [<96 hex>]}       # the enclave image file
    - {pcr: 1, values: [<96 hex>]}       # kernel and boot ramfs
    - {pcr: 2, values: [<96 hex>]}       # the application
  signers: [<96 hex>]         # PCR8: the image was signed by one of these certificates
                              # (SHA-384 of the certificate's DER; PCR8 = SHA-384(0^48 || it))
  allow_debug: false          # a debug-mode enclave (PCR0-2 all zero) is PLATFORM_POLICY
```

Invariants:
- Compiling is strict (``keybroker.document_reader``): unknown keys, wrong types, bad hex, PCR
  indices outside 0..31 and a PCR named twice are ``Malformed`` naming the file and the key.
- The enclave's identity must be pinned: ``pcrs`` or ``signers`` must name something, unless
  a ``reference_values`` binding covers a PCR claim (``evidence.pcrs.<n>``).
- ``allow_debug`` defaults to false; debug enclaves are refused unless it is true.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from keybroker.document_reader import DocumentReader
from verifier.nitro.claims import PLATFORM_NITRO
from verifier.verdict import PolicyRef

PCR_LIMIT = 32
IDENTITY_CLAIMS = frozenset(f"evidence.pcrs.{pcr}" for pcr in range(PCR_LIMIT))
_KEYS = frozenset({"pcrs", "signers", "allow_debug"})


@dataclass(frozen=True)
class NitroPolicy:
    """Compiled ``nitro:`` section."""

    pcrs: Mapping[int, frozenset[bytes]] = field(default_factory=dict)
    signers: frozenset[bytes] = frozenset()  # SHA-384 fingerprints of signing certificates
    allow_debug: bool = False

    @property
    def signer_pcr8(self) -> frozenset[bytes]:
        """The PCR8 values of images signed by ``signers``."""
        return frozenset(hashlib.sha384(bytes(48) + fp).digest() for fp in self.signers)


def _pcrs(nitro: DocumentReader) -> Mapping[int, frozenset[bytes]]:
    out: dict[int, frozenset[bytes]] = {}
    for entry in nitro.tables("pcrs"):
        entry.check_keys(frozenset({"pcr", "values"}))
        pcr = entry.integer("pcr", entry.table.get("pcr"), 0, PCR_LIMIT - 1)
        if pcr in out:
            raise entry.fail("pcr", "PCR named twice", "one entry per PCR", pcr)
        out[pcr] = entry.hex_values("values", 48)
    return MappingProxyType(out)


def compile_nitro(nitro: DocumentReader, identity_referenced: bool) -> NitroPolicy:
    """Compile a ``nitro:`` mapping (module invariants)."""
    nitro.check_keys(frozenset(), _KEYS)
    policy = NitroPolicy(
        pcrs=_pcrs(nitro),
        signers=nitro.hex_values("signers", 48) if nitro.has("signers") else frozenset(),
        allow_debug=nitro.boolean("allow_debug", False))
    if not policy.pcrs and not policy.signers and not identity_referenced:
        raise nitro.missing("pcrs", "field 'pcrs' or 'signers' (or a reference_values binding "
                                    "of evidence.pcrs.<n>)")
    return policy


def nitro_section(policy: PolicyRef) -> NitroPolicy:
    """The ``nitro:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(NitroPolicy, PLATFORM_NITRO)
