"""The ``maa:`` section of an appraisal policy, compiled into frozen values.

```yaml
maa:
  issuers: [https://sharedeus.eus.attest.azure.net]   # accepted MAA instances (required)
  attestation_types: [sgx]                             # sgx | sevsnpvm | tdxvm ... (required)
  sgx:                                                 # SGX enclaves (x-ms-sgx-*)
    mrenclave: [<64 hex>]                              # and/or
    mrsigner: [<64 hex>]
    product_id: 1
    min_svn: 1
  secure_boot: true                                    # confidential VMs: secureboot claim
  launch_measurements: [<96 hex>]                      # SEV-SNP CVMs: the launch measurement
```

Invariants:
- Compiling is strict (``keybroker.document_reader``): unknown keys, wrong types, bad hex and
  empty lists are ``Malformed`` naming the file, the line and the key.
- ``issuers`` and ``attestation_types`` are required: a policy never accepts every instance or
  every kind of attested party by omission. Debuggable enclaves are always refused.
- An ``sgx`` section needs ``mrenclave`` or ``mrsigner``; ``min_svn`` and ``product_id`` apply
  with either. Accepting attestation type ``sgx`` requires an ``sgx`` section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from keybroker.document_reader import DocumentReader
from verifier.maa.claims import PLATFORM_MAA
from verifier.verdict import PolicyRef

IDENTITY_CLAIMS = frozenset({"evidence.sgx.mrenclave", "evidence.sgx.mrsigner"})
_ISSUER_RE = re.compile(r"https://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?/?")
_TYPE_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")


@dataclass(frozen=True)
class MaaSgxPolicy:
    """The SGX enclave rules of a ``maa:`` section."""

    mrenclave: frozenset[bytes] | None
    mrsigner: frozenset[bytes] | None
    product_id: int | None
    min_svn: int


@dataclass(frozen=True)
class MaaPolicy:
    """Compiled ``maa:`` section."""

    issuers: frozenset[str]
    attestation_types: frozenset[str]
    sgx: MaaSgxPolicy | None = None
    secure_boot: bool = False
    launch_measurements: frozenset[bytes] | None = None


def _sgx(sgx: DocumentReader) -> MaaSgxPolicy:
    sgx.check_keys(frozenset(), frozenset({"mrenclave", "mrsigner", "product_id", "min_svn"}))
    if not sgx.has("mrenclave") and not sgx.has("mrsigner"):
        raise sgx.missing("mrenclave", "field 'mrenclave' or 'mrsigner'")
    return MaaSgxPolicy(
        mrenclave=sgx.hex_values("mrenclave", 32) if sgx.has("mrenclave") else None,
        mrsigner=sgx.hex_values("mrsigner", 32) if sgx.has("mrsigner") else None,
        product_id=(sgx.integer("product_id", sgx.table["product_id"], 0, 0xFFFF)
                    if sgx.has("product_id") else None),
        min_svn=sgx.integer("min_svn", sgx.table.get("min_svn", 0), 0, 0xFFFF))


def compile_maa(maa: DocumentReader, identity_referenced: bool) -> MaaPolicy:
    """Compile a ``maa:`` mapping (``identity_referenced`` is accepted for the registry's
    signature; the identity rules are all optional here)."""
    del identity_referenced
    maa.check_keys(frozenset({"issuers", "attestation_types"}),
                   frozenset({"sgx", "secure_boot", "launch_measurements"}))
    types = frozenset(maa.strings("attestation_types", [], _TYPE_RE,
                                  "an x-ms-attestation-type (sgx, sevsnpvm, ...)"))
    if "sgx" in types and not maa.has("sgx"):
        raise maa.missing("sgx", "an 'sgx' section pinning the enclave (attestation type sgx "
                                 "is accepted)")
    return MaaPolicy(
        issuers=frozenset(i.rstrip("/") for i in maa.strings(
            "issuers", [], _ISSUER_RE, "an https:// MAA instance URL")),
        attestation_types=types,
        sgx=_sgx(maa.table_at("sgx")) if maa.has("sgx") else None,
        secure_boot=maa.boolean("secure_boot", False),
        launch_measurements=(maa.hex_values("launch_measurements", 48)
                             if maa.has("launch_measurements") else None),
    )


def maa_section(policy: PolicyRef) -> MaaPolicy:
    """The ``maa:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(MaaPolicy, PLATFORM_MAA)
