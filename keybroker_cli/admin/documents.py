"""Full offline checking of every document kind the admin commands handle.

Invariants:
- A document is checked exactly as the consumer will compile it: the kind comes from its
  ``kind:`` field, the published schema validates it (``file:line`` errors), and then the
  kind's own compiler runs (appraisal policies and release rules including their CEL
  conditions; reference values through an import into a throwaway store; test cases with their
  evidence). A document that passes here is one the service will load.
- Nothing here writes to a service's store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from keybroker.document import Document, document_kind, load_document, schema_for_kind
from keybroker.errors import Malformed
from keybroker_cli.admin.target import KIND_CASE, KIND_POLICY, KIND_REFS, KIND_RULES


@dataclass(frozen=True)
class Checked:
    """A document that compiled, with a one-line summary for people."""

    kind: str
    name: str
    document: Document
    summary: str

    @property
    def digest(self) -> str:
        """SHA-256 hex of the exact bytes."""
        return self.document.digest


def _policy(doc: Document) -> tuple[str, str]:
    from verifier.policy.compile import compile_policy  # noqa: PLC0415 - CEL only when needed

    policy = compile_policy(doc)
    parts = [policy.platform]
    if policy.references:
        parts.append(f"{len(policy.references)} reference binding(s)")
    if policy.conditions:
        parts.append(f"{len(policy.conditions)} condition(s)")
    return policy.name, ", ".join(parts)


def _rules(doc: Document) -> tuple[str, str]:
    from broker.rules import compile_rules  # noqa: PLC0415 - CEL only when needed

    rules = compile_rules(doc)
    return rules.name, f"{len(rules.rules)} rule(s)"


def _references(doc: Document, now: datetime) -> tuple[str, str]:
    from verifier.policy.cases import active_references  # noqa: PLC0415

    snapshot = active_references([(doc.raw, doc.source)], now=now)
    (version,) = snapshot.versions
    return version.name, f"{len(version.values)} value(s)"


def _case(doc: Document) -> tuple[str, str]:
    from verifier.policy.cases import case_from_document  # noqa: PLC0415

    case = case_from_document(doc, Path(doc.source).resolve().parent)
    return case.name, f"expects {case.expect.render()}"


def check_document(raw: bytes, source: str, *, now: datetime) -> Checked:
    """Load and fully compile a document of any kind; Malformed (``file:line``) otherwise."""
    kind = document_kind(raw, source)
    doc = load_document(raw, source, schema_for_kind(kind))
    if kind == KIND_POLICY:
        name, summary = _policy(doc)
    elif kind == KIND_RULES:
        name, summary = _rules(doc)
    elif kind == KIND_REFS:
        name, summary = _references(doc, now)
    elif kind == KIND_CASE:
        name, summary = _case(doc)
    else:  # pragma: no cover - schema_for_kind refuses unknown kinds
        raise Malformed(f"{source}: unsupported document kind", rule="policy.kind",
                        expected="a known kind", actual=kind)
    return Checked(kind, name, doc, summary)
