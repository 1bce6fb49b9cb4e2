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
from broker.rules import ReleaseRules, parse_rules
from broker.secrets import VersionConflict
from keybroker.admin_auth import Principal
from keybroker.admin_documents import DocumentAdmin, audit_lines, verify_audit
from keybroker.admin_gate import AdminGate
from keybroker.document import document_kind
from keybroker.errors import Malformed
from keybroker.health import or_unavailable
from keybroker.policy_store import PolicyStore
from keybroker.roles import AUDITOR, OPERATOR, POLICY_ADMIN, SECRET_ADMIN
from keybroker.v1 import admin_pb2, admin_pb2_grpc
from keybroker.version import version

Context = Any  # grpc.aio.ServicerContext (typed by the gate)

ROLE_OF = {
    "Status": OPERATOR,
    "PutSecret": SECRET_ADMIN, "GenerateSecret": SECRET_ADMIN, "ListSecrets": SECRET_ADMIN,
    "SetSecretState": SECRET_ADMIN,
    "ValidateRules": POLICY_ADMIN, "ApplyRules": POLICY_ADMIN, "RulesHistory": POLICY_ADMIN,
    "RollbackRules": POLICY_ADMIN,
    "ListAudit": AUDITOR, "VerifyAudit": AUDITOR, "ExportAudit": AUDITOR,
}


def _json(value: object) -> admin_pb2.JsonResponse:
    return admin_pb2.JsonResponse(json=json.dumps(value, sort_keys=True))


def _now() -> datetime:
    return datetime.now(UTC)


def _rules_of(raw: bytes, source: str) -> ReleaseRules:
    kind = document_kind(raw, source)
    if kind != RULES_KIND:
        raise Malformed(f"{source}: the broker stores ReleaseRules documents",
                        rule="admin.kind", expected=RULES_KIND, actual=kind)
    return parse_rules(raw, source)


def _compile_rules(raw: bytes, source: str) -> str:
    return _rules_of(raw, source).name


class BrokerAdminServicer(admin_pb2_grpc.BrokerAdminServicer):
    """BrokerAdmin over one broker (its stores) and one gate."""

    def __init__(self, gate: AdminGate, broker: Broker, policies: PolicyStore) -> None:
        self._gate = gate
        self._broker = broker
        self._rules = DocumentAdmin(policies, RULES_KIND, _compile_rules)

    async def Status(self, request: admin_pb2.StatusRequest,
                     context: Context) -> admin_pb2.StatusResponse:
        def work(p: Principal) -> admin_pb2.StatusResponse:
            rules = self._broker.watched_rules
            monitor = self._broker.monitor
            status = {"version": version(),
                      **(monitor.status_json() if monitor else {"serving": True}),
                      "rules_in_force": rules.current.rules_id if rules else "",
                      "kek_versions": or_unavailable(lambda: [
                          v.kek_id + ":" + v.state for v in self._broker.secrets.ring.versions()]),
                      "audit_head": or_unavailable(self._broker.audit.head)}
            return admin_pb2.StatusResponse(service="broker", principal=p.name,
                                            roles=sorted(p.roles), json=json.dumps(status))
        return await self._gate.call(context, "Status", ROLE_OF["Status"], work,
                                     diagnostic=True)

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
            rules = _rules_of(bytes(request.document), request.source or "request")
            return admin_pb2.ValidateResponse(kind=RULES_KIND, name=rules.name,
                                              digest=rules.digest)
        return await self._gate.call(context, "ValidateRules", ROLE_OF["ValidateRules"], work)

    async def ApplyRules(self, request: admin_pb2.DocumentRequest,
                         context: Context) -> admin_pb2.DocumentVersion:
        return await self._gate.call(context, "ApplyRules", ROLE_OF["ApplyRules"], lambda p:
                                     self._rules.apply(bytes(request.document),
                                                       request.source or "request", p.name,
                                                       request.comment))

    async def RulesHistory(self, request: admin_pb2.NameRequest,
                           context: Context) -> admin_pb2.DocumentHistory:
        return await self._gate.call(context, "RulesHistory", ROLE_OF["RulesHistory"],
                                     lambda _: self._rules.history(request.name))

    async def RollbackRules(self, request: admin_pb2.RollbackRequest,
                            context: Context) -> admin_pb2.DocumentVersion:
        return await self._gate.call(context, "RollbackRules", ROLE_OF["RollbackRules"],
                                     lambda p: self._rules.rollback(request, p.name),
                                     target=f"{request.name[:64]}@{request.to_version}")

    async def ListAudit(self, request: admin_pb2.ListAuditRequest,
                        context: Context) -> admin_pb2.JsonResponse:
        return await self._gate.call(context, "ListAudit", ROLE_OF["ListAudit"],
                                     lambda _: audit_lines(self._gate.audit, request, False))

    async def ExportAudit(self, request: admin_pb2.ListAuditRequest,
                          context: Context) -> admin_pb2.JsonResponse:
        return await self._gate.call(context, "ExportAudit", ROLE_OF["ExportAudit"],
                                     lambda _: audit_lines(self._gate.audit, request, True))

    async def VerifyAudit(self, request: admin_pb2.VerifyAuditRequest,
                          context: Context) -> admin_pb2.VerifyAuditResponse:
        mac = self._broker.secrets.ring.backend.audit_mac
        return await self._gate.call(context, "VerifyAudit", ROLE_OF["VerifyAudit"],
                                     lambda _: verify_audit(self._gate.audit, request, mac))

