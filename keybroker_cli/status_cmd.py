"""``keybroker status``: is a running service healthy, what is in force, what is getting old.

Invariants:
- The status comes from the service's admin API (role ``operator``), with the identity of the
  channel like every admin command: dependencies as the service's own probes last saw them,
  versions in force, and (verifier) the dates of every CRL and Intel document it holds.
- Exit 0 only when the service is SERVING and none of its collateral is past its next
  update; 1 when it is not serving, unreachable or holds stale collateral; 2 usage.
- ``--wait`` retries an unreachable or not-yet-serving service until the deadline and then
  reports the last answer: for scripts that start a service and wait for it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from keybroker.errors import KeybrokerError, Unavailable
from keybroker.v1 import admin_pb2
from keybroker_cli.admin.remote import add_server_args, call, online
from keybroker_cli.admin.target import EXIT_FAILED, EXIT_OK, command

HELP = """\
Ask a running verifier or broker how it is: whether it is SERVING, each dependency it
probes (database, audit log, KEK provider or HSM, and for the broker the verifier), the
policies, rules and reference values in force, and for the verifier the age and next update
of every CRL and Intel collateral document it holds. Talks to the service's admin API
(role operator), with the identity of the channel.

examples:
  keybroker status --profile admin.toml --service broker
  keybroker status --server verifier.internal:50062 --service verifier --ca ca.pem \\
      --cert oncall.pem --key oncall-key.pem --wait 30

exit codes: 0 serving and collateral current, 1 not serving, unreachable or stale collateral,
2 usage error"""

_DAY = 86400


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the top-level ``status`` command."""
    parser = sub.add_parser("status", help="health, versions in force and collateral freshness "
                                           "of a running service",
                            description=HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(parser, service=True)
    add_status_options(parser)
    parser.set_defaults(func=command(online(show_status, service=True)))


def add_status_options(parser: argparse.ArgumentParser) -> None:
    """``--wait`` and ``--json`` (shared with ``keybroker admin status``)."""
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="retry until the service is reachable and SERVING, at most this "
                             "long (default: ask once)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def show_status(args: argparse.Namespace) -> int:
    """Fetch (waiting with ``--wait``) and print the status; the exit code as documented."""
    deadline = time.monotonic() + max(0.0, float(getattr(args, "wait", 0.0) or 0.0))
    while True:
        try:
            reply = call(args, lambda s, m: s.Status(admin_pb2.StatusRequest(), metadata=m,
                                                     timeout=5.0), args.service)
            status: dict[str, Any] = json.loads(reply.json or "{}")
            if status.get("serving", True) or time.monotonic() >= deadline:
                break
        except Unavailable:
            if time.monotonic() >= deadline:
                raise
        except KeybrokerError:
            raise
        time.sleep(0.5)
    if getattr(args, "json", False):
        print(json.dumps({"service": reply.service, "principal": reply.principal,
                          "roles": list(reply.roles), **status}, indent=2, sort_keys=True))
    else:
        _print_text(args.server, reply, status)
    stale = [c for c in status.get("collateral", [])
             if c.get("next_update_in_seconds") is not None and c["next_update_in_seconds"] < 0]
    return EXIT_OK if status.get("serving", True) and not stale else EXIT_FAILED


def _print_text(address: str, reply: admin_pb2.StatusResponse, status: dict[str, Any]) -> None:
    state = "SERVING" if status.get("serving", True) else "NOT_SERVING"
    print(f"{reply.service} {address}: {state} (keybroker {status.get('version', '?')}; "
          f"you are {reply.principal}: {', '.join(reply.roles)})")
    deps: dict[str, dict[str, Any]] = status.get("dependencies", {})
    width = max((len(name) for name in deps), default=0)
    for name, dep in deps.items():
        print(f"  {name.ljust(width)}  {'ok' if dep.get('ok') else 'DOWN: ' + str(dep['detail'])}")
    for key, label in (("rules_in_force", "release rules in force"),
                       ("policies_in_force", "policies in force"),
                       ("reference_sets", "reference-value sets"),
                       ("kek_versions", "KEK versions"), ("audit_head", "audit head")):
        if key in status:
            value = status[key]
            text = ", ".join(value) if isinstance(value, list) else str(value)
            print(f"  {label}: {text or 'none'}")
    if "collateral" in status:
        _print_collateral(status["collateral"])


def _print_collateral(items: list[dict[str, Any]]) -> None:
    dated = [c for c in items if c.get("next_update_in_seconds") is not None]
    if not dated:
        print("  collateral: no dated items (CRLs, TCB Info, QE identities)")
        return
    stale = [c for c in dated if c["next_update_in_seconds"] < 0]
    soon = [c for c in dated if 0 <= c["next_update_in_seconds"] < 7 * _DAY]
    first = dated[0]
    print(f"  collateral: {len(dated)} dated items; next update due soonest: {first['item']} "
          f"({_days(first['next_update_in_seconds'])})")
    for c in stale:
        print(f"    STALE: {c['item']} (next update was {c['next_update']})")
    for c in soon:
        print(f"    due within 7 days: {c['item']} ({_days(c['next_update_in_seconds'])})")


def _days(seconds: int) -> str:
    if seconds < 0:
        return f"{-seconds / _DAY:.1f} days overdue"
    return f"in {seconds / _DAY:.1f} days"

