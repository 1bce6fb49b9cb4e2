"""The ``tpm:`` section of an appraisal policy, compiled into frozen values.

```yaml
tpm:
  ak_trust: [enrolled, certificate]   # how the AK may be trusted (default: both)
  pcrs:                               # required PCRs: each must be quoted with an accepted value
    - {bank: sha256, pcr: 7, values: [<64 hex>, ...]}
  require_event_log: true             # the boot log must replay to the quote (default false)
  secure_boot: true                   # the replayed log must show SecureBoot=1 (default false)
  ima:                                # IMA runtime policy (the IMA log becomes required)
    allow:
      - {path: "/usr/bin/*", digests: ["sha256:<64 hex>", ...]}
    exclude: ["/tmp/*"]
```

Invariants:
- Compiling is strict (``keybroker.document_reader``): unknown keys, wrong types, bad hex and
  out-of-range PCR indices are ``Malformed`` naming the file, the line and the key. A PCR named
  twice in one bank is refused (its value lists would have to be merged silently).
- ``pcrs`` is required unless a ``reference_values`` binding covers a PCR claim
  (``evidence.pcrs.<bank>.<index>``); then it may be absent (compiled to None).
- Switches default to the strict or the neutral setting: both AK trust modes are strong
  (configured roots); the event log, secure boot and IMA are required only when named, and
  once named their absence in the evidence is a denial, never a pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from keybroker.document_reader import DocumentReader
from keybroker.evidence.tcg_log import HASH_NAMES, KNOWN_DIGEST_SIZES
from verifier.eventlog.pcr import PCR_COUNT
from verifier.tpm.claims import PLATFORM_TPM
from verifier.verdict import PolicyRef

AK_TRUST_MODES = ("enrolled", "certificate")
BANK_SIZES = {name: KNOWN_DIGEST_SIZES[alg] for alg, name in HASH_NAMES.items()}
IDENTITY_CLAIMS = frozenset(f"evidence.pcrs.{bank}.{pcr}" for bank in BANK_SIZES
                            for pcr in range(PCR_COUNT))
_OPTIONAL = frozenset({"ak_trust", "pcrs", "require_event_log", "secure_boot", "ima"})
_DIGEST_RE = re.compile(r"sha1:[0-9a-f]{40}|sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|"
                        r"sha512:[0-9a-f]{128}")
_PATTERN_RE = re.compile(r"/[^\x00]{0,4095}")


@dataclass(frozen=True)
class ImaRule:
    """Files whose path matches ``path`` (fnmatch) may have one of ``digests``."""

    path: str
    digests: frozenset[str]  # "alg:hex"


@dataclass(frozen=True)
class ImaPolicy:
    """The IMA runtime policy: every measured file not excluded must match an allow rule."""

    allow: tuple[ImaRule, ...]
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class TpmPolicy:
    """Compiled ``tpm:`` section (``pcrs`` None = covered by a reference binding)."""

    pcrs: Mapping[str, Mapping[int, frozenset[bytes]]] | None
    ak_trust: frozenset[str] = frozenset(AK_TRUST_MODES)
    require_event_log: bool = False
    secure_boot: bool = False
    ima: ImaPolicy | None = None


def _pcrs(tpm: DocumentReader) -> Mapping[str, Mapping[int, frozenset[bytes]]]:
    out: dict[str, dict[int, frozenset[bytes]]] = {}
    for entry in tpm.tables("pcrs"):
        entry.check_keys(frozenset({"bank", "pcr", "values"}))
        bank = entry.string("bank")
        if bank not in BANK_SIZES:
            raise entry.fail("bank", "unknown bank", " | ".join(BANK_SIZES), bank)
        pcr = entry.integer("pcr", entry.table.get("pcr"), 0, PCR_COUNT - 1)
        if pcr in out.get(bank, {}):
            raise entry.fail("pcr", "PCR named twice", f"one entry per {bank} PCR", pcr)
        out.setdefault(bank, {})[pcr] = entry.hex_values("values", BANK_SIZES[bank])
    return MappingProxyType({bank: MappingProxyType(values) for bank, values in out.items()})


def _ima(ima: DocumentReader) -> ImaPolicy:
    ima.check_keys(frozenset({"allow"}), frozenset({"exclude"}))
    rules = []
    for rule in ima.tables("allow"):
        rule.check_keys(frozenset({"path", "digests"}))
        path = rule.string("path")
        if not _PATTERN_RE.fullmatch(path):
            raise rule.fail("path", "invalid value", "an absolute path pattern", path)
        digests = rule.strings("digests", [], _DIGEST_RE, "alg:hex (sha256:<64 hex>, ...)")
        rules.append(ImaRule(path, frozenset(digests)))
    if not rules:
        raise ima.missing("allow", "at least one allow rule")
    exclude = ima.strings("exclude", [], _PATTERN_RE, "an absolute path pattern")
    return ImaPolicy(tuple(rules), exclude)


def compile_tpm(tpm: DocumentReader, pcrs_referenced: bool) -> TpmPolicy:
    """Compile a ``tpm:`` mapping; ``pcrs_referenced``: a reference binding covers a PCR."""
    tpm.check_keys(frozenset(), _OPTIONAL)
    if not tpm.has("pcrs") and not pcrs_referenced:
        raise tpm.missing("pcrs", "field 'pcrs' (or a reference_values binding of a PCR claim "
                                  "such as evidence.pcrs.sha256.7)")
    modes = tpm.strings("ak_trust", list(AK_TRUST_MODES),
                        re.compile("|".join(AK_TRUST_MODES)), " | ".join(AK_TRUST_MODES))
    return TpmPolicy(
        pcrs=_pcrs(tpm) if tpm.has("pcrs") else None,
        ak_trust=frozenset(modes),
        require_event_log=tpm.boolean("require_event_log", False),
        secure_boot=tpm.boolean("secure_boot", False),
        ima=_ima(tpm.table_at("ima")) if tpm.has("ima") else None,
    )


def tpm_section(policy: PolicyRef) -> TpmPolicy:
    """The ``tpm:`` rules of ``policy``; ``Malformed`` for a policy of another platform."""
    return policy.section(TpmPolicy, PLATFORM_TPM)
