"""``keybroker collateral fetch | prefetch | status``: fetch endorsements from AMD KDS and
Intel PCS ahead of need, into a folder or the verifier's collateral store, and report ages.

Invariants:
- Everything fetched is verified against the pinned roots before it is written
  (``verifier.collateral.fetcher``); what a folder or the store already holds fresh is
  re-verified and not fetched again.
- Exit codes: 0 everything needed is held and fresh, 1 something is missing, failed or stale
  (each named), 2 usage error (bad arguments, unreadable evidence or config).
- The verifier store is the one ``state_db``/``database`` of the verifier config names; a
  running verifier picks up what is stored here at its next poll.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keybroker.errors import KeybrokerError
from keybroker_cli import collateral_bundle_cmd
from keybroker_cli.collateral_sources import sources, stored_items
from keybroker_cli.evidence_input import UsageError, decode_quote, read_input
from keybroker_cli.verify import _rfc3339
from verifier.collateral.fetcher import Fetcher, FetchReport
from verifier.collateral.item import CollateralItem, Need, read_files, write_files
from verifier.collateral.item_store import CollateralItemStore
from verifier.collateral.settings import DEFAULT_KDS_URL, DEFAULT_PCS_URL, DEFAULT_ROOT_CRL_URL
from verifier.config import load_config
from verifier.vendors import VendorSources

GROUP_HELP = """\
Collateral is what endorses evidence: AMD VCEKs, certificate chains and CRLs; Intel TCB Info,
QE identities and CRLs. Verification reads it offline; these commands get it ahead of need
from AMD KDS and Intel PCS (or a PCCS), verify it against the pinned roots, and put it in a
folder (fetch) or in the verifier's collateral store (prefetch, import), which a running
verifier picks up without a restart."""
FETCH_HELP = """\
Fetch everything needed to verify one piece of evidence offline into a folder: for SEV-SNP
the VCEK at the reported TCB, the AMD certificate chain and the ARK's CRL (AMD KDS); for TDX
and SGX the TCB Info of the platform's FMSPC, the QE identity, the PCK CA CRL and the Intel
root CA CRL (Intel PCS or a PCCS). Each item is verified against the pinned AMD or Intel roots
before it is written. Items the folder already holds that verify and are fresh at --at are
not fetched again. The folder is what `keybroker verify --collateral` and the verifier's
`collateral` setting read.

examples:
  keybroker collateral fetch --tee snp --evidence report.bin --out ./collateral
  keybroker collateral fetch --tee tdx --evidence quote.dat --out ./collateral \\
      --pcs-url https://pccs.internal:8081

exit codes: 0 the folder holds everything fresh, 1 something failed or is stale, 2 usage"""
PREFETCH_HELP = """\
Fill the verifier's collateral store (its state database) for a fleet: for each evidence
file, FMSPC or SEV-SNP chip, fetch what verification will need, verify it against the pinned
roots and store it. A running verifier serves with it at its next poll, without a restart.

examples:
  keybroker collateral prefetch --config verifier.toml --tee snp --for host1.bin host2.bin
  keybroker collateral prefetch --config verifier.toml --tee tdx --fmspc 00a06d080000
  keybroker collateral prefetch --config verifier.toml --tee snp --product Milan \\
      --hwid 980cf7b6...  --tcb 0400000000001bde

exit codes: 0 stored and fresh, 1 something failed or is stale, 2 usage error"""
STATUS_HELP = """\
List the verifier's collateral store: each item, when it was issued, its next update and
where it came from; items whose next update falls within --days are flagged.

exit codes: 0 nothing stale, 1 an item is already past its next update, 2 usage error"""


def _urls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kds-url", metavar="URL", help=f"AMD KDS (default {DEFAULT_KDS_URL})")
    parser.add_argument("--pcs-url", metavar="URL",
                        help=f"Intel PCS v4 or a PCCS (default {DEFAULT_PCS_URL})")
    parser.add_argument("--root-crl-url", metavar="URL",
                        help=f"Intel SGX Root CA CRL (default {DEFAULT_ROOT_CRL_URL})")
    parser.add_argument("--at", type=_rfc3339, metavar="RFC3339",
                        help="time the items must be fresh at (default: now)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``collateral fetch | prefetch | status | export | import``."""
    group = sub.add_parser("collateral", help="fetch, store, bundle and check collateral",
                           description=GROUP_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = group.add_subparsers(dest="collateral_command", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    fetch = cmds.add_parser("fetch", help="fetch what one evidence file needs into a folder",
                            description=FETCH_HELP, formatter_class=raw)
    fetch.add_argument("--tee", required=True, choices=("snp", "tdx", "sgx"))
    fetch.add_argument("--evidence", required=True, type=Path, metavar="FILE",
                       help="SNP report (raw) or TDX/SGX quote (binary, base64 or hex)")
    fetch.add_argument("--out", required=True, type=Path, metavar="DIR",
                       help="collateral folder to fill (created if absent)")
    fetch.add_argument("--product", choices=("Milan", "Genoa", "Turin"),
                       help="SNP: the product, for v2 reports (they carry no CPUID)")
    _urls(fetch)
    fetch.set_defaults(func=_fetch)
    pre = cmds.add_parser("prefetch", help="fill the verifier's collateral store for a fleet",
                          description=PREFETCH_HELP, formatter_class=raw)
    pre.add_argument("--config", required=True, type=Path, help="verifier config (TOML)")
    pre.add_argument("--tee", required=True, choices=("snp", "tdx", "sgx"))
    pre.add_argument("--for", dest="evidence", nargs="+", type=Path, default=[],
                     metavar="EVIDENCE", help="evidence files of the fleet")
    pre.add_argument("--fmspc", nargs="+", default=[], metavar="HEX",
                     help="TDX/SGX: platform FMSPCs (6 bytes hex)")
    pre.add_argument("--ca", choices=("platform", "processor"), default="platform",
                     help="TDX/SGX with --fmspc: the PCK CA of those platforms")
    pre.add_argument("--hwid", nargs="+", default=[], metavar="HEX",
                     help="SNP: chip ids (with --product and --tcb)")
    pre.add_argument("--product", choices=("Milan", "Genoa", "Turin"))
    pre.add_argument("--tcb", metavar="HEX", help="SNP with --hwid: reported TCB (8 bytes hex)")
    _urls(pre)
    pre.set_defaults(func=_prefetch)
    status = cmds.add_parser("status", help="ages and next updates of the collateral store",
                             description=STATUS_HELP, formatter_class=raw)
    status.add_argument("--config", required=True, type=Path, help="verifier config (TOML)")
    status.add_argument("--days", type=int, default=14,
                        help="flag items whose next update is within this many days")
    status.add_argument("--at", type=_rfc3339, metavar="RFC3339", help="(default: now)")
    status.set_defaults(func=_status)
    collateral_bundle_cmd.add_commands(cmds)


def _needs(args: argparse.Namespace, vendors: VendorSources, file: Path) -> list[Need]:
    raw = read_input(file) or b""
    if args.tee == "snp":
        return vendors.kds.needs_for_report(raw, product=args.product)
    return vendors.pcs.needs_for_quote(decode_quote(raw), args.tee)


def _print(report: FetchReport) -> int:
    for line in report.lines():
        print(line)
    print(f"{len(report.fetched)} fetched, {len(report.cached)} already held, "
          f"{len(report.failed)} failed, {len(report.stale)} stale")
    return 0 if report.complete else 1


def _fetch(args: argparse.Namespace) -> int:
    at = args.at or datetime.now(UTC)
    vendors = sources(args)
    try:
        needs = _needs(args, vendors, args.evidence)
        args.out.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError, KeybrokerError) as exc:
        print(f"keybroker collateral fetch: error: {exc}", file=sys.stderr)
        return 2
    report = Fetcher().fill(needs, vendors.for_key, held=lambda n: read_files(args.out, n),
                            store=lambda item: write_files(args.out, item), at=at)
    return _print(report)


def _prefetch(args: argparse.Namespace) -> int:
    at = args.at or datetime.now(UTC)
    try:
        config = load_config(args.config)
        vendors = sources(args, config.fetch)
        kds = vendors.kds
        needs: list[Need] = []
        for file in args.evidence:
            needs += _needs(args, vendors, file)
        for fmspc in args.fmspc:
            needs += vendors.pcs.platform_needs(args.tee, bytes.fromhex(fmspc), args.ca)
        for hwid in args.hwid:
            _require(args.product is not None and args.tcb is not None,
                     "--hwid needs --product and --tcb")
            needs += [kds.vcek_need(args.product, bytes.fromhex(hwid), bytes.fromhex(args.tcb)),
                      *kds.chain_needs(args.product)]
        _require(bool(needs), "nothing to prefetch: give --for, --fmspc or --hwid")
        store = CollateralItemStore(config.state_db)
    except (UsageError, OSError, ValueError, KeybrokerError) as exc:
        print(f"keybroker collateral prefetch: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = Fetcher().fill(needs, vendors.for_key, held=store.held, store=store.put, at=at)
    finally:
        store.close()
    return _print(report)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def status_lines(items: Sequence[CollateralItem], at: datetime, days: int) -> tuple[list[str],
                                                                                     int]:
    """One line per item and the number already stale at ``at``."""
    lines, stale = [], 0
    soon = at + timedelta(days=days)
    for item in sorted(items, key=lambda i: i.next_update):
        age = (at - item.issued).days
        if item.next_update <= at:
            flag, stale = "STALE   ", stale + 1
        elif item.next_update <= soon:
            flag = "EXPIRING"
        else:
            flag = "ok      "
        lines.append(f"{flag} {item.key}  issued {item.issued.isoformat()} ({age} d ago)  "
                     f"next update {item.next_update.isoformat()}  from {item.source}")
    return lines, stale


def _status(args: argparse.Namespace) -> int:
    at = args.at or datetime.now(UTC)
    try:
        _, items = stored_items(args.config)
    except (OSError, KeybrokerError) as exc:
        print(f"keybroker collateral status: error: {exc}", file=sys.stderr)
        return 2
    lines, stale = status_lines(items, at, args.days)
    for line in lines:
        print(line)
    expiring = sum(1 for line in lines if line.startswith("EXPIRING"))
    print(f"{len(items)} items, {stale} stale, {expiring} with a next update within "
          f"{args.days} days")
    return 1 if stale else 0
