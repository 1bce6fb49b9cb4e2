"""``keybroker verify DOC --tee nitro``: an AWS Nitro Enclaves attestation document checked
offline: strict COSE/CBOR, ES384, the chain to the pinned AWS root G1 at ``--at``, the
signature, the timestamp window, and (with ``--policy``) an appraisal policy.

Invariants:
- DOC is raw CBOR (a COSE_Sign1 starts with 0x84 or tag 18) or base64 text of it, recognised
  by content; anything else goes to the parser as it is and is MALFORMED there.
- The time is ``--at`` or now. Leaves live hours, so a document checked long after it was
  made is CHAIN_UNTRUSTED (expired), which is the expected answer, not a crash.
- ``--nonce`` (hex) must equal the document's nonce (FRESHNESS); absent, the nonce is not
  checked, and the output says so. ``--insecure-simulator-root`` (PEM) adds simulator roots.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from keybroker.errors import FreshnessError, KeybrokerError
from keybroker_cli.evidence_input import UsageError, read_input

NITRO_ONLY = ("max_age",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--tee nitro`` options of ``keybroker verify``."""
    group = parser.add_argument_group("Nitro (--tee nitro; the positional file is the "
                                      "attestation document, CBOR or base64)")
    group.add_argument("--max-age", type=int, metavar="SECONDS",
                       help="accept documents made up to this long before --at (default 300)")


def document_bytes(data: bytes) -> bytes:
    """Raw CBOR as it is; base64 (or base64url) text decoded (module invariants)."""
    if data[:1] in (b"\x84", b"\xd2"):
        return data
    text = b"".join(data.split())
    try:
        if b"-" in text or b"_" in text:
            return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return data


def run_nitro(args: argparse.Namespace,
              conclude: Callable[[Callable[[], tuple[Any, tuple[str, ...]]], datetime, bool],
                                 int]) -> int:
    """Verify through ``conclude`` (claims, time, insecure); the exit code."""
    from verifier.nitro.chain import pinned_root, simulator_roots  # noqa: PLC0415
    from verifier.nitro.verify import DEFAULT_MAX_SKEW, NitroVerifier  # noqa: PLC0415

    if args.collateral or args.cert_table is not None or args.allow_missing_crl:
        raise UsageError("--collateral, --cert-table and --allow-missing-crl do not apply to "
                         "--tee nitro (no collateral, no revocation lists)")
    try:
        nonce = bytes.fromhex(args.nonce) if args.nonce is not None else None
    except ValueError:
        raise UsageError(f"--nonce: not hex: {args.nonce!r}") from None
    if nonce is None:
        print("note: no --nonce given: the document's nonce is not checked", file=sys.stderr)
    max_age = args.max_age if args.max_age is not None else 300
    if max_age < 1:
        raise UsageError("--max-age must be at least 1 second")
    try:
        extra = simulator_roots(list(args.insecure_simulator_root))
    except KeybrokerError as exc:
        raise UsageError(exc.detail) from None
    if extra:
        print("WARNING: trusting INSECURE Nitro simulator roots: "
              + ", ".join(str(p) for p in args.insecure_simulator_root), file=sys.stderr)
    verifier = NitroVerifier((pinned_root(), *extra), max_age=timedelta(seconds=max_age),
                             max_skew=DEFAULT_MAX_SKEW)
    raw = document_bytes(read_input(args.file) or b"")
    at = args.at or datetime.now(UTC)

    def verified() -> tuple[Any, tuple[str, ...]]:
        claims = verifier.verify(raw, at=at)
        if nonce is not None and claims.nonce != nonce:
            raise FreshnessError("the document's nonce is not --nonce", rule="nitro.nonce",
                                 expected=nonce.hex(),
                                 actual=claims.nonce.hex() if claims.nonce else "absent")
        return claims, ()

    return conclude(verified, at, bool(extra))
