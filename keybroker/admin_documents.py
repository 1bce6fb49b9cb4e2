"""What both admin APIs do the same way: versioned documents (apply, history, roll back) in a
policy store, and the audit log (list, export, verify), as wire messages.

Invariants:
- A document is compiled by the caller's ``compile`` before it is stored, and a stored
  version is compiled again before a rollback puts it back in force: nothing that does not
  compile today is ever in force.
- The author of a stored version is the authenticated principal handed in by the gate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from keybroker.audit_checkpoint import Mac
from keybroker.audit_log import AuditLog
from keybroker.policy_store import PolicyStore, PolicyVersion
from keybroker.v1 import admin_pb2


def version_message(v: PolicyVersion) -> admin_pb2.DocumentVersion:
    """A stored document version on the wire."""
    return admin_pb2.DocumentVersion(
        kind=v.kind, name=v.name, version=v.version, digest=v.digest, author=v.author,
        comment=v.comment, created_at=v.created_at.isoformat(), action=v.action,
        rollback_of=v.rollback_of or 0)


class DocumentAdmin:
    """Apply / history / rollback of one document kind in one policy store."""

    def __init__(self, store: PolicyStore, kind: str,
                 compile_doc: Callable[[bytes, str], str]) -> None:
        self._store = store
        self.kind = kind
        self._compile = compile_doc  # (raw, source) -> name; raises Malformed

    def apply(self, raw: bytes, source: str, author: str,
              comment: str) -> admin_pb2.DocumentVersion:
        name = self._compile(raw, source)
        return version_message(self._store.apply(self.kind, name, raw, author=author,
                                                 comment=comment, now=datetime.now(UTC)))

    def history(self, name: str) -> admin_pb2.DocumentHistory:
        return admin_pb2.DocumentHistory(versions=[
            version_message(v) for v in self._store.history(self.kind, name)])

    def rollback(self, request: admin_pb2.RollbackRequest,
                 author: str) -> admin_pb2.DocumentVersion:
        old = self._store.get(self.kind, request.name, request.to_version)
        self._compile(old.document, f"{old.label} (stored)")
        return version_message(self._store.rollback(
            self.kind, request.name, request.to_version, author=author,
            comment=request.comment, now=datetime.now(UTC)))


def audit_lines(audit: AuditLog, request: admin_pb2.ListAuditRequest,
                with_checkpoints: bool) -> admin_pb2.JsonResponse:
    """Records after ``since_seq`` (at most ``limit``) as JSON Lines; exporting adds each keyed
    checkpoint after the record it ends on."""
    records = [r for r in audit.records() if r.seq > request.since_seq]
    if request.limit:
        records = records[:request.limit]
    checkpoints = {c.to_seq: c for c in audit.checkpoints()} if with_checkpoints else {}
    lines = []
    for rec in records:
        lines.append(json.dumps({"type": "record", **rec.as_dict()}, sort_keys=True))
        if rec.seq in checkpoints:
            lines.append(json.dumps(checkpoints[rec.seq].as_dict(), sort_keys=True))
    return admin_pb2.JsonResponse(json="\n".join(lines))


def verify_audit(audit: AuditLog, request: admin_pb2.VerifyAuditRequest,
                 mac: Mac | None) -> admin_pb2.VerifyAuditResponse:
    """Chain and (with ``mac``) checkpoints; names the first bad record."""
    count = audit.verify_chain(expect_head=request.expect_head or None, mac=mac)
    checkpoints = audit.checkpoints()
    return admin_pb2.VerifyAuditResponse(
        records=count, head=audit.head(), checkpoints=len(checkpoints),
        covered_to=checkpoints[-1].to_seq if checkpoints else 0)
