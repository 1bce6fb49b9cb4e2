"""Policy dry run: what a candidate appraisal policy would have decided on recorded appraisals.

Invariants:
- Only records that carry evidence of the candidate's platform and a recorded decision for the
  candidate's name are re-appraised (a record of another policy says nothing about this one).
  Each is re-appraised by the real engine at the record's own time, with the record's
  insecure-root switch and the reference snapshot given by the caller with STAGED values
  included, so "would this firmware update still pass once its values are activated" is
  answered before activation.
- The recorded workload claims are reused when present; otherwise they are recomputed from the
  recorded init-data by the engine (``appraise``), exactly as the service does.
- A record "changes" when the status differs, or when both deny but the category or rule
  differs. The summary counts changes among the re-appraised records; nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from keybroker.errors import KeybrokerError
from verifier import registry
from verifier.claims_view import platform_claims_from_dict
from verifier.policy.cases import Outcome, evaluate
from verifier.policy.decision import appraise
from verifier.policy.model import AppraisalPolicy
from verifier.records import AppraisalRecord
from verifier.reference.values import ReferenceSnapshot
from verifier.tee import Claims
from verifier.workload import WorkloadClaims


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def platform_identity(evidence: Mapping[str, object]) -> str:
    """The platform's identity from recorded claims (``chip:<16 hex>`` or ``csp:<id>`` for
    SEV-SNP, ``fmspc:<hex>`` for TDX / SGX: each TEE's ``platform_identity``)."""
    platform = evidence.get("platform")
    if not isinstance(platform, str) or platform not in registry.platforms():
        return f"unknown:{platform}"
    return registry.by_platform(platform).platform_identity(evidence)


def recorded_outcome(decision: Mapping[str, str]) -> Outcome:
    """The outcome stored in a record's decision map."""
    status = decision.get("status", "")
    if status == "deny":
        return Outcome("deny", decision.get("category") or None, decision.get("rule") or None,
                       decision.get("reason", ""))
    return Outcome(status)


def _key(outcome: Outcome) -> tuple[str, str | None, str | None]:
    if outcome.decision == "deny":
        return (outcome.decision, outcome.category, outcome.rule)
    return (outcome.decision, None, None)


@dataclass(frozen=True)
class DryRunEntry:
    """One re-appraised record."""

    record: AppraisalRecord
    identity: str
    before: Outcome
    after: Outcome
    would_match: tuple[str, ...]

    @property
    def changed(self) -> bool:
        """Whether the candidate decides differently from the recorded decision."""
        return _key(self.before) != _key(self.after)

    def line(self) -> str:
        """``<at> <request_id> <digest12> <identity>: affirming -> deny CAT rule: ...``."""
        r = self.record
        text = (f"{_rfc3339(r.at)} {r.request_id} {r.evidence_digest[:12]} {self.identity}: "
                f"{self.before.render()} -> {self.after.render()}")
        if self.after.decision == "deny":
            details = [d for d in (f"expected {self.after.expected}" if self.after.expected
                                   else "", f"actual {self.after.actual}" if self.after.actual
                                   else "") if d]
            text += f": {self.after.reason}"
            if details:
                text += f" ({', '.join(details)})"
        return text

    def as_dict(self) -> dict[str, object]:
        """JSON form (``changed`` tells flips from would_match-only entries)."""
        r = self.record
        deny = self.after if self.after.decision == "deny" else None
        return {
            "request_id": r.request_id,
            "evidence_digest": r.evidence_digest,
            "at": _rfc3339(r.at),
            "identity": self.identity,
            "before": self.before.decision,
            "before_category": self.before.category,
            "before_rule": self.before.rule,
            "after": self.after.decision,
            "category": deny.category if deny else None,
            "rule": deny.rule if deny else None,
            "reason": deny.reason if deny else None,
            "expected": deny.expected if deny else None,
            "actual": deny.actual if deny else None,
            "would_match": list(self.would_match),
            "changed": self.changed,
        }


@dataclass(frozen=True)
class DryRunReport:
    """Every re-appraised record of a dry run."""

    policy_id: str
    entries: tuple[DryRunEntry, ...]

    @property
    def changed(self) -> tuple[DryRunEntry, ...]:
        """Entries whose decision would change."""
        return tuple(e for e in self.entries if e.changed)

    @property
    def would_match(self) -> tuple[DryRunEntry, ...]:
        """Entries that matched a STAGED reference value."""
        return tuple(e for e in self.entries if e.would_match)

    def summary(self) -> str:
        """``N of M decisions would change``."""
        return f"{len(self.changed)} of {len(self.entries)} decisions would change"


def reappraise(policy: AppraisalPolicy, record: AppraisalRecord, claims: Claims,
               references: ReferenceSnapshot, *, include_staged: bool
               ) -> tuple[Outcome, tuple[str, ...], tuple[str, ...]]:
    """(outcome, would_match, tcb_debt) of ``record`` under ``policy`` at the record's time."""
    try:
        if record.workload is not None:
            workload = WorkloadClaims.from_dict(record.workload)
            return evaluate(policy, claims, workload, at=record.at, references=references,
                            allow_insecure_root=record.insecure, include_staged=include_staged)
        appraisal, _ = appraise(policy, claims, init_data=record.init_data, at=record.at,
                                references=references, allow_insecure_root=record.insecure,
                                include_staged=include_staged)
    except KeybrokerError as err:
        return Outcome.denied(err), (), ()
    return (Outcome(appraisal.status), tuple(appraisal.would_match),
            tuple(appraisal.tcb_debt))


def dry_run(policy: AppraisalPolicy, records: Iterable[AppraisalRecord],
            references: ReferenceSnapshot) -> DryRunReport:
    """Re-appraise the relevant ``records`` with the candidate ``policy``."""
    entries = []
    for record in records:
        decision = record.decisions.get(policy.name)
        if (record.evidence is None or decision is None
                or record.evidence.get("platform") != policy.platform):
            continue
        would: tuple[str, ...] = ()
        try:
            claims = platform_claims_from_dict(record.evidence)
        except KeybrokerError as err:
            after = Outcome.denied(err)
        else:
            after, would, _ = reappraise(policy, record, claims, references,
                                         include_staged=True)
        entries.append(DryRunEntry(record, platform_identity(record.evidence),
                                   recorded_outcome(decision), after, would))
    return DryRunReport(policy.policy_id, tuple(entries))
