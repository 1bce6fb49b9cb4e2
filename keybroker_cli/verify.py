"""``keybroker verify``: verify one piece of evidence offline and print its claims and verdict.

Invariants:
- Roots are the pinned AMD / Intel roots plus, only with ``--insecure-simulator-root``,
  simulator roots (announced on stderr). Those files are routed by content: a self-signed
  P-256 "Intel SGX Root CA" is a DCAP (TDX/SGX) simulator root, anything else an AMD ARK file.
  Collateral comes only from ``--collateral`` paths, recognised by content; the time is
  ``--at`` or the current UTC time. Nothing touches the network.
- TDX/SGX quote files are raw binary, base64 text or hex text, recognised by content.
- Exit codes: 0 verified, 1 rejected (category and reason printed), 2 usage error (bad
  arguments, unreadable file, unsupported ``--tee``, unusable policy).
- Without ``--policy`` only authenticity is checked: TDX/SGX exit 0 for every TCB status Intel
  defines (printed with its advisories and any collateral warning), while a platform matching
  no TCB level, a Revoked one, or missing/stale collateral is rejected. With ``--policy`` the
  claims and the ``--init-data`` document are appraised by the decision engine
  (``verifier.policy.decision.appraise``). Reference values come only from ``--refs`` files
  (ReferenceValues documents, each taken as an ACTIVE set version, checked as an import
  would); without them a policy that binds a claim to a reference-value set is denied
  (MEASUREMENT). The output gains the workload claims and the appraisal's warnings, matched
  references and TCB debt.
- TDX event logs (``--ccel-table/--ccel-data``, ``--runtime-log``) must replay to the quoted
  RTMRs (``EVENT_LOG`` otherwise); the replayed events become ``claims.events``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keybroker.errors import KeybrokerError, Malformed
from keybroker_cli import verify_azure, verify_maa, verify_nitro, verify_tpm
from keybroker_cli.evidence_input import (
    UsageError,
    decode_quote,
    read_input,
    split_simulator_roots,
)

if TYPE_CHECKING:
    from verifier.collateral.cache import CollateralStore
    from verifier.dcap.claims import SgxClaims, TdxClaims
    from verifier.maa.claims import MaaClaims
    from verifier.policy.model import AppraisalPolicy
    from verifier.reference.values import ReferenceSnapshot
    from verifier.snp.claims import SnpClaims
    from verifier.tee import Claims
    from verifier.tpm.claims import TpmClaims
    from verifier.verdict import Appraisal

VERIFY_HELP = """\
Verify one piece of evidence offline: signatures, the endorsement chain to the pinned AMD or
Intel roots, revocation lists and collateral at the given time, and (with --policy) an
appraisal policy. Nothing touches the network: collateral comes from --collateral files.

examples:
  keybroker verify report.bin --tee snp --collateral ./amd-certs/ --at 2025-06-01T00:00:00Z
  keybroker verify quote.dat --tee tdx --collateral ./intel-pcs/ --policy tdx.yaml --json
  keybroker verify quote.attest --tee tpm --signature quote.sig --ak ak.tpmt \
      --pcrs pcrs_sha256.json --eventlog binary_bios_measurements --nonce 0011...
  keybroker verify token.jwt --tee maa --jwks maa-certs.json --issuer https://x.attest.azure.net
  keybroker verify document.cbor --tee nitro --at 2022-10-13T08:58:03Z --policy nitro.yaml

exit codes: 0 verified, 1 rejected (category and reason printed), 2 usage error"""
_DCAP_ONLY = ("ccel_table", "ccel_data", "runtime_log")


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
                            description=VERIFY_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path,
                        help="evidence file (SNP: the raw 1184-byte report; TDX/SGX: the quote, "
                             "binary, base64 or hex; Nitro: the document, CBOR or base64)")
    parser.add_argument("--tee", required=True, choices=tuple(_RUNNERS),
                        help="evidence type")
    parser.add_argument("--collateral", type=Path, action="append", default=[],
                        metavar="PATH", help="collateral file or directory (repeatable)")
    parser.add_argument("--cert-table", type=Path, metavar="FILE",
                        help="SNP: GHCB certificate table of an extended report")
    parser.add_argument("--at", type=_rfc3339, metavar="RFC3339",
                        help="verification time (default: now)")
    parser.add_argument("--allow-missing-crl", action="store_true",
                        help="accept evidence whose revocation lists (AMD ARK CRL, Intel PCK and "
                             "root CA CRLs) are missing or stale; the gap is printed and "
                             "recorded as a warning in the claims")
    parser.add_argument("--ccel-table", type=Path, metavar="FILE",
                        help="TDX: the ACPI CCEL table (with --ccel-data)")
    parser.add_argument("--ccel-data", type=Path, metavar="FILE",
                        help="TDX: the CCEL event log area, replayed to RTMR0-3")
    parser.add_argument("--runtime-log", type=Path, metavar="FILE",
                        help="TDX: the agent's runtime event log, replayed into RTMR3")
    parser.add_argument("--policy", type=Path, metavar="FILE",
                        help="appraisal policy (YAML, kind AppraisalPolicy)")
    parser.add_argument("--init-data", type=Path, metavar="FILE",
                        help="init-data document presented with the evidence (with --policy)")
    parser.add_argument("--refs", type=Path, action="append", default=[], metavar="FILE",
                        help="ReferenceValues document (YAML), taken as an active set "
                             "(with --policy; repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    verify_tpm.add_arguments(parser)
    verify_maa.add_arguments(parser)
    verify_nitro.add_arguments(parser)
    parser.add_argument("--insecure-simulator-root", type=Path, action="append", default=[],
                        metavar="FILE", help="INSECURE: also trust this simulator root (AMD ARK "
                                             "PEM, DCAP simulator root PEM or DER, Nitro "
                                             "simulator root PEM)")
    parser.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"keybroker verify: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Execute ``keybroker verify``; returns the exit code."""
    runner = _RUNNERS[args.tee]  # argparse offers only these
    for tees, names in (((*verify_azure.AZURE, "tpm", "nitro"), ("nonce",)),
                        (("nitro",), verify_nitro.NITRO_ONLY),
                        (("tpm",), tuple(n for n in verify_tpm.TPM_ONLY if n != "nonce")),
                        (("maa",), verify_maa.MAA_ONLY)):
        used = [f"--{n}" for n in names if getattr(args, n) not in (None, [])]
        if used and args.tee not in tees:
            return _usage(f"{', '.join(used)} apply to --tee {' | '.join(tees)} only")
    try:
        return runner(args)
    except UsageError as exc:
        return _usage(str(exc))


def _load_policy(args: argparse.Namespace) -> AppraisalPolicy | None:
    if args.policy is None:
        return None
    from verifier import registry  # noqa: PLC0415 - keep CLI start-up light
    from verifier.policy.compile import load_policy  # noqa: PLC0415 - optional feature

    try:
        policy = load_policy(Path(args.policy))
    except KeybrokerError as exc:
        raise UsageError(f"unusable policy: {exc.detail}") from None
    tee = registry.by_kind(args.tee)
    platform = tee.platform if tee is not None else args.tee
    if policy.platform != platform:
        raise UsageError(f"policy {args.policy} is for platform {policy.platform}, not "
                         f"{platform}")
    return policy


def _load_collateral(paths: Sequence[Path]) -> CollateralStore:
    from verifier.collateral.cache import CollateralStore  # noqa: PLC0415 - keep CLI start-up light

    try:
        store = CollateralStore.load(list(paths))
    except OSError as exc:
        raise UsageError(f"cannot read collateral {exc.filename or '(unnamed)'}: "
                         f"{exc.strerror or exc}") from None
    for skipped in store.skipped:
        print(f"WARNING: collateral file ignored: {skipped}", file=sys.stderr)
    return store


def _warn_collateral(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        print(f"WARNING: collateral incomplete: {warning} (allowed by --allow-missing-crl)",
              file=sys.stderr)


def _run_snp(args: argparse.Namespace) -> int:
    from verifier.snp.trust import AmdTrustStore  # noqa: PLC0415 - keep CLI start-up light
    from verifier.snp.verify import SnpVerifier  # noqa: PLC0415

    used = [f"--{name.replace('_', '-')}" for name in _DCAP_ONLY if getattr(args, name)]
    if used:
        raise UsageError(f"{', '.join(used)} apply to --tee tdx|sgx only")
    report = read_input(args.file) or b""
    cert_table = read_input(args.cert_table) or b""
    init_data = read_input(args.init_data) or b""
    amd_roots, intel_roots = split_simulator_roots(list(args.insecure_simulator_root))
    try:
        trust = AmdTrustStore.pinned()
        if amd_roots:
            print("WARNING: trusting INSECURE simulator roots: "
                  + ", ".join(str(p) for p in amd_roots), file=sys.stderr)
            trust = trust.with_simulator_roots(amd_roots)
    except Malformed as exc:
        return _usage(exc.detail)
    if intel_roots:
        print("note: DCAP simulator roots are not used for SNP evidence", file=sys.stderr)
    collateral = _load_collateral(list(args.collateral))
    policy = _load_policy(args)
    at = args.at or datetime.now(UTC)
    references = _load_references(args, at)

    def verified() -> tuple[SnpClaims, tuple[str, ...]]:
        claims = SnpVerifier(trust, collateral).verify(report, cert_table, at=at,
                                                       allow_missing_crl=args.allow_missing_crl)
        return claims, claims.collateral_warnings

    return _conclude(args, verified, policy=policy, at=at, init_data=init_data,
                     references=references, insecure=bool(amd_roots))


def _conclude(args: argparse.Namespace,
              verify: Callable[[], tuple[SnpClaims | TdxClaims | SgxClaims | TpmClaims
                                         | MaaClaims, tuple[str, ...]]],
              *, policy: AppraisalPolicy | None, at: datetime, init_data: bytes,
              references: ReferenceSnapshot, insecure: bool,
              extend: Callable[[Any], Any] | None = None) -> int:
    """Verify, print the collateral warnings, add what the event logs prove (``extend``),
    appraise (with --policy) and print the result (with the verified claims even when a
    later step rejects); the exit code (0 verified, 1 rejected)."""
    claims: SnpClaims | TdxClaims | SgxClaims | TpmClaims | MaaClaims | None = None
    appraisal: dict[str, object] | None = None
    workload: dict[str, object] | None = None
    try:
        claims, warnings = verify()
        _warn_collateral(warnings)
        if extend is not None:
            claims = extend(claims)
        if policy is not None:
            appraisal, workload = _appraise(claims, policy, at=at, init_data=init_data,
                                            references=references, insecure=insecure)
    except KeybrokerError as exc:
        _emit(args.json, verdict="rejected", error=exc, claims=claims, appraisal=None,
              workload=None, at=at)
        return 1
    _emit(args.json, verdict="verified", error=None, claims=claims, appraisal=appraisal,
          workload=workload, at=at)
    return 0


def _run_dcap(args: argparse.Namespace) -> int:
    from verifier.dcap.verify import DcapVerifier  # noqa: PLC0415 - keep CLI start-up light

    tdx = args.tee == "tdx"
    if args.cert_table is not None:
        raise UsageError("--cert-table applies to --tee snp only")
    logs = {"ccel_table": read_input(args.ccel_table), "ccel_data": read_input(args.ccel_data),
            "runtime_log": read_input(args.runtime_log)}
    if not tdx and any(v is not None for v in logs.values()):
        raise UsageError("event logs (--ccel-*, --runtime-log) apply to --tee tdx only")
    if logs["ccel_table"] is not None and logs["ccel_data"] is None:
        raise UsageError("--ccel-table needs --ccel-data")
    quote = decode_quote(read_input(args.file) or b"")
    init_data = read_input(args.init_data) or b""
    amd_roots, intel_roots = split_simulator_roots(list(args.insecure_simulator_root))
    if amd_roots:
        print("note: AMD simulator roots are not used for DCAP evidence: "
              + ", ".join(str(p) for p in amd_roots), file=sys.stderr)
    if intel_roots:
        print("WARNING: trusting INSECURE DCAP simulator roots: "
              + ", ".join(s.root.fingerprint[:16] for s in intel_roots), file=sys.stderr)
    collateral = _load_collateral(list(args.collateral))
    policy = _load_policy(args)
    at = args.at or datetime.now(UTC)
    references = _load_references(args, at)
    verifier = DcapVerifier(collateral, simulator_roots=intel_roots)

    def verified() -> tuple[TdxClaims | SgxClaims, tuple[str, ...]]:
        claims: TdxClaims | SgxClaims = (
            verifier.verify_tdx(quote, at=at, allow_missing_crl=args.allow_missing_crl) if tdx
            else verifier.verify_sgx(quote, at=at, allow_missing_crl=args.allow_missing_crl))
        return claims, claims.tcb.collateral_warnings

    def with_events(claims: TdxClaims) -> TdxClaims:
        from verifier.eventlog.measured import td_event_claims  # noqa: PLC0415

        return dataclasses.replace(claims, events=td_event_claims(
            claims.rtmrs, ccel_table=logs["ccel_table"], ccel_data=logs["ccel_data"],
            runtime_log=logs["runtime_log"]))

    has_logs = tdx and any(v is not None for v in logs.values())
    return _conclude(args, verified, policy=policy, at=at, init_data=init_data,
                     references=references, insecure=bool(intel_roots),
                     extend=with_events if has_logs else None)


def _load_references(args: argparse.Namespace, at: datetime) -> ReferenceSnapshot:
    """``--refs`` documents as ACTIVE set versions (an empty snapshot without them)."""
    from verifier.reference.values import ReferenceSnapshot  # noqa: PLC0415 - optional feature

    paths = list(args.refs)
    if not paths:
        return ReferenceSnapshot(())
    if args.policy is None:
        raise UsageError("--refs needs --policy")
    from verifier.policy.cases import active_references  # noqa: PLC0415

    documents = [(read_input(Path(path)) or b"", str(path)) for path in paths]
    try:
        return active_references(documents, now=at)
    except KeybrokerError as exc:
        raise UsageError(f"unusable reference values: {exc.detail}") from None


def _appraise(claims: Claims, policy: AppraisalPolicy, *, at: datetime,
              init_data: bytes, references: ReferenceSnapshot,
              insecure: bool) -> tuple[dict[str, object], dict[str, object]]:
    """The decision engine's appraisal document and workload claims."""
    from verifier.policy.decision import appraise  # noqa: PLC0415 - optional feature

    result, workload = appraise(policy, claims, init_data=init_data, at=at,
                                references=references, allow_insecure_root=insecure)
    return _appraisal_doc(result), workload.as_dict()


def _appraisal_doc(result: Appraisal) -> dict[str, object]:
    return {"status": result.status, "policy_id": result.policy_id,
            "policy_digest": result.policy_digest, "trust_vector": dict(result.trust_vector),
            "warnings": list(result.warnings), "matched": dict(result.matched),
            "would_match": list(result.would_match), "tcb_debt": list(result.tcb_debt)}


def _emit(as_json: bool, *, verdict: str, error: KeybrokerError | None,
          claims: SnpClaims | TdxClaims | SgxClaims | TpmClaims | MaaClaims | None,
          appraisal: Mapping[str, object] | None, workload: Mapping[str, object] | None,
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
    if workload is not None:
        doc["workload"] = dict(workload)
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    for key, value in _flatten(doc["claims"]):
        print(f"{key}: {value}")
    tcb = getattr(claims, "tcb", None)
    if tcb is not None:
        advisories = ", ".join(tcb.advisory_ids) or "none"
        print(f"TCB status: {tcb.status} (advisories: {advisories})")
    if appraisal is not None:
        for key, value in _flatten(appraisal, "appraisal."):
            print(f"{key}: {value}")
    if workload is not None:
        for key, value in _flatten(workload, "workload."):
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


def _plain(args: argparse.Namespace, verified: Callable[[], tuple[Any, tuple[str, ...]]],
           at: datetime, *, insecure: bool = False, with_policy: bool = False) -> int:
    """Conclude with ``--policy`` and ``--init-data`` when ``with_policy`` (TPM and MAA: none)."""
    return _conclude(args, verified, policy=_load_policy(args) if with_policy else None, at=at,
                     init_data=(read_input(args.init_data) or b"") if with_policy else b"",
                     references=_load_references(args, at), insecure=insecure)


# The command's table of TEEs: evidence kind -> how ``keybroker verify`` reads and verifies it.
_RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "snp": _run_snp,
    "tdx": _run_dcap,
    "sgx": _run_dcap,
    "tpm": lambda args: verify_tpm.run_tpm(args, lambda got, at: _plain(args, got, at)),
    "maa": lambda args: verify_maa.run_maa(args, lambda got, at: _plain(args, got, at)),
    **{tee: lambda args: verify_azure.run_azure(
        args, lambda verified, at: _plain(args, verified, at), _load_collateral)
       for tee in verify_azure.AZURE},
    "nitro": lambda args: verify_nitro.run_nitro(args, lambda verified, at, insecure: _plain(
        args, verified, at, insecure=insecure, with_policy=True)),
}
