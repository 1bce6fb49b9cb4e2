"""``keybroker admin ... --server HOST:PORT``: the admin commands as clients of the admin API.

Invariants:
- The caller's identity is the channel's: ``--cert/--key`` (mutual TLS) or ``--token`` /
  ``--token-file`` (a bearer JWT); the server's certificate is checked against ``--ca``.
  There is no ``--author``: the server records the authenticated principal.
- A refusal prints ``error <CATEGORY>: <reason> (expected ..., actual ...)`` like the offline
  commands (exit 1); connection and TLS failures are UNAVAILABLE (exit 1); bad options exit 2.
- Which service a command talks to follows from what it does: appraisal policies, reference
  values and the TCB report go to the verifier's admin API, release rules and secrets to the
  broker's; ``--service`` names it where the command alone cannot (history, rollback, audit,
  status).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from keybroker.document import document_kind
from keybroker.rpc_errors import error_from_rpc
from keybroker.tls import client_credentials
from keybroker.v1 import admin_pb2, admin_pb2_grpc
from keybroker_cli.admin.target import EXIT_OK, KIND_RULES, UsageError, command, read_file

SERVICES = ("broker", "verifier")


def add_server_args(parser: argparse.ArgumentParser, *, service: bool = False,
                    required: bool = True) -> None:
    """``--server``, ``--ca``, ``--cert/--key``, ``--token``/``--token-file`` (+ ``--service``);
    ``required`` False where the offline ``--config`` form is the alternative."""
    group = parser.add_argument_group("admin API")
    group.add_argument("--server", required=required, metavar="HOST:PORT",
                       help="the service's admin_listen address")
    group.add_argument("--ca", required=required, type=Path,
                       help="CA bundle of the server's certificate")
    group.add_argument("--cert", type=Path, help="client certificate (mutual TLS identity)")
    group.add_argument("--key", type=Path, help="its private key")
    group.add_argument("--token", help="bearer JWT (identity without a client certificate)")
    group.add_argument("--token-file", type=Path, help="file holding the bearer JWT")
    if service:
        group.add_argument("--service", choices=SERVICES, required=required,
                           help="which service's admin API --server is")


def either(offline: Callable[[argparse.Namespace], int],
           online: Callable[[argparse.Namespace], int],
           *, needs: tuple[str, ...] = ("config", "author"),
           service: bool = False) -> Callable[[argparse.Namespace], int]:
    """The admin API form when ``--server`` is given (no ``--author``: the channel says who),
    else the offline ``--config`` form (single host, direct store access)."""
    def run(args: argparse.Namespace) -> int:
        if args.server:
            if getattr(args, "author", None) or getattr(args, "config", None):
                raise UsageError("--server takes the identity from the channel: drop "
                                 "--config/--author")
            if args.ca is None or (service and args.service is None):
                raise UsageError("--server needs --ca" + (" and --service" if service else ""))
            return online(args)
        missing = [f"--{n}" for n in needs if not getattr(args, n, None)]
        if missing:
            raise UsageError(f"give --server (admin API) or {' and '.join(missing)}")
        return offline(args)
    return run


def _connect(args: argparse.Namespace) -> tuple[grpc.Channel, list[tuple[str, str]]]:
    token = args.token
    if args.token_file is not None:
        token = read_file(Path(args.token_file)).decode("utf-8").strip()
    if token and args.cert:
        raise UsageError("give --cert/--key or a token, not both")
    credentials = client_credentials(Path(args.ca), args.cert, args.key)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return grpc.secure_channel(args.server, credentials), metadata


def _call(args: argparse.Namespace, rpc: Callable[[Any, list[tuple[str, str]]], Any],
          service: str) -> Any:
    channel, metadata = _connect(args)
    stub = (admin_pb2_grpc.BrokerAdminStub(channel) if service == "broker"
            else admin_pb2_grpc.VerifierAdminStub(channel))
    with channel:
        try:
            return rpc(stub, metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"{service} admin API at {args.server}") from None


def _print_json(text: str) -> int:
    print(json.dumps(json.loads(text), indent=2) if text.strip() else "[]")
    return EXIT_OK


def _version_line(verb: str, v: admin_pb2.DocumentVersion) -> int:
    print(f"{verb} {v.kind} {v.name}@{v.version} sha256:{v.digest[:12]} by {v.author}")
    return EXIT_OK


def _document(args: argparse.Namespace) -> tuple[admin_pb2.DocumentRequest, str]:
    path = Path(args.file)
    raw = read_file(path)
    service = "broker" if document_kind(raw, str(path)) == KIND_RULES else "verifier"
    return admin_pb2.DocumentRequest(document=raw, source=str(path),
                                     comment=getattr(args, "comment", "") or ""), service


def apply(args: argparse.Namespace) -> int:
    """``policy apply --server``: AppraisalPolicy to the verifier, ReleaseRules to the broker."""
    request, service = _document(args)
    rpc = "ApplyRules" if service == "broker" else "ApplyPolicy"
    return _version_line("applied", _call(
        args, lambda s, m: getattr(s, rpc)(request, metadata=m), service))


def history(args: argparse.Namespace) -> int:
    """``policy history NAME --server --service``."""
    rpc = "RulesHistory" if args.service == "broker" else "PolicyHistory"
    reply = _call(args, lambda s, m: getattr(s, rpc)(admin_pb2.NameRequest(name=args.name),
                                                     metadata=m), args.service)
    for v in reply.versions:
        print(f"{v.version} {v.created_at} {v.author} {v.action} {json.dumps(v.comment)} "
              f"{v.digest[:12]}")
    return EXIT_OK


def rollback(args: argparse.Namespace) -> int:
    """``policy rollback NAME --to N --server --service``."""
    rpc = "RollbackRules" if args.service == "broker" else "RollbackPolicy"
    request = admin_pb2.RollbackRequest(name=args.name, to_version=args.to,
                                        comment=args.comment)
    return _version_line("rolled back", _call(
        args, lambda s, m: getattr(s, rpc)(request, metadata=m), args.service))


def refvalues_import(args: argparse.Namespace) -> int:
    """``refvalues import FILE --server``."""
    request, _ = _document(args)
    return _print_json(_call(args, lambda s, m: s.ImportReferenceValues(request, metadata=m),
                             "verifier").json)


def refvalues_state(args: argparse.Namespace, state: str) -> int:
    """``refvalues activate|deprecate|retire NAME VERSION --server``."""
    request = admin_pb2.ReferenceStateRequest(
        name=args.name, version=args.version, state=state, comment=args.comment,
        retire_at=getattr(args, "retire_at", "") or "")
    return _print_json(_call(args, lambda s, m: s.SetReferenceState(request, metadata=m),
                             "verifier").json)


def _secret(args: argparse.Namespace) -> int:
    action = args.secret_command
    if action == "put":
        value = read_file(Path(args.file))
        request: Any = admin_pb2.PutSecretRequest(key_id=args.key_id, value=value)
        if args.expect_version is not None:
            request.expect_version = args.expect_version
        return _print_json(_call(args, lambda s, m: s.PutSecret(request, metadata=m),
                                 "broker").json)
    if action == "generate":
        request = admin_pb2.GenerateSecretRequest(key_id=args.key_id, length=args.length)
        if args.expect_version is not None:
            request.expect_version = args.expect_version
        return _print_json(_call(args, lambda s, m: s.GenerateSecret(request, metadata=m),
                                 "broker").json)
    if action == "list":
        request = admin_pb2.ListSecretsRequest(key_id=args.key_id or "")
        return _print_json(_call(args, lambda s, m: s.ListSecrets(request, metadata=m),
                                 "broker").json)
    state = {"enable": "enabled", "disable": "disabled", "destroy": "pending_destruction"}
    request = admin_pb2.SetSecretStateRequest(
        key_id=args.key_id, version=args.version, state=state[action],
        grace_seconds=int(getattr(args, "grace_days", 0) * 86400))
    return _print_json(_call(args, lambda s, m: s.SetSecretState(request, metadata=m),
                             "broker").json)


def _audit(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        reply = _call(args, lambda s, m: s.VerifyAudit(admin_pb2.VerifyAuditRequest(
            expect_head=args.expect_head or ""), metadata=m), args.service)
        print(f"audit chain OK: {reply.records} records, head {reply.head}; "
              f"{reply.checkpoints} keyed checkpoint(s), covering records 1..{reply.covered_to}")
        return EXIT_OK
    rpc = "ExportAudit" if args.audit_command == "export" else "ListAudit"
    if rpc == "ExportAudit" and args.service != "broker":
        raise UsageError("audit export is a broker command (the verifier's log has no "
                         "keyed checkpoints)")
    reply = _call(args, lambda s, m: getattr(s, rpc)(admin_pb2.ListAuditRequest(),
                                                     metadata=m), args.service)
    print(reply.json)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    reply = _call(args, lambda s, m: s.Status(admin_pb2.StatusRequest(), metadata=m),
                  args.service)
    print(f"{reply.service}: principal {reply.principal} roles {', '.join(reply.roles)}")
    return _print_json(reply.json)


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the API-only groups ``secret``, ``audit`` and ``status``."""
    secret = groups.add_parser("secret", help="secrets through the broker's admin API "
                                              "(never their values)")
    cmds = secret.add_subparsers(dest="secret_command", required=True)
    p = cmds.add_parser("put", help="store a new version from a file")
    p.add_argument("key_id")
    p.add_argument("--file", required=True, help="file with the secret value")
    p.add_argument("--expect-version", type=int, help="compare-and-set on the latest version")
    add_server_args(p)
    p = cmds.add_parser("generate", help="a new version of random key material made by the "
                                         "broker")
    p.add_argument("key_id")
    p.add_argument("--length", type=int, default=32, help="bytes (default 32)")
    p.add_argument("--expect-version", type=int, help="compare-and-set on the latest version")
    add_server_args(p)
    p = cmds.add_parser("list", help="versions with their states")
    p.add_argument("key_id", nargs="?")
    add_server_args(p)
    for name, what in (("enable", "enable a version (also cancels a scheduled destruction)"),
                       ("disable", "stop releasing a version"),
                       ("destroy", "schedule a version's destruction after a grace period")):
        p = cmds.add_parser(name, help=what)
        p.add_argument("key_id")
        p.add_argument("version", type=int)
        if name == "destroy":
            p.add_argument("--grace-days", type=float, default=7.0,
                           help="days before the data key is erased (default 7)")
        add_server_args(p)
    for sub in cmds.choices.values():
        sub.set_defaults(func=command(_secret))

    audit = groups.add_parser("audit", help="the audit log through the admin API")
    acmds = audit.add_subparsers(dest="audit_command", required=True)
    for name, what in (("list", "print the records (JSON Lines)"),
                       ("verify", "check the hash chain and the keyed checkpoints"),
                       ("export", "JSON Lines with the keyed checkpoints (broker)")):
        p = acmds.add_parser(name, help=what)
        if name == "verify":
            p.add_argument("--expect-head", help="a head hash seen earlier")
        add_server_args(p, service=True)
        p.set_defaults(func=command(_audit))

    p = groups.add_parser("status", help="who you are to a service, and its state")
    add_server_args(p, service=True)
    p.set_defaults(func=command(_status))
