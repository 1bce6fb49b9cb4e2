"""The broker's admin API (keybroker.v1.BrokerAdmin): secrets, release rules, audit, status.

Invariants:
- Every RPC goes through ``keybroker.admin_gate.AdminGate`` with the role of ``ROLE_OF``;
  the author stored with a rule version is the authenticated principal, never a request field.
- Secrets are written, generated, listed (metadata only) and moved through their lifecycle;
  no RPC returns secret bytes.
- Release rules are compiled before they are stored (a document that does not compile changes
  nothing); the running service picks up an applied version through its policy poll.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from broker.release import Broker
from broker.rules import KIND as RULES_KIND
from broker.rules import parse_rules
from broker.secrets import VersionConflict
from keybroker.admin_auth import Principal
from keybroker.admin_gate import AdminGate
from keybroker.document import document_kind
from keybroker.errors import Malformed
from keybroker.policy_store import PolicyStore, PolicyVersion
from keybroker.roles import AUDITOR, OPERATOR, POLICY_ADMIN, SECRET_ADMIN
from keybroker.v1 import admin_pb2, admin_pb2_grpc

Context = Any  # grpc.aio.ServicerContext (typed by the gate)

ROLE_OF = {
    "Status": OPERATOR,
    "PutSecret": SECRET_ADMIN, "GenerateSecret": SECRET_ADMIN, "ListSecrets": SECRET_ADMIN,
    "SetSecretState": SECRET_ADMIN,
    "ValidateRules": POLICY_ADMIN, "ApplyRules": POLICY_ADMIN, "RulesHistory": POLICY_ADMIN,
    "RollbackRules": POLICY_ADMIN,
    "ListAudit": AUDITOR, "VerifyAudit": AUDITOR, "ExportAudit": AUDITOR,
}


def version_message(v: PolicyVersion) -> admin_pb2.DocumentVersion:
    """A stored policy version on the wire."""
    return admin_pb2.DocumentVersion(
        kind=v.kind, name=v.name, version=v.version, digest=v.digest, author=v.author,
        comment=v.comment, created_at=v.created_at.isoformat(), action=v.action,
        rollback_of=v.rollback_of or 0)


def _json(value: object) -> admin_pb2.JsonResponse:
    return admin_pb2.JsonResponse(json=json.dumps(value, sort_keys=True))


def _now() -> datetime:
    return datetime.now(UTC)


def _rules_document(request: admin_pb2.DocumentRequest) -> tuple[str, bytes, str]:
    source = request.source or "request"
    raw = bytes(request.document)
    kind = document_kind(raw, source)
    if kind != RULES_KIND:
        raise Malformed(f"{source}: the broker stores ReleaseRules documents",
                        rule="admin.kind", expected=RULES_KIND, actual=kind)
    return parse_rules(raw, source).name, raw, source


class BrokerAdminServicer(admin_pb2_grpc.BrokerAdminServicer):
    """BrokerAdmin over one broker (its stores) and one gate."""

    def __init__(self, gate: AdminGate, broker: Broker, policies: PolicyStore) -> None:
        self._gate = gate
        self._broker = broker
        self._policies = policies

    async def Status(self, request: admin_pb2.StatusRequest,
                     context: Context) -> admin_pb2.StatusResponse:
        def work(p: Principal) -> admin_pb2.StatusResponse:
            rules = self._broker.watched_rules
            status = {"rules_in_force": rules.current.rules_id if rules else "",
                      "kek_versions": [v.kek_id + ":" + v.state
                                       for v in self._broker.secrets.ring.versions()],
                      "audit_head": self._broker.audit.head()}
            return admin_pb2.StatusResponse(service="broker", principal=p.name,
                                            roles=sorted(p.roles), json=json.dumps(status))
        return await self._gate.call(context, "Status", ROLE_OF["Status"], work)

    async def PutSecret(self, request: admin_pb2.PutSecretRequest,
                        context: Context) -> admin_pb2.JsonResponse:
        expect = request.expect_version if request.HasField("expect_version") else None

        def work(_: Principal) -> admin_pb2.JsonResponse:
            try:
                version = self._broker.secrets.put(request.key_id, bytes(request.value),
                                                   expect_version=expect)
            except VersionConflict as exc:
                raise Malformed(str(exc), rule="secrets.cas", expected=f"latest {exc.expected}",
                                actual=f"latest {exc.actual}") from None
            return _json({"key_id": request.key_id, "version": version})
        return await self._gate.call(context, "PutSecret", ROLE_OF["PutSecret"], work,
                                     target=request.key_id[:256])

    async def GenerateSecret(self, request: admin_pb2.GenerateSecretRequest,
                             context: Context) -> admin_pb2.JsonResponse:
        expect = request.expect_version if request.HasField("expect_version") else None

        def work(_: Principal) -> admin_pb2.JsonResponse:
            try:
                version = self._broker.secrets.generate(request.key_id, request.length,
                                                        expect_version=expect)
            except VersionConflict as exc:
                raise Malformed(str(exc), rule="secrets.cas", expected=f"latest {exc.expected}",
                                actual=f"latest {exc.actual}") from None
            return _json({"key_id": request.key_id, "version": version,
                          "length": request.length})
        return await self._gate.call(context, "GenerateSecret", ROLE_OF["GenerateSecret"],
                                     work, target=request.key_id[:256])

    async def ListSecrets(self, request: admin_pb2.ListSecretsRequest,
                          context: Context) -> admin_pb2.JsonResponse:
        def work(_: Principal) -> admin_pb2.JsonResponse:
            infos = self._broker.secrets.list(request.key_id or None)
            return _json([i.as_dict() for i in infos])
        return await self._gate.call(context, "ListSecrets", ROLE_OF["ListSecrets"], work)

    async def SetSecretState(self, request: admin_pb2.SetSecretStateRequest,
                             context: Context) -> admin_pb2.JsonResponse:
        def work(_: Principal) -> admin_pb2.JsonResponse:
            info = self._broker.secrets.set_state(request.key_id, request.version,
                                                  request.state,
                                                  grace_seconds=request.grace_seconds)
            return _json(info.as_dict())
        return await self._gate.call(context, "SetSecretState", ROLE_OF["SetSecretState"],
                                     work, target=f"{request.key_id[:256]}@{request.version} "
                                                  f"-> {request.state[:32]}")

    async def ValidateRules(self, request: admin_pb2.DocumentRequest,
                            context: Context) -> admin_pb2.ValidateResponse:
        def work(_: Principal) -> admin_pb2.ValidateResponse:
            name, raw, source = _rules_document(request)
            return admin_pb2.ValidateResponse(kind=RULES_KIND, name=name,
                                              digest=parse_rules(raw, source).digest)
        return await self._gate.call(context, "ValidateRules", ROLE_OF["ValidateRules"], work)

    async def ApplyRules(self, request: admin_pb2.DocumentRequest,
                         context: Context) -> admin_pb2.DocumentVersion:
        def work(p: Principal) -> admin_pb2.DocumentVersion:
            name, raw, _ = _rules_document(request)
            return version_message(self._policies.apply(
                RULES_KIND, name, raw, author=p.name, comment=request.comment, now=_now()))
        return await self._gate.call(context, "ApplyRules", ROLE_OF["ApplyRules"], work)

    async def RulesHistory(self, request: admin_pb2.NameRequest,
                           context: Context) -> admin_pb2.DocumentHistory:
        def work(_: Principal) -> admin_pb2.DocumentHistory:
            return admin_pb2.DocumentHistory(versions=[
                version_message(v) for v in self._policies.history(RULES_KIND, request.name)])
        return await self._gate.call(context, "RulesHistory", ROLE_OF["RulesHistory"], work)

    async def RollbackRules(self, request: admin_pb2.RollbackRequest,
                            context: Context) -> admin_pb2.DocumentVersion:
        def work(p: Principal) -> admin_pb2.DocumentVersion:
            old = self._policies.get(RULES_KIND, request.name, request.to_version)
            parse_rules(old.document, f"{old.label} (stored)")
            return version_message(self._policies.rollback(
                RULES_KIND, request.name, request.to_version, author=p.name,
                comment=request.comment, now=_now()))
        return await self._gate.call(context, "RollbackRules", ROLE_OF["RollbackRules"], work,
                                     target=f"{request.name[:64]}@{request.to_version}")

    async def ListAudit(self, request: admin_pb2.ListAuditRequest,
                        context: Context) -> admin_pb2.JsonResponse:
        return await self._gate.call(context, "ListAudit", ROLE_OF["ListAudit"],
                                     lambda _: audit_lines(self._gate, request, False))

    async def ExportAudit(self, request: admin_pb2.ListAuditRequest,
                          context: Context) -> admin_pb2.JsonResponse:
        return await self._gate.call(context, "ExportAudit", ROLE_OF["ExportAudit"],
                                     lambda _: audit_lines(self._gate, request, True))

    async def VerifyAudit(self, request: admin_pb2.VerifyAuditRequest,
                          context: Context) -> admin_pb2.VerifyAuditResponse:
        mac = self._broker.secrets.ring.backend.audit_mac
        return await self._gate.call(context, "VerifyAudit", ROLE_OF["VerifyAudit"],
                                     lambda _: verify_audit(self._gate, request, mac))


def audit_lines(gate: AdminGate, request: admin_pb2.ListAuditRequest,
                with_checkpoints: bool) -> admin_pb2.JsonResponse:
    """Records after ``since_seq`` (at most ``limit``) as JSON Lines; with the keyed
    checkpoints after the record each ends on when exporting."""
    records = [r for r in gate.audit.records() if r.seq > request.since_seq]
    if request.limit:
        records = records[:request.limit]
    checkpoints = {c.to_seq: c for c in gate.audit.checkpoints()} if with_checkpoints else {}
    lines = []
    for rec in records:
        lines.append(json.dumps({"type": "record", **rec.as_dict()}, sort_keys=True))
        if rec.seq in checkpoints:
            lines.append(json.dumps(checkpoints[rec.seq].as_dict(), sort_keys=True))
    return admin_pb2.JsonResponse(json="\n".join(lines))


def verify_audit(gate: AdminGate, request: admin_pb2.VerifyAuditRequest,
                 mac: Any) -> admin_pb2.VerifyAuditResponse:
    """Chain and checkpoints (``mac`` None: the chain only); names the first bad record."""
    count = gate.audit.verify_chain(expect_head=request.expect_head or None, mac=mac)
    checkpoints = gate.audit.checkpoints()
    return admin_pb2.VerifyAuditResponse(
        records=count, head=gate.audit.head(), checkpoints=len(checkpoints),
        covered_to=checkpoints[-1].to_seq if checkpoints else 0)
