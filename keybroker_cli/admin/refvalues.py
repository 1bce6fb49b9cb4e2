"""``keybroker admin refvalues import|activate|deprecate|retire|list``.

Invariants:
- Reference values live only in the verifier's ``state_db``; imports and state changes go
  through its admin API with the ``refvalue-admin`` role (the principal is the author:
  provenance ``admin:<principal>``). A JWS compact manifest must also verify under a
  configured ``reference_providers`` key whose ``sets`` patterns cover the set (provenance
  ``jws:<provider>:<sha256>``).
- Every import creates a new STAGED version; only ``activate`` makes values decide, and every
  state change carries a comment (kept in the event log). ``list`` reads the store offline.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

from keybroker_cli.admin.remote import add_server_args, online, refvalues_import, refvalues_state
from keybroker_cli.admin.target import (
    EXIT_OK,
    Target,
    command,
    load_target,
    rfc3339,
)
from verifier.reference.store import ReferenceStore
from verifier.reference.values import RefSetVersion

_COMPACT_JWS = re.compile(rb"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def _store(target: Target) -> ReferenceStore:
    return ReferenceStore(target.verifier_config("reference values").state_db)


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
    p.add_argument("--comment", required=True, help="why (kept in the history)")
    add_server_args(p)
    p.set_defaults(func=command(online(refvalues_import)))

    for name, what in (("activate", "staged -> active"),
                       ("deprecate", "active -> deprecated (needs --retire-at)"),
                       ("retire", "staged/active/deprecated -> retired")):
        p = sub.add_parser(name, help=what)
        p.add_argument("name", metavar="NAME", help="set name")
        p.add_argument("version", metavar="VERSION", type=int, help="set version")
        if name == "deprecate":
            p.add_argument("--retire-at", required=True, metavar="T",
                           help="RFC 3339 instant after which the version no longer matches")
        p.add_argument("--comment", required=True, help="why (kept in the history)")
        add_server_args(p)
        state = {"activate": "active", "deprecate": "deprecated", "retire": "retired"}[name]
        p.set_defaults(func=command(online(functools.partial(refvalues_state, state=state))))

    p = sub.add_parser("list", help="set versions with state and provenance")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this set")
    p.add_argument("--config", required=True, help="verifier TOML config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command(_list))
