"""``keybroker verify``: verify one piece of evidence offline and print its claims and verdict.

Invariants:
- Roots are the pinned AMD roots plus, only with ``--insecure-simulator-root``, simulator
  roots (announced on stderr); collateral comes only from ``--collateral`` paths; the time is
  ``--at`` or the current UTC time. Nothing touches the network.
- Exit codes: 0 verified, 1 rejected (category and reason printed), 2 usage error (bad
  arguments, unreadable file, unsupported ``--tee``, unusable policy).
- Without ``--policy`` only authenticity is checked; with it the claims are appraised by
  ``verifier.appraisal.appraise_snp`` against ``verifier.policy.load_policy(FILE)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from keybroker.errors import KeybrokerError, Malformed
from verifier.snp.claims import SnpClaims

TEES = ("snp", "tdx", "sgx", "nitro", "tpm")


def _rfc3339(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"RFC 3339 time needs a timezone (Z or +hh:mm): {text!r}")
    return value.astimezone(UTC)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``verify`` subcommand."""
    parser = sub.add_parser("verify", help="verify evidence offline and print claims + verdict",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="evidence file (SNP: the raw 1184-byte report)")
    parser.add_argument("--tee", required=True, choices=TEES, help="evidence type")
    parser.add_argument("--collateral", type=Path, action="append", default=[],
                        metavar="PATH", help="collateral file or directory (repeatable)")
    parser.add_argument("--cert-table", type=Path, metavar="FILE",
                        help="GHCB certificate table of an extended report")
    parser.add_argument("--at", type=_rfc3339, metavar="RFC3339",
                        help="verification time (default: now)")
    parser.add_argument("--policy", type=Path, metavar="FILE", help="appraisal policy (TOML)")
    parser.add_argument("--init-data", type=Path, metavar="FILE",
                        help="init-data document presented with the evidence (with --policy)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--insecure-simulator-root", type=Path, action="append", default=[],
                        metavar="PEM", help="INSECURE: also trust this simulator ARK")
    parser.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"keybroker verify: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Execute ``keybroker verify``; returns the exit code."""
    from verifier.collateral import CollateralStore  # noqa: PLC0415 - keep CLI start-up light
    from verifier.snp.trust import AmdTrustStore  # noqa: PLC0415
    from verifier.snp.verify import SnpVerifier  # noqa: PLC0415

    if args.tee != "snp":
        return _usage(f"--tee {args.tee} is not supported yet")
    try:
        report = Path(args.file).read_bytes()
        cert_table = Path(args.cert_table).read_bytes() if args.cert_table else b""
        init_data = Path(args.init_data).read_bytes() if args.init_data else b""
        trust = AmdTrustStore.pinned()
        if args.insecure_simulator_root:
            print("WARNING: trusting INSECURE simulator roots: "
                  + ", ".join(str(p) for p in args.insecure_simulator_root), file=sys.stderr)
            trust = trust.with_simulator_roots(list(args.insecure_simulator_root))
        collateral = CollateralStore.load(list(args.collateral))
    except OSError as exc:
        return _usage(f"cannot read {exc.filename or ''}: {exc.strerror or exc}")
    except Malformed as exc:
        return _usage(exc.detail)
    policy = None
    if args.policy is not None:
        from verifier.policy import load_policy  # noqa: PLC0415 - optional feature

        try:
            policy = load_policy(Path(args.policy))
        except KeybrokerError as exc:
            return _usage(f"unusable policy: {exc.detail}")
    at = args.at or datetime.now(UTC)
    claims: SnpClaims | None = None
    appraisal: dict[str, object] | None = None
    try:
        claims = SnpVerifier(trust, collateral).verify(report, cert_table, at=at)
        if policy is not None:
            from verifier.appraisal import appraise_snp  # noqa: PLC0415 - optional feature

            result = appraise_snp(claims, policy, init_data=init_data,
                                  allow_insecure_root=bool(args.insecure_simulator_root))
            appraisal = {"status": result.status, "policy_id": result.policy_id,
                         "policy_digest": result.policy_digest,
                         "trust_vector": dict(result.trust_vector)}
    except KeybrokerError as exc:
        _emit(args.json, verdict="rejected", error=exc, claims=claims, appraisal=None, at=at)
        return 1
    _emit(args.json, verdict="verified", error=None, claims=claims, appraisal=appraisal, at=at)
    return 0


def _emit(as_json: bool, *, verdict: str, error: KeybrokerError | None,
          claims: SnpClaims | None, appraisal: Mapping[str, object] | None,
          at: datetime) -> None:
    doc: dict[str, object] = {
        "verdict": verdict,
        "category": error.category.value if error else None,
        "reason": error.reason if error else None,
        "claims": claims.as_dict() if claims else {},
        "at": at.isoformat().replace("+00:00", "Z"),
    }
    if error is not None:
        doc.update(rule=error.rule, expected=error.expected, actual=error.actual)
    if appraisal is not None:
        doc["appraisal"] = dict(appraisal)
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    for key, value in _flatten(doc["claims"]):
        print(f"{key}: {value}")
    if appraisal is not None:
        for key, value in _flatten(appraisal, "appraisal."):
            print(f"{key}: {value}")
    print(f"verification time: {doc['at']}")
    if error is None:
        print(f"verdict: {verdict}")
    else:
        print(f"verdict: {verdict} ({error.category.value}): {error.detail}")


def _flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, object]] = []
        for key, item in value.items():
            out.extend(_flatten(item, f"{prefix}{key}."))
        return out
    return [(prefix.rstrip("."), value)]
