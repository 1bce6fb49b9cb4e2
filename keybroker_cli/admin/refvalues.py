"""``keybroker admin refvalues import|activate|deprecate|retire|list``.

Invariants:
- Reference values live only in the verifier's ``state_db``; a broker config is a usage error.
- ``import`` of a YAML/JSON ``ReferenceValues`` document needs the ``refvalue-admin`` role
  (provenance ``admin:<author>``). A JWS compact manifest (a ``.jws`` file, or a file whose
  content is a single compact token) is authorised by its signature instead: it must verify
  under a configured ``reference_providers`` key whose ``sets`` patterns cover the set
  (provenance ``jws:<provider>:<sha256>``); the author is recorded but needs no role.
- Every import creates a new STAGED version; only ``activate`` makes values decide, and every
  state change needs ``refvalue-admin``, an author and a comment (kept in the event log).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

from keybroker.roles import REFVALUE_ADMIN, require_role
from keybroker_cli.admin.remote import add_server_args, either, refvalues_import, refvalues_state
from keybroker_cli.admin.target import (
    EXIT_OK,
    Target,
    add_change_args,
    command,
    load_target,
    parse_instant,
    read_file,
    rfc3339,
    utc_now,
)
from verifier.reference.manifest import load_provider
from verifier.reference.store import ReferenceStore
from verifier.reference.values import RefSetVersion, RefState

_COMPACT_JWS = re.compile(rb"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def _store(target: Target) -> ReferenceStore:
    return ReferenceStore(target.verifier_config("reference values").state_db)


def is_jws(path: Path, raw: bytes) -> bool:
    """Whether ``raw`` (read from ``path``) is a JWS compact manifest."""
    return path.suffix == ".jws" or bool(_COMPACT_JWS.fullmatch(raw.strip()))


def _describe(version: RefSetVersion) -> str:
    return f"{version.label} {version.state.value} ({version.provenance})"


def _import(args: argparse.Namespace) -> int:
    target = load_target(Path(args.config))
    config = target.verifier_config("refvalues import")
    path = Path(args.file)
    raw = read_file(path)
    now = utc_now()
    store = _store(target)
    try:
        if is_jws(path, raw):
            providers = [load_provider(p.name, p.key, p.sets)
                         for p in config.reference_providers]
            version = store.import_manifest(raw, str(path), providers, author=args.author,
                                            comment=args.comment, now=now)
        else:
            require_role(target.admins, args.author, REFVALUE_ADMIN)
            version = store.import_admin(raw, str(path), author=args.author,
                                         comment=args.comment, now=now)
    finally:
        store.close()
    print(f"imported {_describe(version)}: {len(version.values)} value(s)")
    return EXIT_OK


def _transition(args: argparse.Namespace, to: RefState) -> int:
    target = load_target(Path(args.config))
    target.verifier_config(f"refvalues {args.refvalues_command}")
    require_role(target.admins, args.author, REFVALUE_ADMIN)
    retire_at = parse_instant(args.retire_at) if to is RefState.DEPRECATED else None
    store = _store(target)
    try:
        event = store.transition(args.name, args.version, to, author=args.author,
                                 comment=args.comment, now=utc_now(), retire_at=retire_at)
    finally:
        store.close()
    tail = f" (retires {rfc3339(event.retire_at)})" if event.retire_at else ""
    from_state = event.from_state.value if event.from_state else "none"
    print(f"{event.name}@{event.version}: {from_state} -> {event.to_state.value}{tail}")
    return EXIT_OK


def _activate(args: argparse.Namespace) -> int:
    return _transition(args, RefState.ACTIVE)


def _deprecate(args: argparse.Namespace) -> int:
    return _transition(args, RefState.DEPRECATED)


def _retire(args: argparse.Namespace) -> int:
    return _transition(args, RefState.RETIRED)


def _as_dict(v: RefSetVersion) -> dict[str, object]:
    return {
        "name": v.name, "version": v.version, "state": v.state.value,
        "retire_at": rfc3339(v.retire_at) if v.retire_at else None,
        "provenance": v.provenance, "author": v.author, "created_at": rfc3339(v.created_at),
        "values": [{"name": x.name, "value": x.value, "not_before": rfc3339(x.not_before),
                    "not_after": rfc3339(x.not_after)} for x in v.values],
    }


def _list(args: argparse.Namespace) -> int:
    target = load_target(Path(args.config))
    store = _store(target)
    try:
        versions = store.versions(args.name)
    finally:
        store.close()
    if args.json:
        print(json.dumps([_as_dict(v) for v in versions], indent=2))
        return EXIT_OK
    for v in versions:
        retire = f" retires {rfc3339(v.retire_at)}" if v.retire_at else ""
        print(f"{v.label} {v.state.value}{retire} {len(v.values)} value(s) "
              f"{v.provenance} {rfc3339(v.created_at)}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``refvalues`` commands."""
    p = sub.add_parser("import", help="import a ReferenceValues document or JWS manifest "
                                      "as a new staged version")
    p.add_argument("file", metavar="FILE", help="YAML/JSON document, or a .jws manifest")
    add_change_args(p, config="verifier TOML config", role="refvalue-admin")
    add_server_args(p, required=False)
    p.set_defaults(func=command(either(_import, refvalues_import, needs=("config",))))

    for name, body, what in (("activate", _activate, "staged -> active"),
                             ("deprecate", _deprecate, "active -> deprecated (needs "
                                                       "--retire-at)"),
                             ("retire", _retire, "staged/active/deprecated -> retired")):
        p = sub.add_parser(name, help=what)
        p.add_argument("name", metavar="NAME", help="set name")
        p.add_argument("version", metavar="VERSION", type=int, help="set version")
        if name == "deprecate":
            p.add_argument("--retire-at", required=True, metavar="T",
                           help="RFC 3339 instant after which the version no longer matches")
        add_change_args(p, config="verifier TOML config", role="refvalue-admin")
        add_server_args(p, required=False)
        state = {"activate": "active", "deprecate": "deprecated", "retire": "retired"}[name]
        p.set_defaults(func=command(either(body, functools.partial(refvalues_state,
                                                                    state=state))))

    p = sub.add_parser("list", help="set versions with state and provenance")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this set")
    p.add_argument("--config", required=True, help="verifier TOML config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command(_list))
