"""Appraisal policies: YAML documents (schema ``appraisal-policy``) that say which guests,
trust domains or enclaves of each registered platform are acceptable, compiled once into a
frozen ``AppraisalPolicy`` (``verifier.policy.model``).

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
- ``platform`` selects exactly one section through the registry ("sev-snp" -> ``snp:``,
  "tdx" -> ``tdx:``, "sgx" -> ``sgx:``; each TEE folder's ``policy.py`` compiles its own);
  another platform's section is refused.
- The launch identity is always checked: each platform's section requires its identity rule
  unless a ``reference_values`` binding covers one of the platform's identity claims
  (``Tee.identity_claims``); only then may the typed field be absent (compiled to ``None``:
  the binding does the check). An empty list matches nothing (fail closed).
- Reference bindings name a claim of the claims view (``evidence.`` or ``workload.``) that
  exists for the platform and holds a value or a list of values; each claim is bound once.
- ``tcb_early_warning`` keys are each platform's own (``Tee.early_warning_keys``); a key of
  another platform is refused.
- The document holds no version: the policy store assigns it (``version`` 0 = not stored).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from keybroker.condition import ConditionError, compile_condition
from keybroker.document import Document, load_document, read_document
from keybroker.document_reader import DocumentReader
from keybroker.errors import Category, Malformed
from verifier import registry
from verifier.claims_view import lookup, sample_activation
from verifier.policy.model import (
    CONDITION_CATEGORIES,
    KIND,
    SCHEMA,
    AppraisalPolicy,
    ConditionRule,
    ReferenceBinding,
)
from verifier.tee import TcbEarlyWarning, Tee
from verifier.workload import NAME_RE, compile_workload

_TOP_REQUIRED = frozenset({"kind", "name", "platform"})
_TOP_OPTIONAL = frozenset({"description", "workload", "reference_values", "tcb_early_warning",
                           "conditions"})
_NAME_WHAT = "1-64 of [A-Za-z0-9._-], starting with a letter or digit"


def _compile_rules(tee: Tee, section: DocumentReader,
                   references: tuple[ReferenceBinding, ...]) -> object:
    referenced = any(b.claim in tee.identity_claims for b in references)
    return tee.compile_section(section, referenced)


def _compile_references(top: DocumentReader, platform: str) -> tuple[ReferenceBinding, ...]:
    entries = top.tables("reference_values")
    if not entries:
        return ()
    sample = sample_activation(platform)
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
            value = lookup(sample, claim)
        except Malformed:
            raise entry.fail("claim", f"no such claim for platform {platform}",
                             "an existing claim path such as "
                             + min(registry.by_platform(platform).identity_claims),
                             claim) from None
        if isinstance(value, Mapping):
            raise entry.fail("claim", "claim is a map, not a value",
                             "a claim holding a value or a list of values", claim)
        line = entry.line("claim")
        seen[claim] = line
        out.append(ReferenceBinding(claim=claim, set_name=set_name, line=line))
    return tuple(out)


def _compile_conditions(top: DocumentReader, platform: str) -> tuple[ConditionRule, ...]:
    entries = top.tables("conditions")
    if not entries:
        return ()
    sample = sample_activation(platform)
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


def _compile_early_warning(top: DocumentReader, tee: Tee) -> TcbEarlyWarning:
    if not top.has("tcb_early_warning"):
        return TcbEarlyWarning()
    warning = top.table_at("tcb_early_warning")
    known = tuple(dict.fromkeys(key for other in registry.tees()
                                for key in sorted(other.early_warning_keys)))
    warning.check_keys(frozenset(), frozenset(known))
    for key in known:
        if warning.has(key) and key not in tee.early_warning_keys:
            raise warning.fail_at((key,), f"field '{key}' is not allowed when platform is "
                                          f"'{tee.platform}'", "not present", key)
    return tee.compile_early_warning(warning)


def compile_policy(doc: Document, version: int = 0) -> AppraisalPolicy:
    """Compile a loaded, schema-validated appraisal policy document."""
    top = DocumentReader(doc, (), doc.data)
    top.check_keys(_TOP_REQUIRED, _TOP_OPTIONAL | frozenset(registry.sections()))
    kind = top.string("kind")
    if kind != KIND:
        raise top.fail("kind", "wrong document kind", KIND, kind)
    name = top.string("name")
    if not NAME_RE.fullmatch(name):
        raise top.fail("name", "invalid policy name", _NAME_WHAT, name)
    platform = top.string("platform")
    if platform not in registry.platforms():
        raise top.fail("platform", "unsupported platform",
                       "one of: " + ", ".join(registry.platforms()), platform)
    tee = registry.by_platform(platform)
    section = tee.section
    for other in registry.sections():
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
        rules=_compile_rules(tee, top.table_at(section), references),
        source=doc.source,
        workload=compile_workload(top, platform,
                                  binds_init_data=tee.init_data_register is not None),
        references=references,
        conditions=_compile_conditions(top, platform),
        early_warning=_compile_early_warning(top, tee),
        document=doc.raw,
    )


def parse_policy(raw: bytes, source: str, version: int = 0) -> AppraisalPolicy:
    """Load and compile policy document bytes; ``source`` names the document in errors,
    ``version`` is the store's version (0 = not stored)."""
    return compile_policy(load_document(raw, source, SCHEMA), version)


def load_policy(path: Path, version: int = 0) -> AppraisalPolicy:
    """Read, load and compile the policy file at ``path``."""
    return compile_policy(read_document(path, SCHEMA), version)
