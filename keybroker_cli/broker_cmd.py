"""``keybroker broker ...``: initialise, serve, manage secrets and inspect the audit log.

Invariants:
- Exit codes: 0 success, 1 failure/rejection, 2 usage or configuration error.
- A configuration with ``accept_insecure_results = true`` is refused (exit 2) unless the
  operator passes ``--insecure-simulator``; with it, a loud WARNING is logged at start.
- ``serve`` prints exactly one line ``broker listening on HOST:PORT`` to stdout once serving.
- Secret values are read from a file or stdin and never printed; listings show ids and
  versions only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from broker.config import BrokerConfig, load_config
from broker.keystore import initialise, open_backend, open_ring
from broker.secrets import MAX_SECRET_BYTES, SecretStore, VersionConflict
from broker.server import serve
from broker.service import open_main_database
from keybroker.audit_log import AuditLog
from keybroker.errors import KeybrokerError
from keybroker_cli import kek_cmd
from keybroker_cli.pid_file import add_pid_file_option, pid_file

_log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _config(args: argparse.Namespace) -> BrokerConfig | None:
    try:
        return load_config(Path(args.config))
    except KeybrokerError as err:
        print(f"error: invalid broker config: {err}", file=sys.stderr)
        return None


def _init(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    try:
        for path in (config.database, config.audit_database, config.kek_file):
            if isinstance(path, Path):
                path.parent.mkdir(parents=True, exist_ok=True)
        backend = open_backend(config)
        created = initialise(backend)
        for what in created:
            print(f"created {what} ({backend.name} KEK provider)")
        if not created:
            print(f"KEK and audit key exist in the {backend.name} provider; kept")
        db = open_main_database(config)
        open_ring(config, db, backend)
        db.close()
        AuditLog(config.audit_database, clock=time.time).close()
    except (KeybrokerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    print(f"initialised broker database {config.database} and audit log "
          f"{config.audit_database}")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    if config.accept_insecure_results and not args.insecure_simulator:
        print("error: REFUSING TO START: accept_insecure_results = true in "
              f"{args.config} accepts results from a verifier using TEST ROOTS; pass "
              "--insecure-simulator only for a test or demo deployment", file=sys.stderr)
        return EXIT_USAGE
    if config.accept_insecure_results:
        _log.warning("!!! INSECURE: the broker accepts attestation results based on simulator "
                     "TEST ROOTS; never use this configuration in production !!!")

    try:
        with pid_file("broker", args.pid_file) as ready:
            asyncio.run(serve(config, ready=ready, plaintext=bool(args.insecure_plaintext)))
    except FileExistsError as err:
        print(f"error: REFUSING TO START: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeybrokerError as err:
        print(f"error: broker failed: {err}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, ValueError) as err:
        print(f"error: broker failed: {err}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _secret_store(config: BrokerConfig) -> SecretStore:
    db = open_main_database(config)
    return SecretStore(db, open_ring(config, db),
                       clock=time.time)


def _secret_put(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    try:
        if args.stdin:
            value = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)
        else:
            value = Path(args.file).read_bytes()
        version = _secret_store(config).put(args.key_id, value,
                                            expect_version=args.expect_version)
    except VersionConflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except (KeybrokerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    print(f"stored {args.key_id} version {version}")
    return EXIT_OK


def _secret_list(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    try:
        infos = _secret_store(config).list()
    except KeybrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    for info in infos:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.created_at))
        print(f"{info.key_id}\t{info.version}\t{created}")
    return EXIT_OK


AUDIT_COLUMNS = ("seq", "time", "outcome", "category", "request_id", "keys", "policies",
                 "detail")


def _audit_list(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    try:
        records = AuditLog(config.audit_database, clock=time.time).records()
    except KeybrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    wanted = set(args.request_id)
    if wanted:
        records = [r for r in records if r.entry.request_id in wanted]
    if not args.json:
        print("\t".join(AUDIT_COLUMNS))
    for rec in records:
        if args.json:
            print(json.dumps(rec.as_dict(), sort_keys=True))
        else:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.time))
            e = rec.entry
            print(f"{rec.seq}\t{when}\t{e.kind}\t{e.category or '-'}\t{e.request_id}\t"
                  f"{','.join(e.keys) or '-'}\t{','.join(e.policy_ids) or '-'}\t"
                  f"{e.reason or '-'}")
    return EXIT_OK


def _audit_verify(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    try:
        log = AuditLog(config.audit_database, clock=time.time)
        mac = open_backend(config).audit_mac
        count = log.verify_chain(expect_head=args.expect_head, mac=mac)
        covered = log.checkpoints()
    except KeybrokerError as err:
        print(f"audit chain INVALID: {err}", file=sys.stderr)
        return EXIT_FAIL
    last = covered[-1].to_seq if covered else 0
    print(f"audit chain OK: {count} records, head {log.head()}; {len(covered)} keyed "
          f"checkpoint(s) verified, covering records 1..{last}"
          + ("" if last == count else f" (records {last + 1}..{count}: hash chain only)"))
    return EXIT_OK


def _audit_export(args: argparse.Namespace) -> int:
    """JSON Lines: every record, each checkpoint right after the record it ends on."""
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    try:
        log = AuditLog(config.audit_database, clock=time.time)
        records, checkpoints = log.records(), {c.to_seq: c for c in log.checkpoints()}
    except KeybrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    with Path(args.out).open("w", encoding="utf-8") as out:
        for rec in records:
            out.write(json.dumps({"type": "record", **rec.as_dict()}, sort_keys=True) + "\n")
            if rec.seq in checkpoints:
                out.write(json.dumps(checkpoints[rec.seq].as_dict(), sort_keys=True) + "\n")
    print(f"exported {len(records)} records and {len(checkpoints)} checkpoints to {args.out}")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    """Add the ``broker`` command group to the top-level subparsers."""
    group = sub.add_parser("broker", help="the key broker (relying party + KMS front end)")
    commands = group.add_subparsers(dest="broker_command", required=True)

    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--config", required=True, help="broker config file (TOML)")
        return parser

    init = with_config(commands.add_parser("init", help="create the databases and KEK file"))
    init.set_defaults(func=_init)

    srv = with_config(commands.add_parser("serve", help="run the KeyBroker gRPC service"))
    srv.add_argument("--insecure-simulator", action="store_true",
                     help="allow accept_insecure_results (simulator test roots; NEVER in "
                          "production)")
    srv.add_argument("--insecure-plaintext", action="store_true",
                     help="INSECURE: serve agents and call the verifier without TLS (loopback "
                          "addresses only). For local experiments, never production")
    add_pid_file_option(srv)
    srv.set_defaults(func=_serve, default_log_level="INFO")

    secret = commands.add_parser("secret", help="manage stored secrets")
    secret_cmds = secret.add_subparsers(dest="secret_command", required=True)
    put = with_config(secret_cmds.add_parser("put", help="store a new secret version"))
    put.add_argument("--key-id", required=True)
    source = put.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="read the value from this file")
    source.add_argument("--stdin", action="store_true", help="read the value from stdin")
    put.add_argument("--expect-version", type=int, default=None,
                     help="compare-and-set: the current latest version (0: new key)")
    put.set_defaults(func=_secret_put)
    lst = with_config(secret_cmds.add_parser("list", help="list key ids and versions"))
    lst.set_defaults(func=_secret_list)

    kek_cmd.register(commands, _config)

    audit = commands.add_parser("audit", help="inspect the audit log")
    audit_cmds = audit.add_subparsers(dest="audit_command", required=True)
    alist = with_config(audit_cmds.add_parser("list", help="print audit records"))
    alist.add_argument("--json", action="store_true", help="one JSON object per line")
    alist.add_argument("--request-id", action="append", default=[], metavar="ID",
                       help="only the records of this request (repeatable)")
    alist.set_defaults(func=_audit_list)
    verify = with_config(audit_cmds.add_parser("verify", help="verify the hash chain"))
    verify.add_argument("--expect-head", default=None,
                        help="a head hash recorded earlier (detects truncation)")
    verify.set_defaults(func=_audit_verify)
    export = with_config(audit_cmds.add_parser(
        "export", help="write records and keyed checkpoints as JSON Lines (for an external "
                       "store)"))
    export.add_argument("--out", required=True, type=Path, help="file to write")
    export.set_defaults(func=_audit_export)
