"""The verifier's admin API (keybroker.v1.VerifierAdmin): appraisal policies, reference values,
the TCB report, TPM AK enrolments (list, revoke), audit and status.

Invariants:
- Every RPC goes through ``keybroker.admin_gate.AdminGate`` with the role of ``ROLE_OF``; the
  author stored with a policy or reference-set version is the authenticated principal.
- Appraisal policies compile before they are stored; reference values are checked as an
  import (administrator documents need ``refvalue-admin``; a JWS manifest must verify under a
  configured provider allowed to publish its set). The running service picks up changes
  through its state poll.
- Dry-run and the TCB report read recorded appraisals and change nothing.
- Revoking a TPM enrolment (policy-admin) stops the quote path trusting that AK at once (it
  reads the state database per request) and lets the EK enrol another AK.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from keybroker.admin_auth import Principal
from keybroker.admin_documents import DocumentAdmin, audit_lines, verify_audit
from keybroker.admin_gate import AdminGate
from keybroker.document import document_kind
from keybroker.errors import Malformed
from keybroker.health import or_unavailable
from keybroker.policy_store import PolicyStore
from keybroker.roles import AUDITOR, OPERATOR, POLICY_ADMIN, REFVALUE_ADMIN
from keybroker.v1 import admin_pb2, admin_pb2_grpc
from keybroker.version import version
from verifier.config import VerifierConfig
from verifier.policy.compile import parse_policy
from verifier.policy.dry_run import dry_run
from verifier.policy.model import AppraisalPolicy
from verifier.policy.tcb_report import tcb_report
from verifier.records import AppraisalRecord, RecordStore
from verifier.reference.manifest import load_provider
from verifier.reference.store import ReferenceStore
from verifier.reference.values import RefSetVersion, RefState
from verifier.tpm.enrolment import EkRoots, TpmEnrolments

Context = Any  # grpc.aio.ServicerContext (typed by the gate)
KIND_POLICY = "AppraisalPolicy"
_MAX_SINCE = 90 * 86400
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")

ROLE_OF = {
    "Status": OPERATOR, "TcbReport": OPERATOR, "ListTpmEnrolments": OPERATOR,
    "RevokeTpmEnrolment": POLICY_ADMIN,
    "ValidatePolicy": POLICY_ADMIN, "ApplyPolicy": POLICY_ADMIN, "PolicyHistory": POLICY_ADMIN,
    "RollbackPolicy": POLICY_ADMIN, "DryRunPolicy": POLICY_ADMIN,
    "ImportReferenceValues": REFVALUE_ADMIN, "SetReferenceState": REFVALUE_ADMIN,
    "ListReferenceValues": REFVALUE_ADMIN,
    "ListAudit": AUDITOR, "VerifyAudit": AUDITOR,
}
_STATES = {"active": RefState.ACTIVE, "deprecated": RefState.DEPRECATED,
           "retired": RefState.RETIRED}


def _now() -> datetime:
    return datetime.now(UTC)


def _json(value: object) -> admin_pb2.JsonResponse:
    return admin_pb2.JsonResponse(json=json.dumps(value, sort_keys=True, default=str))


def _refset(v: RefSetVersion) -> dict[str, object]:
    return {"name": v.name, "version": v.version, "state": v.state.value,
            "retire_at": v.retire_at.isoformat() if v.retire_at else None,
            "provenance": v.provenance, "author": v.author,
            "created_at": v.created_at.isoformat(), "values": len(v.values)}


def _policy(request: admin_pb2.DocumentRequest | admin_pb2.DryRunRequest) -> AppraisalPolicy:
    return _policy_of(bytes(request.document), request.source or "request")


def _policy_of(raw: bytes, source: str) -> AppraisalPolicy:
    kind = document_kind(raw, source)
    if kind != KIND_POLICY:
        raise Malformed(f"{source}: the verifier stores AppraisalPolicy documents here",
                        rule="admin.kind", expected=KIND_POLICY, actual=kind)
    return parse_policy(raw, source)


def _since(seconds: int) -> datetime:
    if not 0 < seconds <= _MAX_SINCE:
        raise Malformed("since_seconds out of range", rule="admin.since",
                        expected=f"1..{_MAX_SINCE}", actual=str(seconds))
    return _now() - timedelta(seconds=seconds)


class VerifierAdminServicer(admin_pb2_grpc.VerifierAdminServicer):
    """VerifierAdmin over the verifier's state database and one gate."""

    def __init__(self, gate: AdminGate, config: VerifierConfig,
                 in_force: Callable[[], Mapping[str, AppraisalPolicy]],
                 live: Callable[[], dict[str, object]] = dict) -> None:
        self._gate = gate
        self._config = config
        self._in_force = in_force
        self._live = live  # health and collateral freshness of the running service
        self._policies = DocumentAdmin(PolicyStore(config.state_db), KIND_POLICY,
                                       lambda raw, src: _policy_of(raw, src).name)
        self._references = ReferenceStore(config.state_db)
        self._tpm = TpmEnrolments(config.state_db, EkRoots())  # listing and revoking only

    def _records(self, seconds: int) -> list[AppraisalRecord]:
        store = RecordStore(self._config.state_db,
                            retention=timedelta(days=max(self._config.record_days, 1)))
        try:
            return store.since(_since(seconds))
        finally:
            store.close()

    async def Status(self, request: admin_pb2.StatusRequest,
                     context: Context) -> admin_pb2.StatusResponse:
        def work(p: Principal) -> admin_pb2.StatusResponse:
            status = {"version": version(), **self._live(),
                      "policies_in_force": sorted(x.policy_id for x in self._in_force().values()),
                      "reference_sets": or_unavailable(lambda: sorted(
                          {v.name for v in self._references.versions()})),
                      "audit_head": or_unavailable(self._gate.audit.head)}
            return admin_pb2.StatusResponse(service="verifier", principal=p.name,
                                            roles=sorted(p.roles), json=json.dumps(status))
        return await self._gate.call(context, "Status", ROLE_OF["Status"], work,
                                     diagnostic=True)

    async def ValidatePolicy(self, request: admin_pb2.DocumentRequest,
                             context: Context) -> admin_pb2.ValidateResponse:
        def work(_: Principal) -> admin_pb2.ValidateResponse:
            policy = _policy(request)
            return admin_pb2.ValidateResponse(kind=KIND_POLICY, name=policy.name,
                                              digest=policy.digest)
        return await self._gate.call(context, "ValidatePolicy", ROLE_OF["ValidatePolicy"],
                                     work)

    async def ApplyPolicy(self, request: admin_pb2.DocumentRequest,
                          context: Context) -> admin_pb2.DocumentVersion:
        def work(p: Principal) -> admin_pb2.DocumentVersion:
            source = request.source or "request"
            stored = self._policies.apply(bytes(request.document), source, p.name,
                                          request.comment)
            stored.warnings.extend(self._unusable_references(_policy(request), source))
            return stored
        return await self._gate.call(context, "ApplyPolicy", ROLE_OF["ApplyPolicy"], work)

    def _unusable_references(self, policy: AppraisalPolicy, source: str) -> list[str]:
        """Bound sets without an active or deprecated version (never a refusal: sets are
        staged during roll-outs, but every appraisal under the policy is denied until one is
        activated)."""
        usable = {v.name for v in self._references.versions()
                  if v.state in (RefState.ACTIVE, RefState.DEPRECATED)}
        return [f"{source}:{b.line}: reference set '{b.set_name}' has no active version yet; "
                "appraisals under this policy are denied until one is activated"
                for b in policy.references if b.set_name not in usable]

    async def PolicyHistory(self, request: admin_pb2.NameRequest,
                            context: Context) -> admin_pb2.DocumentHistory:
        return await self._gate.call(context, "PolicyHistory", ROLE_OF["PolicyHistory"],
                                     lambda _: self._policies.history(request.name))

    async def RollbackPolicy(self, request: admin_pb2.RollbackRequest,
                             context: Context) -> admin_pb2.DocumentVersion:
        return await self._gate.call(context, "RollbackPolicy", ROLE_OF["RollbackPolicy"],
                                     lambda p: self._policies.rollback(request, p.name),
                                     target=f"{request.name[:64]}@{request.to_version}")

    async def DryRunPolicy(self, request: admin_pb2.DryRunRequest,
                           context: Context) -> admin_pb2.JsonResponse:
        def work(_: Principal) -> admin_pb2.JsonResponse:
            report = dry_run(_policy(request), self._records(request.since_seconds or 604800),
                             self._references.snapshot())
            return _json({"summary": report.summary(),
                          "changed": [e.as_dict() for e in report.changed]})
        return await self._gate.call(context, "DryRunPolicy", ROLE_OF["DryRunPolicy"], work)

    async def ImportReferenceValues(self, request: admin_pb2.DocumentRequest,
                                    context: Context) -> admin_pb2.JsonResponse:
        def work(p: Principal) -> admin_pb2.JsonResponse:
            raw, source = bytes(request.document), request.source or "request"
            if raw.lstrip()[:1] == b"e":  # a compact JWS manifest ("eyJ...")
                providers = [load_provider(x.name, x.key, x.sets)
                             for x in self._config.reference_providers]
                version = self._references.import_manifest(raw, source, providers,
                                                           author=p.name,
                                                           comment=request.comment, now=_now())
            else:
                version = self._references.import_admin(raw, source, author=p.name,
                                                        comment=request.comment, now=_now())
            return _json(_refset(version))
        return await self._gate.call(context, "ImportReferenceValues",
                                     ROLE_OF["ImportReferenceValues"], work)

    async def SetReferenceState(self, request: admin_pb2.ReferenceStateRequest,
                                context: Context) -> admin_pb2.JsonResponse:
        def work(p: Principal) -> admin_pb2.JsonResponse:
            to = _STATES.get(request.state)
            if to is None:
                raise Malformed("unknown reference-set state", rule="refvalues.state",
                                expected=" | ".join(_STATES), actual=request.state[:32])
            retire_at = (datetime.fromisoformat(request.retire_at.replace("Z", "+00:00"))
                         if request.retire_at else None)
            event = self._references.transition(request.name, request.version, to,
                                                author=p.name, comment=request.comment,
                                                now=_now(), retire_at=retire_at)
            return _json({"name": event.name, "version": event.version,
                          "from": event.from_state.value if event.from_state else None,
                          "to": event.to_state.value})
        return await self._gate.call(context, "SetReferenceState", ROLE_OF["SetReferenceState"],
                                     work, target=f"{request.name[:64]}@{request.version} -> "
                                                  f"{request.state[:16]}")

    async def ListReferenceValues(self, request: admin_pb2.NameRequest,
                                  context: Context) -> admin_pb2.JsonResponse:
        def work(_: Principal) -> admin_pb2.JsonResponse:
            return _json([_refset(v) for v in self._references.versions(request.name or None)])
        return await self._gate.call(context, "ListReferenceValues",
                                     ROLE_OF["ListReferenceValues"], work)

    async def TcbReport(self, request: admin_pb2.TcbReportRequest,
                        context: Context) -> admin_pb2.JsonResponse:
        def work(_: Principal) -> admin_pb2.JsonResponse:
            entries = tcb_report(self._in_force(), self._records(request.since_seconds or 604800),
                                 self._references.snapshot())
            return _json([e.as_dict() for e in entries])
        return await self._gate.call(context, "TcbReport", ROLE_OF["TcbReport"], work)

    async def ListTpmEnrolments(self, request: admin_pb2.TpmEnrolmentRequest,
                                context: Context) -> admin_pb2.JsonResponse:
        return await self._gate.call(
            context, "ListTpmEnrolments", ROLE_OF["ListTpmEnrolments"],
            lambda _: _json(self._tpm.listing(request.ek_fingerprint)))

    async def RevokeTpmEnrolment(self, request: admin_pb2.TpmEnrolmentRequest,
                                 context: Context) -> admin_pb2.JsonResponse:
        def work(_: Principal) -> admin_pb2.JsonResponse:
            if not _FINGERPRINT_RE.fullmatch(request.ek_fingerprint):
                raise Malformed("EK fingerprint is not SHA-256 hex", rule="admin.tpm",
                                expected="64 lowercase hex digits",
                                actual=request.ek_fingerprint[:80])
            if not self._tpm.revoke(request.ek_fingerprint):
                raise Malformed("no enrolled AK for this EK", rule="admin.tpm",
                                expected="an EK with an enrolled, unrevoked AK",
                                actual=request.ek_fingerprint)
            return _json(self._tpm.listing(request.ek_fingerprint)[0])
        return await self._gate.call(context, "RevokeTpmEnrolment",
                                     ROLE_OF["RevokeTpmEnrolment"], work,
                                     target=f"EK {request.ek_fingerprint[:64]}: "
                                            f"{request.comment[:160]}")

    async def ListAudit(self, request: admin_pb2.ListAuditRequest,
                        context: Context) -> admin_pb2.JsonResponse:
        return await self._gate.call(context, "ListAudit", ROLE_OF["ListAudit"],
                                     lambda _: audit_lines(self._gate.audit, request, False))

    async def VerifyAudit(self, request: admin_pb2.VerifyAuditRequest,
                          context: Context) -> admin_pb2.VerifyAuditResponse:
        return await self._gate.call(context, "VerifyAudit", ROLE_OF["VerifyAudit"],
                                     lambda _: verify_audit(self._gate.audit, request, None))
