"""``keybroker admin tpm list|revoke``: the TPM attestation keys enrolled with the verifier.

Invariants:
- Both go through the verifier's admin API (list: operator; revoke: policy-admin), so the
  revocation is recorded with the channel's identity and the comment.
- ``revoke`` names the EK by its fingerprint (``list`` shows it): after it the AK's quotes are
  CHAIN_UNTRUSTED and the EK may enrol another AK.
"""

from __future__ import annotations

import argparse
import json

from keybroker.v1 import admin_pb2
from keybroker_cli.admin.remote import add_server_args, call, online
from keybroker_cli.admin.target import EXIT_OK, command


def _list(args: argparse.Namespace) -> int:
    request = admin_pb2.TpmEnrolmentRequest(ek_fingerprint=args.ek or "")
    rows = json.loads(call(args, lambda s, m: s.ListTpmEnrolments(request, metadata=m),
                           "verifier").json)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print("ek_fingerprint                                                    state    "
          "enrolled_at                       ak_name")
    for row in rows:
        state = "revoked" if row["revoked_at"] else "enrolled"
        print(f"{row['ek_fingerprint']}  {state:8} {row['enrolled_at']:33} {row['ak_name']}"
              + ("  (INSECURE root)" if row["insecure"] else ""))
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    request = admin_pb2.TpmEnrolmentRequest(ek_fingerprint=args.ek, comment=args.comment)
    row = json.loads(call(args, lambda s, m: s.RevokeTpmEnrolment(request, metadata=m),
                          "verifier").json)
    print(f"revoked AK {row['ak_name']} of EK {row['ek_fingerprint']} at {row['revoked_at']}")
    return EXIT_OK


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tpm`` group (list, revoke)."""
    tpm = groups.add_parser("tpm", help="TPM attestation keys enrolled with the verifier")
    cmds = tpm.add_subparsers(dest="tpm_command", required=True)
    p = cmds.add_parser("list", help="enrolled (and revoked) AKs by EK")
    p.add_argument("--ek", metavar="FINGERPRINT", help="only this EK")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    add_server_args(p)
    p.set_defaults(func=command(online(_list)))
    p = cmds.add_parser("revoke", help="stop trusting an EK's AK (the EK may then enrol "
                                       "another)")
    p.add_argument("ek", metavar="EK_FINGERPRINT", help="the EK's fingerprint (tpm list)")
    p.add_argument("--comment", required=True, help="why (recorded in the audit log)")
    add_server_args(p)
    p.set_defaults(func=command(online(_revoke)))
