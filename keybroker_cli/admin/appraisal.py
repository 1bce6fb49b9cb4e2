"""``keybroker admin policy test|dry-run`` and ``keybroker admin tcb report``.

Invariants:
- These commands never write: ``test`` runs cases against a candidate policy file offline,
  ``dry-run`` and ``tcb report`` read the verifier's ``state_db`` (recorded appraisals,
  reference values, policies in force) and print.
- Every decision comes from the real engine (``verifier.policy.decision``) through
  ``verifier.policy.cases`` / ``verifier.policy.dry_run`` / ``verifier.policy.tcb_report``.
- Exit codes: ``test`` 1 when any case fails or cannot be loaded (or there is none); dry-run
  and the report 0 once computed (they inform, they do not judge); 2 for usage errors such as
  a broker config or a release-rules document.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

from keybroker.document import document_kind
from keybroker.errors import KeybrokerError
from keybroker.policy_store import PolicyStore
from keybroker_cli.admin.target import (
    EXIT_FAILED,
    EXIT_OK,
    KIND_POLICY,
    Target,
    UsageError,
    command,
    load_target,
    parse_since,
    print_error,
    read_file,
    utc_now,
)
from verifier.policy.compile import load_policy, parse_policy
from verifier.policy.model import AppraisalPolicy
from verifier.records import AppraisalRecord, RecordStore
from verifier.reference.store import ReferenceStore
from verifier.reference.values import ReferenceSnapshot


def _candidate(path: Path) -> AppraisalPolicy:
    raw = read_file(path)
    kind = document_kind(raw, str(path))
    if kind != KIND_POLICY:
        raise UsageError(f"{path}: a {kind} document cannot be tested against appraisals "
                         f"(expected {KIND_POLICY})")
    return parse_policy(raw, str(path))


def _records(target: Target, since: str) -> list[AppraisalRecord]:
    config = target.verifier_config("recorded appraisals")
    start = parse_since(since, utc_now())
    store = RecordStore(config.state_db, retention=timedelta(days=max(config.record_days, 1)))
    try:
        return store.since(start)
    finally:
        store.close()


def _snapshot(target: Target) -> ReferenceSnapshot:
    store = ReferenceStore(target.verifier_config("reference values").state_db)
    try:
        return store.snapshot()
    finally:
        store.close()


def in_force_policies(target: Target) -> dict[str, AppraisalPolicy]:
    """Every appraisal policy in force: stored versions, then seed files not yet stored."""
    config = target.verifier_config("policies in force")
    store = PolicyStore(config.state_db)
    try:
        stored = store.in_force(KIND_POLICY)
    finally:
        store.close()
    out = {name: parse_policy(v.document, f"{v.label} (stored)", v.version)
           for name, v in stored.items()}
    for path in config.policies:
        try:
            seed = load_policy(path)
        except KeybrokerError as err:
            print_error(err)
            continue
        out.setdefault(seed.name, seed)
    return out


def _test(args: argparse.Namespace) -> int:
    from verifier.policy.cases import (  # noqa: PLC0415 - engine only when running cases
        active_references,
        case_files,
        load_case,
        run_case,
    )

    policy = _candidate(Path(args.file))
    now = utc_now()
    refs = active_references([(read_file(Path(r)), r) for r in args.refs or ()], now=now)
    files = case_files(Path(args.cases))
    if not files:
        raise UsageError(f"{args.cases}: no test cases (*.yaml, *.yml)")
    passed = failed = 0
    for path in files:
        try:
            result = run_case(policy, load_case(path), refs, now=now)
        except KeybrokerError as err:
            print(f"FAIL {path.name}: case could not be loaded")
            print_error(err)
            failed += 1
            continue
        print(result.line())
        if result.passed:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed ({policy.name}, {len(files)} case(s))")
    return EXIT_FAILED if failed else EXIT_OK


def _dry_run(args: argparse.Namespace) -> int:
    from verifier.policy.dry_run import dry_run  # noqa: PLC0415

    target = load_target(Path(args.config))
    target.verifier_config("dry-run")
    policy = _candidate(Path(args.file))
    report = dry_run(policy, _records(target, args.since), _snapshot(target))
    if args.json:
        shown = [e for e in report.entries if e.changed or e.would_match]
        print(json.dumps([e.as_dict() for e in shown], indent=2))
        return EXIT_OK
    for entry in report.changed:
        print(entry.line())
    for entry in report.would_match:
        r = entry.record
        for match in entry.would_match:
            print(f"would_match {r.request_id} {r.evidence_digest[:12]} {entry.identity}: "
                  f"{match}")
    print(f"{report.summary()} ({policy.name} from {args.file})")
    return EXIT_OK


def _tcb_report(args: argparse.Namespace) -> int:
    from verifier.policy.tcb_report import tcb_report  # noqa: PLC0415

    target = load_target(Path(args.config))
    target.verifier_config("tcb report")
    entries = tcb_report(in_force_policies(target), _records(target, args.since),
                         _snapshot(target))
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return EXIT_OK
    for entry in entries:
        print(entry.line())
    print(f"{len(entries)} platform(s) with TCB debt")
    return EXIT_OK


def register_policy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy test`` and ``policy dry-run``."""
    p = sub.add_parser("test", help="run policy test cases against a candidate policy")
    p.add_argument("file", metavar="FILE", help="candidate AppraisalPolicy document")
    p.add_argument("--cases", required=True, metavar="DIR", help="directory of test cases")
    p.add_argument("--refs", nargs="*", metavar="REFFILE",
                   help="ReferenceValues documents treated as active")
    p.set_defaults(func=command(_test))

    p = sub.add_parser("dry-run", help="re-appraise recorded appraisals with a candidate")
    p.add_argument("file", metavar="FILE", help="candidate AppraisalPolicy document")
    p.add_argument("--config", required=True, help="verifier TOML config")
    p.add_argument("--since", default="7d", help="7d, 12h, 30m, 90s or an RFC 3339 instant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command(_dry_run))


def register_tcb(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tcb report``."""
    p = sub.add_parser("report", help="platforms below a policy's next TCB floor")
    p.add_argument("--config", required=True, help="verifier TOML config")
    p.add_argument("--since", default="7d", help="7d, 12h, 30m, 90s or an RFC 3339 instant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command(_tcb_report))
