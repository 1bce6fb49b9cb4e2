"""Appraisal policies: YAML documents (schema ``appraisal-policy``) that say which SEV-SNP
guests, TDX trust domains or SGX enclaves are acceptable, compiled once into a frozen
``AppraisalPolicy``.

Invariants:
- A document is loaded with ``keybroker.document.load_document`` (strict YAML, the published
  JSON Schema) and then compiled: sets of accepted byte values, a TCB floor mapping, compiled
  CEL conditions. Appraisal does no parsing.
- Compiling is strict: an unknown field, a missing required field, a wrong type (``true`` is
  not an integer), bad hex, an out-of-range value, a CEL expression that does not compile or
  type-check, a duplicate condition name or reference binding raises ``Malformed`` whose
  reason starts with ``<file>:<line>:`` and names the dotted path, with the expected and the
  found value. Nothing is silently defaulted to a permissive value: optional switches default
  to the strict setting.
- ``platform`` selects exactly one section: "sev-snp" -> ``snp:``, "tdx" -> ``tdx:``,
  "sgx" -> ``sgx:`` (see ``verifier.dcap.policy``); another platform's section is refused.
  Asking a policy for another platform's rules (``policy.tdx`` of an SNP policy) is
  ``Malformed`` naming both platforms, so a policy can never be applied to the wrong evidence.
- The launch identity is always checked: ``snp.measurements`` is required unless a
  ``reference_values`` binding covers ``evidence.measurement`` (``tdx.mrtd``:
  ``evidence.mr_td``; SGX MRENCLAVE / signer: ``evidence.mr_enclave`` or
  ``evidence.mr_signer``). Only then may the typed field be absent; it compiles to ``None``
  and the binding does the check. An empty list matches nothing (fail closed).
- Reference bindings name a claim of the claims view (``evidence.`` or ``workload.``) that
  exists for the platform and holds a value or a list of values; each claim is bound once.
- The document holds no version: the policy store assigns it (``version`` 0 = not stored).
  ``digest`` is the SHA-256 of the exact document bytes and ``document`` the bytes, so a token
  names the reviewed document.
- An empty ``host_data`` list means HOST_DATA is not checked against an allow-list.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from keybroker.condition import Condition, ConditionError, compile_condition
from keybroker.document import Document, load_document, read_document
from keybroker.document_reader import PolicyReader
from keybroker.errors import Category, Malformed
from verifier.dcap.policy import IMAGE_RE, SgxPolicy, TdxPolicy, compile_sgx, compile_tdx
from verifier.snp.tcb import COMPONENTS
from verifier.workload import NAME_RE

SCHEMA = "appraisal-policy"
KIND = "AppraisalPolicy"
PLATFORM_SNP = "sev-snp"
PLATFORM_TDX = "tdx"
PLATFORM_SGX = "sgx"
PLATFORMS = (PLATFORM_SNP, PLATFORM_TDX, PLATFORM_SGX)
SECTIONS = {PLATFORM_SNP: "snp", PLATFORM_TDX: "tdx", PLATFORM_SGX: "sgx"}
MEASUREMENT_SIZE = 48
HOST_DATA_SIZE = 32
CONDITION_CATEGORIES = (Category.PLATFORM_POLICY, Category.TCB_POLICY, Category.MEASUREMENT)
# Claims whose reference binding replaces the typed launch-identity check of a platform.
IDENTITY_CLAIMS = {
    PLATFORM_SNP: frozenset({"evidence.measurement"}),
    PLATFORM_TDX: frozenset({"evidence.mr_td"}),
    PLATFORM_SGX: frozenset({"evidence.mr_enclave", "evidence.mr_signer"}),
}

_TOP_REQUIRED = frozenset({"kind", "name", "platform"})
_TOP_OPTIONAL = frozenset({"description", "workload", "reference_values", "tcb_early_warning",
                           "conditions"})
_SNP_OPTIONAL = frozenset({
    "measurements", "allow_debug", "allowed_vmpls", "allow_migration_agent", "allow_smt",
    "allow_provisional_firmware", "host_data",
})
_IMAGE_WHAT = "sha256:<64 lowercase hex digits>"
_NAME_WHAT = "1-64 of [A-Za-z0-9._-], starting with a letter or digit"


@dataclass(frozen=True)
class SnpPolicy:
    """Compiled ``snp:`` section (``measurements`` None = covered by a reference binding)."""

    measurements: frozenset[bytes] | None
    min_tcb: Mapping[str, int]
    allow_debug: bool = False
    allowed_vmpls: frozenset[int] = frozenset({0})
    allow_migration_agent: bool = False
    allow_smt: bool = False
    allow_provisional_firmware: bool = False
    host_data: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class WorkloadPolicy:
    """Compiled ``workload:`` section (platform-neutral; ``None`` = that allow-list is not
    checked, an empty set allows nothing)."""

    require_init_data: bool = False
    names: frozenset[str] | None = None
    approved_images: frozenset[str] | None = None


@dataclass(frozen=True)
class ReferenceBinding:
    """The claim at ``claim`` must match a value of the reference-value set ``set_name``."""

    claim: str
    set_name: str
    line: int


@dataclass(frozen=True)
class ConditionRule:
    """A compiled CEL condition; false denies with ``category``, rule ``conditions.<name>``."""

    name: str
    condition: Condition
    category: Category
    message: str
    line: int


@dataclass(frozen=True)
class TcbEarlyWarning:
    """The next TCB floor (reported as TCB debt; never changes a decision)."""

    snp_min_tcb: Mapping[str, int] | None = None
    min_tcb_date: datetime | None = None


PlatformRules = SnpPolicy | TdxPolicy | SgxPolicy
_R = TypeVar("_R", SnpPolicy, TdxPolicy, SgxPolicy)


@dataclass(frozen=True)
class AppraisalPolicy:
    """One compiled appraisal policy; ``rules`` is the compiled section of its platform."""

    name: str
    version: int
    platform: str
    digest: str
    rules: PlatformRules
    source: str = ""
    workload: WorkloadPolicy = WorkloadPolicy()
    references: tuple[ReferenceBinding, ...] = ()
    conditions: tuple[ConditionRule, ...] = ()
    early_warning: TcbEarlyWarning = TcbEarlyWarning()
    document: bytes = b""

    @property
    def policy_id(self) -> str:
        """``<name>@<version>``, as in ``ear.appraisal-policy-id``."""
        return f"{self.name}@{self.version}"

    def with_version(self, version: int) -> AppraisalPolicy:
        """The same compiled policy as stored version ``version``."""
        return dataclasses.replace(self, version=version)

    def _rules(self, kind: type[_R], platform: str) -> _R:
        if not isinstance(self.rules, kind):
            raise Malformed(
                f"appraisal policy {self.policy_id} is for platform {self.platform}, "
                f"not {platform}", rule="policy.platform", expected=platform,
                actual=self.platform)
        return self.rules

    @property
    def snp(self) -> SnpPolicy:
        """The ``snp:`` rules; ``Malformed`` for a policy of another platform."""
        return self._rules(SnpPolicy, PLATFORM_SNP)

    @property
    def tdx(self) -> TdxPolicy:
        """The ``tdx:`` rules; ``Malformed`` for a policy of another platform."""
        return self._rules(TdxPolicy, PLATFORM_TDX)

    @property
    def sgx(self) -> SgxPolicy:
        """The ``sgx:`` rules; ``Malformed`` for a policy of another platform."""
        return self._rules(SgxPolicy, PLATFORM_SGX)


def _tcb_floor(reader: PolicyReader, key: str) -> Mapping[str, int]:
    floor = reader.table_at(key)
    floor.check_keys(frozenset(), frozenset(COMPONENTS))
    return MappingProxyType({name: floor.integer(name, value, 0, 255)
                             for name, value in floor.table.items()})


def _compile_snp(snp: PolicyReader, *, measurement_referenced: bool) -> SnpPolicy:
    snp.check_keys(frozenset({"min_tcb"}), _SNP_OPTIONAL)
    if not snp.has("measurements") and not measurement_referenced:
        raise snp.missing("measurements", "field 'measurements' (or a reference_values "
                                          "binding of evidence.measurement)")
    vmpls = frozenset(snp.integer("allowed_vmpls", v, 0, 3, (i,))
                      for i, v in enumerate(snp.array("allowed_vmpls", [0])))
    return SnpPolicy(
        measurements=(snp.hex_values("measurements", MEASUREMENT_SIZE)
                      if snp.has("measurements") else None),
        min_tcb=_tcb_floor(snp, "min_tcb"),
        allow_debug=snp.boolean("allow_debug", False),
        allowed_vmpls=vmpls,
        allow_migration_agent=snp.boolean("allow_migration_agent", False),
        allow_smt=snp.boolean("allow_smt", False),
        allow_provisional_firmware=snp.boolean("allow_provisional_firmware", False),
        host_data=snp.hex_values("host_data", HOST_DATA_SIZE),
    )


def _compile_rules(platform: str, section: PolicyReader,
                   references: tuple[ReferenceBinding, ...]) -> PlatformRules:
    referenced = any(b.claim in IDENTITY_CLAIMS[platform] for b in references)
    if platform == PLATFORM_TDX:
        return compile_tdx(section, mrtd_referenced=referenced)
    if platform == PLATFORM_SGX:
        return compile_sgx(section, identity_referenced=referenced)
    return _compile_snp(section, measurement_referenced=referenced)


def _compile_workload(top: PolicyReader, platform: str) -> WorkloadPolicy:
    if not top.has("workload"):
        return WorkloadPolicy()
    workload = top.table_at("workload")
    workload.check_keys(frozenset(), frozenset({"require_init_data", "names",
                                                "approved_images"}))
    require = workload.boolean("require_init_data", False)
    if platform == PLATFORM_SGX:
        # SGX has no launch register for init-data: these rules could never pass.
        for key in ("require_init_data", "names", "approved_images"):
            if workload.has(key) and (key != "require_init_data" or require):
                raise workload.fail(key, "not supported for platform sgx",
                                    "absent (an SGX enclave has no init-data register)",
                                    workload.table[key])
    names = (frozenset(workload.strings("names", [], NAME_RE, _NAME_WHAT))
             if workload.has("names") else None)
    images = (frozenset(workload.strings("approved_images", [], IMAGE_RE, _IMAGE_WHAT))
              if workload.has("approved_images") else None)
    return WorkloadPolicy(require_init_data=require, names=names, approved_images=images)


def _sample(platform: str) -> Mapping[str, object]:
    from verifier.claims_view import sample_activation  # noqa: PLC0415 - imports this module

    return sample_activation(platform)


def _claim_value(sample: Mapping[str, object], claim: str) -> object:
    from verifier.claims_view import lookup  # noqa: PLC0415 - imports this module

    return lookup(sample, claim)


def _compile_references(top: PolicyReader, platform: str) -> tuple[ReferenceBinding, ...]:
    entries = top.tables("reference_values")
    if not entries:
        return ()
    sample = _sample(platform)
    seen: dict[str, int] = {}
    out: list[ReferenceBinding] = []
    for entry in entries:
        entry.check_keys(frozenset({"claim", "set"}))
        claim = entry.string("claim")
        set_name = entry.string("set")
        if not claim.startswith(("evidence.", "workload.")):
            raise entry.fail("claim", "invalid claim path",
                             "a dotted path starting with evidence. or workload.", claim)
        if not NAME_RE.fullmatch(set_name):
            raise entry.fail("set", "invalid set name", _NAME_WHAT, set_name)
        if claim in seen:
            raise entry.fail("claim", f"claim bound twice (first on line {seen[claim]})",
                             "each claim bound to one reference-value set", claim)
        try:
            value = _claim_value(sample, claim)
        except Malformed:
            raise entry.fail("claim", f"no such claim for platform {platform}",
                             "an existing claim path such as " + min(IDENTITY_CLAIMS[platform]),
                             claim) from None
        if isinstance(value, Mapping):
            raise entry.fail("claim", "claim is a map, not a value",
                             "a claim holding a value or a list of values", claim)
        line = entry.line("claim")
        seen[claim] = line
        out.append(ReferenceBinding(claim=claim, set_name=set_name, line=line))
    return tuple(out)


def _compile_conditions(top: PolicyReader, platform: str) -> tuple[ConditionRule, ...]:
    entries = top.tables("conditions")
    if not entries:
        return ()
    sample = _sample(platform)
    seen: dict[str, int] = {}
    out: list[ConditionRule] = []
    categories = {c.value: c for c in CONDITION_CATEGORIES}
    for entry in entries:
        entry.check_keys(frozenset({"name", "when"}), frozenset({"category", "message"}))
        name = entry.string("name")
        if not NAME_RE.fullmatch(name):
            raise entry.fail("name", "invalid condition name", _NAME_WHAT, name)
        if name in seen:
            raise entry.fail("name", f"duplicate condition name (first on line {seen[name]})",
                             "a name unique in the policy", name)
        seen[name] = entry.line("name")
        category = entry.string("category", Category.PLATFORM_POLICY.value)
        if category not in categories:
            raise entry.fail("category", "value not allowed",
                             "one of: " + ", ".join(categories), category)
        expression = entry.string("when")
        try:
            condition = compile_condition(expression, sample)
        except ConditionError as exc:
            raise entry.fail_at(("when",), "invalid CEL condition",
                                "a CEL expression over platform, evidence and workload "
                                "that evaluates to a boolean", str(exc)[:300]) from None
        out.append(ConditionRule(name=name, condition=condition,
                                 category=categories[category],
                                 message=entry.string("message", ""),
                                 line=entry.line("when")))
    return tuple(out)


def _compile_early_warning(top: PolicyReader, platform: str) -> TcbEarlyWarning:
    if not top.has("tcb_early_warning"):
        return TcbEarlyWarning()
    warning = top.table_at("tcb_early_warning")
    warning.check_keys(frozenset(), frozenset({"snp_min_tcb", "min_tcb_date"}))
    for key, allowed in (("snp_min_tcb", (PLATFORM_SNP,)),
                         ("min_tcb_date", (PLATFORM_TDX, PLATFORM_SGX))):
        if warning.has(key) and platform not in allowed:
            raise warning.fail_at((key,), f"field '{key}' is not allowed when platform is "
                                          f"'{platform}'", "not present", key)
    return TcbEarlyWarning(
        snp_min_tcb=(_tcb_floor(warning, "snp_min_tcb") if warning.has("snp_min_tcb")
                     else None),
        min_tcb_date=warning.instant("min_tcb_date"),
    )


def compile_policy(doc: Document, version: int = 0) -> AppraisalPolicy:
    """Compile a loaded, schema-validated appraisal policy document."""
    top = PolicyReader(doc, (), doc.data)
    top.check_keys(_TOP_REQUIRED, _TOP_OPTIONAL | frozenset(SECTIONS.values()))
    kind = top.string("kind")
    if kind != KIND:
        raise top.fail("kind", "wrong document kind", KIND, kind)
    name = top.string("name")
    if not NAME_RE.fullmatch(name):
        raise top.fail("name", "invalid policy name", _NAME_WHAT, name)
    platform = top.string("platform")
    if platform not in PLATFORMS:
        raise top.fail("platform", "unsupported platform", "one of: " + ", ".join(PLATFORMS),
                       platform)
    section = SECTIONS[platform]
    for other in SECTIONS.values():
        if other != section and top.has(other):
            raise top.fail_at((other,), f"field '{other}' is not allowed when platform is "
                                        f"'{platform}'", "not present", other)
    if not top.has(section):
        raise top.missing(section, f"field '{section}' when platform is '{platform}'")
    if version < 0:
        raise Malformed(f"{doc.source}: invalid policy version", rule="policy.version",
                        expected=">= 0", actual=str(version))
    top.string("description", "")
    references = _compile_references(top, platform)
    return AppraisalPolicy(
        name=name,
        version=version,
        platform=platform,
        digest=hashlib.sha256(doc.raw).hexdigest(),
        rules=_compile_rules(platform, top.table_at(section), references),
        source=doc.source,
        workload=_compile_workload(top, platform),
        references=references,
        conditions=_compile_conditions(top, platform),
        early_warning=_compile_early_warning(top, platform),
        document=doc.raw,
    )


def parse_policy(raw: bytes, source: str, version: int = 0) -> AppraisalPolicy:
    """Load and compile policy document bytes; ``source`` names the document in errors,
    ``version`` is the store's version (0 = not stored)."""
    return compile_policy(load_document(raw, source, SCHEMA), version)


def load_policy(path: Path, version: int = 0) -> AppraisalPolicy:
    """Read, load and compile the policy file at ``path``."""
    return compile_policy(read_document(path, SCHEMA), version)
