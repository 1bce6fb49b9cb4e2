"""``keybroker admin ...``: policy, reference-value and TCB administration.

Synopsis::

    keybroker admin policy schema KIND
    keybroker admin policy validate FILE...
    keybroker admin policy diff OLD NEW | diff --config CFG NAME NEW   [--json]
    keybroker admin policy apply FILE --comment C API
    keybroker admin policy history NAME (--config CFG | --service S API) [--json]
    keybroker admin policy rollback NAME --to N --service S --comment C API
    keybroker admin policy test FILE --cases DIR [--refs REFFILE...]
    keybroker admin policy dry-run FILE --config CFG [--since 7d] [--json]
    keybroker admin refvalues import FILE --comment C API
    keybroker admin refvalues activate|retire NAME VERSION --comment C API
    keybroker admin refvalues deprecate NAME VERSION --retire-at T --comment C API
    keybroker admin refvalues list [NAME] --config CFG [--json]
    keybroker admin tcb report --config CFG [--since 7d] [--json]
    keybroker admin tpm list [--ek FP] [--json] API
    keybroker admin tpm revoke EK_FINGERPRINT --comment C API
    keybroker admin secret|audit|status ... API
    where API is --profile FILE, or --server HOST:PORT --ca CA (--cert C --key K | --token T)

Invariants:
- Changes go only through a service's admin API: the identity is the channel's (client
  certificate or bearer JWT), never an argument, and the service records it
  (``keybroker_cli.admin.remote``). CFG (the service's own config file) is only read, by the
  offline reports, so they see exactly the stores the service uses.
- Exit codes: 0 ok, 1 refused or failed (``error <CATEGORY>: <reason> (expected ..., actual
  ...)`` on stderr, with ``file:line`` for document errors), 2 usage.
"""

from __future__ import annotations

import argparse

from keybroker_cli import status_cmd
from keybroker_cli.admin import appraisal as admin_appraisal
from keybroker_cli.admin import policy as admin_policy
from keybroker_cli.admin import refvalues as admin_refvalues
from keybroker_cli.admin import remote as admin_remote
from keybroker_cli.admin import tpm as admin_tpm
from keybroker_cli.admin.target import command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin`` and its command groups to the ``keybroker`` parser."""
    parser = sub.add_parser(
        "admin", help="administer policies, reference values, secrets, audit, TCB debt, TPM AKs",
        description="Administer the services. Checks and reports work offline on files (or, "
                    "with --config, on a service's stores); every change goes through a "
                    "service's admin API with the identity of the channel (--profile, or "
                    "--server/--ca with --cert/--key or --token).\n\nexit codes: 0 ok, 1 "
                    "refused or failed, 2 usage error",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = parser.add_subparsers(dest="admin_group", required=True)

    policy = groups.add_parser("policy", help="appraisal policies and release rules")
    policy_cmds = policy.add_subparsers(dest="policy_command", required=True)
    admin_policy.register(policy_cmds)
    admin_appraisal.register_policy(policy_cmds)

    refvalues = groups.add_parser("refvalues", help="reference-value sets")
    refvalues_cmds = refvalues.add_subparsers(dest="refvalues_command", required=True)
    admin_refvalues.register(refvalues_cmds)

    admin_remote.register(groups)
    status = groups.add_parser("status", help="health, versions in force and collateral "
                                              "freshness (same as keybroker status)",
                               description=status_cmd.HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    admin_remote.add_server_args(status, service=True)
    status_cmd.add_status_options(status)
    status.set_defaults(func=command(admin_remote.online(status_cmd.show_status, service=True)))

    tcb = groups.add_parser("tcb", help="TCB debt of attesting platforms")
    tcb_cmds = tcb.add_subparsers(dest="tcb_command", required=True)
    admin_appraisal.register_tcb(tcb_cmds)
    admin_tpm.register(groups)
