"""``keybroker broker kek ...``: the KEK versions of a broker and their rotation.

Invariants:
- ``rotate`` re-wraps data keys only (never decrypts or rewrites a secret's ciphertext) and is
  resumable: an interrupted rotation is finished by running it again, which says "resumed".
- ``status`` shows ids, versions, states and locators, never key material.
- Exit codes: 0 success, 1 failure (HSM or store unavailable), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from broker.config import BrokerConfig
from broker.keystore import open_ring
from broker.secrets import SecretStore
from broker.service import open_main_database
from keybroker.errors import KeybrokerError

EXIT_OK, EXIT_FAIL = 0, 1


def _store(config: BrokerConfig) -> SecretStore:
    db = open_main_database(config)
    return SecretStore(db, open_ring(config, db), clock=time.time)


def _status(config: BrokerConfig) -> int:
    try:
        versions = _store(config).ring.versions()
    except KeybrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    for v in versions:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.created_at))
        print(f"v{v.version}\t{v.state}\t{v.kek_id}\t{v.backend}:{v.locator}\t{created}")
    return EXIT_OK


def _rotate(config: BrokerConfig) -> int:
    try:
        store = _store(config)
        done = store.ring.rotate(store.rewrap)
    except KeybrokerError as err:
        print(f"error: KEK rotation stopped (run it again to resume): {err}", file=sys.stderr)
        return EXIT_FAIL
    verb = "resumed and finished" if done.resumed else "finished"
    print(f"KEK rotation {verb}: v{done.target.version} ({done.target.kek_id}) is current; "
          f"{done.rewrapped} data key(s) re-wrapped; retired: "
          f"{', '.join(done.retired) or 'none'}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             load: Callable[[argparse.Namespace], BrokerConfig | None]) -> None:
    """Add ``kek status`` and ``kek rotate`` under ``broker``; ``load`` reads ``--config``."""
    kek = commands.add_parser("kek", help="key-encryption key versions and rotation")
    kek_cmds = kek.add_subparsers(dest="kek_command", required=True)
    actions: tuple[tuple[str, Callable[[BrokerConfig], int], str], ...] = (
            ("status", _status, "list KEK versions (current, target, previous, retired)"),
            ("rotate", _rotate, "create a new KEK version, re-wrap every data key under it, "
                                "retire versions nothing uses (resumes an interrupted one)"))
    for name, action, text in actions:
        cmd = kek_cmds.add_parser(name, help=text)
        cmd.add_argument("--config", required=True, help="broker config file (TOML)")

        def run(args: argparse.Namespace,
                action: Callable[[BrokerConfig], int] = action) -> int:
            config = load(args)
            return 2 if config is None else action(config)

        cmd.set_defaults(func=run)
