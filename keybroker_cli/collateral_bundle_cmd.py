"""``keybroker collateral export | import``: carry a verifier's collateral store to verifiers
that cannot reach the vendors, as a signed bundle.

Invariants:
- Export writes every item of the store, signed with the operator's key; the file is
  replaced whole.
- Import refuses a bundle no ``--trust-key`` signed (nothing stored), then re-verifies every
  item against the pinned roots through its source: an item that does not verify is named and
  not stored, the others are. The store keeps the newer of two items for a key.
- Exit codes: 0 every item stored or already held, 1 the bundle or an item was refused, 2
  usage error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from keybroker.errors import KeybrokerError, Malformed
from keybroker_cli.collateral_sources import sources, stored_items
from keybroker_cli.verify import _rfc3339
from verifier.collateral.bundle import (
    BundledItem,
    SigningKey,
    VerifyKey,
    read_bundle,
    write_bundle,
)
from verifier.collateral.item_store import CollateralItemStore
from verifier.config import load_config

EXPORT_HELP = """\
Write every item of the verifier's collateral store into a bundle signed with your key
(EC P-256, P-384 or Ed25519 private key, PEM), for verifiers that cannot reach AMD or Intel.

example:
  keybroker collateral export --config verifier.toml --signing-key bundle-key.pem out.bundle

exit codes: 0 written, 2 usage error (unreadable config or key)"""
IMPORT_HELP = """\
Import a signed collateral bundle into the verifier's collateral store. The bundle must be
signed by one of the --trust-key public keys, and every item in it is verified again against
the pinned AMD and Intel roots before it is stored; a running verifier picks the items up at
its next poll.

example:
  keybroker collateral import --config verifier.toml --trust-key bundle-key.pub in.bundle

exit codes: 0 imported, 1 the bundle or an item was refused, 2 usage error"""


def add_commands(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` and ``import`` to the ``collateral`` group."""
    raw = argparse.RawDescriptionHelpFormatter
    export = cmds.add_parser("export", help="write the collateral store as a signed bundle",
                             description=EXPORT_HELP, formatter_class=raw)
    export.add_argument("bundle", type=Path, help="bundle file to write")
    export.add_argument("--config", required=True, type=Path, help="verifier config (TOML)")
    export.add_argument("--signing-key", required=True, type=Path, metavar="PEM",
                        help="private key that signs the bundle")
    export.set_defaults(func=_export)
    imp = cmds.add_parser("import", help="verify a signed bundle and store its items",
                          description=IMPORT_HELP, formatter_class=raw)
    imp.add_argument("bundle", type=Path, help="bundle file to read")
    imp.add_argument("--config", required=True, type=Path, help="verifier config (TOML)")
    imp.add_argument("--trust-key", required=True, action="append", type=Path, metavar="PEM",
                     help="public key whose bundles are accepted (repeatable)")
    imp.add_argument("--at", type=_rfc3339, metavar="RFC3339",
                     help="time the items' chains are checked at (default: now)")
    imp.set_defaults(func=_import)


def _signing_key(path: Path) -> SigningKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise TypeError(f"{path}: not an EC or Ed25519 private key")
    return key


def _verify_key(path: Path) -> VerifyKey:
    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise TypeError(f"{path}: not an EC or Ed25519 public key")
    return key


def _export(args: argparse.Namespace) -> int:
    try:
        key = _signing_key(args.signing_key)
        _, items = stored_items(args.config)
    except (OSError, ValueError, TypeError, KeybrokerError) as exc:
        print(f"keybroker collateral export: error: {exc}", file=sys.stderr)
        return 2
    data = write_bundle([BundledItem(i.key, i.kind, i.body, i.issuer_chain, i.source,
                                     i.fetched_at) for i in items], key,
                        created=datetime.now(UTC))
    partial = args.bundle.with_name(args.bundle.name + ".partial")
    partial.write_bytes(data)
    partial.replace(args.bundle)
    print(f"exported {len(items)} items to {args.bundle}")
    return 0


def _import(args: argparse.Namespace) -> int:
    try:
        at = args.at or datetime.now(UTC)
        config = load_config(args.config)
        trusted = [_verify_key(p) for p in args.trust_key]
        data = args.bundle.read_bytes()
    except (OSError, ValueError, TypeError, KeybrokerError) as exc:
        print(f"keybroker collateral import: error: {exc}", file=sys.stderr)
        return 2
    try:
        created, bundled = read_bundle(data, trusted)
    except KeybrokerError as exc:
        print(f"keybroker collateral import: refused: {exc}", file=sys.stderr)
        return 1
    vendors = sources(args, config.fetch)
    store = CollateralItemStore(config.state_db)
    refused = stored = 0
    try:
        for entry in bundled:
            source = vendors.for_key(entry.key)
            try:
                need = source.need(entry.key)
                if need.kind != entry.kind:
                    raise Malformed("item kind does not match its key", rule="bundle.kind",
                                    expected=need.kind, actual=entry.kind)
                item = source.verify(
                    need, entry.body, entry.issuer_chain, source=f"bundle {args.bundle.name}",
                    at=at, fetched_at=entry.fetched_at)
            except KeybrokerError as exc:
                print(f"REFUSED  {entry.key}: {exc}")
                refused += 1
                continue
            new = store.put(item)
            stored += new
            print(f"{'stored  ' if new else 'held    '} {item.key}  next update "
                  f"{item.next_update.isoformat()}")
    finally:
        store.close()
    print(f"bundle of {created.isoformat()}: {stored} stored, {len(bundled) - stored - refused} "
          f"already held, {refused} refused")
    return 1 if refused else 0
