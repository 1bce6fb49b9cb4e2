"""``keybroker verify TOKEN.jwt --tee maa``: a Microsoft Azure Attestation token checked
offline with the instance's JWKS from a file (never fetched, never from the token).

Invariants:
- ``--jwks`` is required; ``--issuer`` pins the instance (absent: not pinned, and said so).
- The time is ``--at`` or now; an expired token is TOKEN_INVALID like any other token fault.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keybroker.errors import KeybrokerError
from keybroker_cli.evidence_input import UsageError, read_input

MAA_ONLY = ("jwks", "issuer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--tee maa`` options of ``keybroker verify``."""
    group = parser.add_argument_group("MAA (--tee maa; the positional file is the JWT)")
    group.add_argument("--jwks", type=Path, metavar="FILE",
                       help="the MAA instance's signing keys (JWKS, as its /certs serves it)")
    group.add_argument("--issuer", metavar="URL",
                       help="the MAA instance URL the token must name as iss")


def run_maa(args: argparse.Namespace,
            conclude: Callable[[Callable[[], tuple[Any, tuple[str, ...]]], datetime], int]
            ) -> int:
    """Verify the token through ``conclude`` (verify-and-print at a time); the exit code."""
    from verifier.maa.claims import MaaClaims  # noqa: PLC0415 - keep CLI start-up light
    from verifier.maa.token import MaaInstance, load_jwks, verify_maa_token  # noqa: PLC0415

    if args.jwks is None:
        raise UsageError("--tee maa needs --jwks")
    if args.policy is not None or args.collateral or args.cert_table is not None:
        raise UsageError("--policy, --collateral and --cert-table do not apply to --tee maa")
    try:
        keys = load_jwks(read_input(args.jwks) or b"")
    except KeybrokerError as exc:
        raise UsageError(f"--jwks {args.jwks}: {exc.detail}") from None
    if args.issuer is None:
        print("note: no --issuer given: the token's issuer is not pinned", file=sys.stderr)
    token = read_input(args.file) or b""
    instance = MaaInstance(keys, args.issuer)
    at = args.at or datetime.now(UTC)

    def verified() -> tuple[MaaClaims, tuple[str, ...]]:
        return MaaClaims.of(verify_maa_token(token, instance, at=at)), ()

    return conclude(verified, at)
