"""``keybroker db migrate``: bring a service's databases to this version's schema.

Invariants:
- The services apply their migrations when they open a store; this command does the same
  ahead of a rollout (or for a replica set, once, before the new binaries start) and prints
  every component's version. Running it again changes nothing.
- A database migrated by a newer keybroker is refused (exit 1), never written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.service import BROKER_MIGRATIONS
from keybroker.audit_log import AUDIT_MIGRATIONS
from keybroker.database import DatabaseTarget, open_database
from keybroker.errors import KeybrokerError
from keybroker.migrations import Migration
from keybroker.policy_store import POLICY_MIGRATIONS
from keybroker_cli.admin.target import UsageError, load_target
from verifier.collateral.item_store import COLLATERAL_MIGRATIONS
from verifier.records import RECORD_MIGRATIONS
from verifier.reference.store import REFERENCE_MIGRATIONS
from verifier.tpm.enrolment import TPM_MIGRATIONS

HELP = """\
Apply the schema migrations of this keybroker version to every database a broker or
verifier config names (SQLite files or a shared PostgreSQL database), then print each
component's schema version. The services do this themselves when they start; run it
before rolling out a new version to replicas that share PostgreSQL, so the first replica
to start does not migrate under the others. Safe to run again.

examples:
  keybroker db migrate --config /etc/keybroker/broker.toml
  keybroker db migrate --config /etc/keybroker/verifier.toml

exit codes: 0 migrated or already current, 1 a database refused (unreachable, or migrated
by a newer keybroker), 2 usage error"""

Area = tuple[DatabaseTarget, str, Sequence[Migration]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db migrate``."""
    db = sub.add_parser("db", help="database schema migrations")
    cmds = db.add_subparsers(dest="db_command", required=True)
    migrate = cmds.add_parser("migrate", help="apply this version's schema migrations",
                              description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    migrate.add_argument("--config", required=True, help="broker or verifier config (TOML)")
    migrate.set_defaults(func=_migrate)


def _areas(config: str) -> list[Area]:
    target = load_target(Path(config))
    if target.broker is not None:
        broker = target.broker
        return [(broker.database, "broker", BROKER_MIGRATIONS),
                (broker.database, "policies", POLICY_MIGRATIONS),
                (broker.audit_database, "audit", AUDIT_MIGRATIONS)]
    verifier = target.verifier_config("databases")
    return [(verifier.state_db, "policies", POLICY_MIGRATIONS),
            (verifier.state_db, "references", REFERENCE_MIGRATIONS),
            (verifier.state_db, "records", RECORD_MIGRATIONS),
            (verifier.state_db, "tpm", TPM_MIGRATIONS),
            (verifier.state_db, "collateral", COLLATERAL_MIGRATIONS),
            (verifier.audit_database, "audit", AUDIT_MIGRATIONS)]


def _migrate(args: argparse.Namespace) -> int:
    try:
        areas = _areas(args.config)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = False
    for where, component, steps in areas:
        try:
            db = open_database(where, component=component, migrations=steps)
        except KeybrokerError as err:
            print(f"{component}: {where}: error {err}", file=sys.stderr)
            failed = True
            continue
        applied = ", ".join(str(v) for v in db.applied)
        print(f"{component}: {db.where}: schema version {len(steps)} "
              f"({f'applied now: {applied}' if applied else 'already current'})")
        db.close()
    return 1 if failed else 0
