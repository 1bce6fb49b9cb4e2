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
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from keybroker.document import document_kind
from keybroker.rpc_errors import error_from_rpc
from keybroker.tls import client_credentials
from keybroker.v1 import admin_pb2, admin_pb2_grpc
from keybroker_cli.admin.target import (
    EXIT_OK,
    KIND_RULES,
    UsageError,
    command,
    parse_instant,
    read_file,
    rfc3339,
)

SERVICES = ("broker", "verifier")


def add_server_args(parser: argparse.ArgumentParser, *, service: bool = False,
                    required: bool = True) -> None:
    """``--server``, ``--ca``, ``--cert/--key``, ``--token``/``--token-file`` (+ ``--service``);
    ``required`` False where the offline ``--config`` form is the alternative."""
    group = parser.add_argument_group("admin API")
    group.add_argument("--profile", type=Path,
                       help="client profile (TOML: ca, cert + key or token_file, and the "
                            "verifier and broker admin addresses) instead of the options below")
    group.add_argument("--server", metavar="HOST:PORT",
                       help="the service's admin_listen address")
    group.add_argument("--ca", type=Path, help="CA bundle of the server's certificate")
    group.add_argument("--cert", type=Path, help="client certificate (mutual TLS identity)")
    group.add_argument("--key", type=Path, help="its private key")
    group.add_argument("--token", help="bearer JWT (identity without a client certificate)")
    group.add_argument("--token-file", type=Path, help="file holding the bearer JWT")
    if service:
        group.add_argument("--service", choices=SERVICES, required=required,
                           help="which service's admin API --server is")
    del required  # --server/--ca or --profile: checked when the command runs


def online(action: Callable[[argparse.Namespace], int], *,
           service: bool = False) -> Callable[[argparse.Namespace], int]:
    """``action`` through the admin API: ``--profile`` or ``--server`` + ``--ca`` required
    (and ``--service`` where the command needs it)."""
    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "profile", None) and not (args.server and args.ca):
            raise UsageError("give --profile, or --server and --ca (the admin API)")
        if service and args.service is None:
            raise UsageError("give --service broker|verifier")
        return action(args)
    return run


def either(offline: Callable[[argparse.Namespace], int],
           api: Callable[[argparse.Namespace], int],
           *, service: bool = False) -> Callable[[argparse.Namespace], int]:
    """Read-only commands: the admin API form with ``--profile``/``--server``, else the
    offline ``--config`` form (reads the service's store files)."""
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "profile", None) or args.server:
            if getattr(args, "config", None):
                raise UsageError("give --config (offline) or the admin API, not both")
            return online(api, service=service)(args)
        if not getattr(args, "config", None):
            raise UsageError("give --config (offline) or --profile/--server (admin API)")
        return offline(args)
    return run


def _profile(args: argparse.Namespace, service: str) -> None:
    """Fill --server/--ca/--cert/--key/--token from --profile (explicit options win)."""
    try:
        data = tomllib.loads(read_file(Path(args.profile)).decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{args.profile}: not a TOML profile: {exc}") from None
    unknown = sorted(set(data) - {"ca", "cert", "key", "token_file", *SERVICES})
    if unknown or not all(isinstance(v, str) for v in data.values()):
        raise UsageError(f"{args.profile}: expected string keys ca, cert, key, token_file, "
                         f"verifier, broker (found {', '.join(unknown) or 'a non-string'})")
    args.server = args.server or data.get(service)
    if not args.server:
        raise UsageError(f"{args.profile} has no {service} address")
    for key in ("ca", "cert", "key", "token_file"):
        if getattr(args, key) is None and key in data:
            setattr(args, key, Path(data[key]))


def _connect(args: argparse.Namespace,
             service: str) -> tuple[grpc.Channel, list[tuple[str, str]]]:
    if getattr(args, "profile", None):
        _profile(args, service)
    if not args.server or args.ca is None:
        raise UsageError("give --profile, or --server and --ca")
    token = args.token
    if args.token_file is not None:
        token = read_file(Path(args.token_file)).decode("utf-8").strip()
    if token and args.cert:
        raise UsageError("give --cert/--key or a token, not both")
    credentials = client_credentials(Path(args.ca), args.cert, args.key)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return grpc.secure_channel(args.server, credentials), metadata


def call(args: argparse.Namespace, rpc: Callable[[Any, list[tuple[str, str]]], Any],
          service: str) -> Any:
    channel, metadata = _connect(args, service)
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
    for warning in v.warnings:
        print(f"warning: {warning}", file=sys.stderr)
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
    return _version_line("applied", call(
        args, lambda s, m: getattr(s, rpc)(request, metadata=m), service))


def history(args: argparse.Namespace) -> int:
    """``policy history NAME --server --service``."""
    rpc = "RulesHistory" if args.service == "broker" else "PolicyHistory"
    reply = call(args, lambda s, m: getattr(s, rpc)(admin_pb2.NameRequest(name=args.name),
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
    return _version_line("rolled back", call(
        args, lambda s, m: getattr(s, rpc)(request, metadata=m), args.service))


def refvalues_import(args: argparse.Namespace) -> int:
    """``refvalues import FILE --server``."""
    path = Path(args.file)  # a YAML document or a JWS manifest: the verifier tells them apart
    request = admin_pb2.DocumentRequest(document=read_file(path), source=str(path),
                                        comment=args.comment)
    v = json.loads(call(args, lambda s, m: s.ImportReferenceValues(request, metadata=m),
                         "verifier").json)
    print(f"imported {v['name']}@{v['version']} {v['state']} ({v['provenance']}): "
          f"{v['values']} value(s)")
    return EXIT_OK


def refvalues_state(args: argparse.Namespace, state: str) -> int:
    """``refvalues activate|deprecate|retire NAME VERSION --server``."""
    request = admin_pb2.ReferenceStateRequest(
        name=args.name, version=args.version, state=state, comment=args.comment,
        retire_at=(parse_instant(args.retire_at).isoformat()
                   if getattr(args, "retire_at", None) else ""))
    moved = json.loads(call(args, lambda s, m: s.SetReferenceState(request, metadata=m),
                             "verifier").json)
    print(f"{moved['name']}@{moved['version']}: {moved['from'] or 'none'} -> {moved['to']}"
          + (f" (retires {rfc3339(parse_instant(request.retire_at))})"
             if request.retire_at else ""))
    return EXIT_OK


def _secret(args: argparse.Namespace) -> int:
    action = args.secret_command
    if action == "put":
        value = read_file(Path(args.file))
        request: Any = admin_pb2.PutSecretRequest(key_id=args.key_id, value=value)
        if args.expect_version is not None:
            request.expect_version = args.expect_version
        return _print_json(call(args, lambda s, m: s.PutSecret(request, metadata=m),
                                 "broker").json)
    if action == "generate":
        request = admin_pb2.GenerateSecretRequest(key_id=args.key_id, length=args.length)
        if args.expect_version is not None:
            request.expect_version = args.expect_version
        return _print_json(call(args, lambda s, m: s.GenerateSecret(request, metadata=m),
                                 "broker").json)
    if action == "list":
        request = admin_pb2.ListSecretsRequest(key_id=args.key_id or "")
        return _print_json(call(args, lambda s, m: s.ListSecrets(request, metadata=m),
                                 "broker").json)
    state = {"enable": "enabled", "disable": "disabled", "destroy": "pending_destruction"}
    request = admin_pb2.SetSecretStateRequest(
        key_id=args.key_id, version=args.version, state=state[action],
        grace_seconds=int(getattr(args, "grace_days", 0) * 86400))
    return _print_json(call(args, lambda s, m: s.SetSecretState(request, metadata=m),
                             "broker").json)


def _audit(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        reply = call(args, lambda s, m: s.VerifyAudit(admin_pb2.VerifyAuditRequest(
            expect_head=args.expect_head or ""), metadata=m), args.service)
        print(f"audit chain OK: {reply.records} records, head {reply.head}; "
              f"{reply.checkpoints} keyed checkpoint(s), covering records 1..{reply.covered_to}")
        return EXIT_OK
    rpc = "ExportAudit" if args.audit_command == "export" else "ListAudit"
    if rpc == "ExportAudit" and args.service != "broker":
        raise UsageError("audit export is a broker command (the verifier's log has no "
                         "keyed checkpoints)")
    reply = call(args, lambda s, m: getattr(s, rpc)(admin_pb2.ListAuditRequest(),
                                                     metadata=m), args.service)
    print(reply.json)
    return EXIT_OK


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the API-only groups ``secret`` and ``audit``."""
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
        sub.set_defaults(func=command(online(_secret)))

    audit = groups.add_parser("audit", help="the audit log through the admin API")
    acmds = audit.add_subparsers(dest="audit_command", required=True)
    for name, what in (("list", "print the records (JSON Lines)"),
                       ("verify", "check the hash chain and the keyed checkpoints"),
                       ("export", "JSON Lines with the keyed checkpoints (broker)")):
        p = acmds.add_parser(name, help=what)
        if name == "verify":
            p.add_argument("--expect-head", help="a head hash seen earlier")
        add_server_args(p, service=True)
        p.set_defaults(func=command(online(_audit, service=True)))

