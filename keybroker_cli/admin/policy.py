"""``keybroker admin policy schema|validate|diff|apply|history|rollback``.

Invariants:
- ``validate`` and ``diff`` are offline: they read files (and, for ``diff --config``, the
  version in force) and never write.
- ``apply`` and ``rollback`` go through the admin API (``keybroker_cli.admin.remote``): the
  service checks the caller's ``policy-admin`` role and compiles the document completely
  (rollback: the old document, with today's compiler) before anything is written; a refused
  document leaves the versions in force untouched. The kind picks the service (appraisal
  policies: verifier; release rules: broker).
- The version in force of a name is the store's latest version; a name that was never stored
  falls back to the service's seed file (what the service stores on its first start).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from keybroker.document import KINDS, schema
from keybroker.errors import KeybrokerError, Malformed
from keybroker.policy_store import PolicyStore, PolicyVersion
from keybroker_cli.admin.diff import semantic_diff, unified_diff
from keybroker_cli.admin.documents import check_document
from keybroker_cli.admin.remote import add_server_args, either, online
from keybroker_cli.admin.remote import apply as remote_apply
from keybroker_cli.admin.remote import history as remote_history
from keybroker_cli.admin.remote import rollback as remote_rollback
from keybroker_cli.admin.target import (
    EXIT_FAILED,
    EXIT_OK,
    Target,
    command,
    load_target,
    print_error,
    read_file,
    rfc3339,
    utc_now,
)


@dataclass(frozen=True)
class InForce:
    """The document in force for one name, from the store or the service's seed file."""

    label: str  # "<name>@<version>" or "<name>@seed"
    document: bytes
    source: str


def _seed_files(target: Target) -> tuple[Path, ...]:
    if target.verifier is not None:
        return target.verifier.policies
    assert target.broker is not None
    return (target.broker.release_rules,)


def in_force(target: Target, name: str) -> InForce:
    """The document in force for ``name`` in ``target``'s store (or its seed file)."""
    store = PolicyStore(target.store_path)
    try:
        current = store.in_force(target.policy_kind).get(name)
    finally:
        store.close()
    if current is not None:
        return InForce(current.label, current.document, f"{current.label} (in force)")
    for path in _seed_files(target):
        try:
            raw = path.read_bytes()
            checked = check_document(raw, str(path), now=utc_now())
        except (OSError, KeybrokerError):
            continue
        if checked.kind == target.policy_kind and checked.name == name:
            return InForce(f"{name}@seed", raw, f"{path} (seed file, not yet stored)")
    raise Malformed(f"no {target.policy_kind} named '{name}' in {target.store_path}",
                    rule="policy.name", expected="the name of a stored policy", actual=name)


def _schema(args: argparse.Namespace) -> int:
    kind = str(args.kind)
    name = KINDS.get(kind, kind)
    print(json.dumps(schema(name), indent=2, sort_keys=False))
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    now = utc_now()
    for name in args.files:
        path = Path(name)
        try:
            checked = check_document(read_file(path), str(path), now=now)
        except KeybrokerError as err:
            print_error(err)
            failed += 1
            continue
        print(f"ok {path}: {checked.kind} {checked.name} ({checked.summary}) "
              f"sha256:{checked.digest[:12]}")
    return EXIT_FAILED if failed else EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    first, second = args.old, Path(args.new)
    now = utc_now()
    if args.config:
        target = load_target(Path(args.config))
        current = in_force(target, first)
        old_raw, old_name = current.document, current.source
    else:
        old_raw, old_name = read_file(Path(first)), first
    new_raw = read_file(second)
    old = check_document(old_raw, old_name, now=now)
    new = check_document(new_raw, str(second), now=now)
    if old.kind != new.kind:
        raise Malformed("cannot diff documents of different kinds", rule="policy.kind",
                        expected=old.kind, actual=new.kind)
    changes = semantic_diff(old.document.data, new.document.data)
    if args.json:
        print(json.dumps({"old": old_name, "new": str(second), "kind": new.kind,
                          "old_digest": old.digest, "new_digest": new.digest,
                          "changes": [c.as_dict() for c in changes]}, indent=2))
        return EXIT_OK
    sys.stdout.write(unified_diff(old_raw, new_raw, old_name, str(second)))
    print(f"# {len(changes)} field(s) changed ({new.kind} {old.name} -> {new.name})")
    for change in changes:
        print(f"# {change.line()}")
    return EXIT_OK


def _print_version(verb: str, version: PolicyVersion) -> None:
    print(f"{verb} {version.kind} {version.label} sha256:{version.digest[:12]} "
          f"by {version.author}")


def _history_dict(v: PolicyVersion) -> dict[str, object]:
    return {"kind": v.kind, "name": v.name, "version": v.version, "digest": v.digest,
            "author": v.author, "comment": v.comment, "created_at": rfc3339(v.created_at),
            "action": v.action, "rollback_of": v.rollback_of}


def _history(args: argparse.Namespace) -> int:
    target = load_target(Path(args.config))
    store = PolicyStore(target.store_path)
    try:
        versions = store.history(target.policy_kind, args.name)
    finally:
        store.close()
    if not versions:
        raise Malformed(f"no {target.policy_kind} named '{args.name}' in {target.store_path}",
                        rule="policy.name", expected="the name of a stored policy",
                        actual=args.name)
    if args.json:
        print(json.dumps([_history_dict(v) for v in versions], indent=2))
        return EXIT_OK
    for v in versions:
        action = v.action if v.rollback_of is None else f"{v.action}(to {v.rollback_of})"
        print(f"{v.version} {rfc3339(v.created_at)} {v.author} {action} "
              f"{json.dumps(v.comment)} {v.digest[:12]}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy`` commands (schema, validate, diff, apply, history, rollback)."""
    p = sub.add_parser("schema", help="print a document kind's JSON Schema")
    p.add_argument("kind", choices=sorted(set(KINDS) | set(KINDS.values())),
                   help="document kind (AppraisalPolicy, ReleaseRules, ...)")
    p.set_defaults(func=command(_schema))

    p = sub.add_parser("validate", help="check documents offline (schema, compile, CEL)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=command(_validate))

    p = sub.add_parser("diff", help="unified diff and semantic summary of two documents")
    p.add_argument("old", metavar="OLD|NAME",
                   help="old document file, or with --config the name in force")
    p.add_argument("new", metavar="NEW", help="new document file")
    p.add_argument("--config", help="compare with the version in force of this service")
    p.add_argument("--json", action="store_true", help="print the semantic diff as JSON")
    p.set_defaults(func=command(_diff))

    p = sub.add_parser("apply", help="store a new version (after a full compile)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--comment", required=True, help="why (kept in the history)")
    add_server_args(p)
    p.set_defaults(func=command(online(remote_apply)))

    p = sub.add_parser("history", help="versions of a policy, oldest first")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--config", help="offline: verifier or broker TOML config")
    p.add_argument("--json", action="store_true")
    add_server_args(p, service=True, required=False)
    p.set_defaults(func=command(either(_history, remote_history, service=True)))

    p = sub.add_parser("rollback", help="put an older version's document back in force")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", type=int, required=True, metavar="N", help="version to restore")
    p.add_argument("--comment", required=True, help="why (kept in the history)")
    add_server_args(p, service=True)
    p.set_defaults(func=command(online(remote_rollback, service=True)))
