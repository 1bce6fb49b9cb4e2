"""TCB debt report: which platforms pass today but are below a policy's announced next floor.

Invariants:
- The report is computed from recorded appraisals and the policies in force now; each record
  is re-appraised by the real engine at its own time (active and deprecated reference values
  only, never STAGED), so the report says what the in-force policy decides, not what an older
  version decided.
- Per platform identity (SNP chip id, or CSP id for VLEK-signed reports; TDX / SGX FMSPC) and
  policy, only the latest record that the in-force policy affirms (status affirming or
  warning) counts: a platform that was updated since drops out of the report as soon as it
  attests again. It is reported when that appraisal has TCB debt (``tcb_early_warning``).
- Nothing is written; the report is sorted by identity, then policy name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from keybroker.errors import KeybrokerError
from verifier.claims_view import platform_claims_from_dict
from verifier.policy.dry_run import platform_identity, reappraise
from verifier.policy.model import AppraisalPolicy
from verifier.records import AppraisalRecord
from verifier.reference.values import ReferenceSnapshot

PASSING = ("affirming", "warning")


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class TcbDebt:
    """The latest passing appraisal of one platform under one policy, with its debt."""

    identity: str
    platform: str
    policy_id: str
    status: str
    record: AppraisalRecord
    debt: tuple[str, ...]

    def line(self) -> str:
        """``<identity> <policy_id> <at> <request_id> <digest12>: <debt>; <debt>``."""
        r = self.record
        return (f"{self.identity} {self.policy_id} {_rfc3339(r.at)} {r.request_id} "
                f"{r.evidence_digest[:12]}: {'; '.join(self.debt)}")

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        r = self.record
        return {"identity": self.identity, "platform": self.platform,
                "policy_id": self.policy_id, "status": self.status, "at": _rfc3339(r.at),
                "request_id": r.request_id, "evidence_digest": r.evidence_digest,
                "tcb_debt": list(self.debt)}


def tcb_report(policies: Mapping[str, AppraisalPolicy], records: Iterable[AppraisalRecord],
               references: ReferenceSnapshot) -> list[TcbDebt]:
    """The platforms whose latest passing appraisal carries TCB debt (module invariants)."""
    latest: dict[tuple[str, str], TcbDebt] = {}
    for record in sorted(records, key=lambda r: r.at):
        if record.evidence is None:
            continue
        try:
            claims = platform_claims_from_dict(record.evidence)
        except KeybrokerError:
            continue
        identity = platform_identity(record.evidence)
        for name in sorted(record.decisions):
            policy = policies.get(name)
            if policy is None or policy.platform != record.evidence.get("platform"):
                continue
            outcome, _, debt = reappraise(policy, record, claims, references,
                                          include_staged=False)
            if outcome.decision in PASSING:
                latest[(identity, name)] = TcbDebt(identity, policy.platform, policy.policy_id,
                                                   outcome.decision, record, debt)
    return [entry for _, entry in sorted(latest.items()) if entry.debt]
