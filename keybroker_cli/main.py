"""The ``keybroker`` command: verifier/broker services, operator verification, the demo.

Each subcommand group registers itself from its own module (plain imports, listed in
``_GROUPS``); this module only dispatches.
Exit codes: 0 success/verified, 1 rejected or failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from keybroker.logs import LOG_FORMATS, LOG_LEVELS, configure
from keybroker.version import version
from keybroker_cli import (
    broker_cmd,
    collateral_cmd,
    db_cmd,
    demo,
    eventlog_cmd,
    status_cmd,
    tls_cmd,
    verifier_cmd,
    verify,
)
from keybroker_cli.admin import command as admin_command

# Each registration function adds its subparsers and sets ``func`` on them.
_GROUPS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    verifier_cmd.register,
    broker_cmd.register,
    verify.register,
    demo.register,
    admin_command.register,
    tls_cmd.register,
    status_cmd.register,
    db_cmd.register,
    eventlog_cmd.register,
    collateral_cmd.register,
)

DESCRIPTION = """\
keybroker: an attestation-gated key broker. Run the verifier and the broker services,
verify evidence offline, fetch and bundle collateral, administer policies, reference values,
secrets and the audit log through the services' admin APIs, make TLS certificates, or run
the demo.

examples:
  keybroker demo                                   release a secret on the SEV-SNP simulator
  keybroker verify report.bin --tee snp --collateral ./amd-certs/
  keybroker tls init ./tls
  keybroker admin policy validate policy.yaml
  keybroker status --profile admin.toml --service broker --wait 30

exit codes: 0 success or verified, 1 rejected or failed, 2 usage or configuration error"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="keybroker", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"keybroker {version()}")
    parser.add_argument("--log-level", default=None, type=str.upper, choices=LOG_LEVELS,
                        help="log detail on stderr (default: INFO for services and the demo, "
                             "WARNING for one-shot commands)")
    parser.add_argument("--log-format", default="auto", choices=LOG_FORMATS,
                        help="json: one JSON object per line; text: for reading; auto (default): "
                             "text on a terminal, JSON otherwise")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keybroker`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    configure(args.log_level or getattr(args, "default_log_level", "WARNING"), args.log_format)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:
        # The reader went away (``keybroker eventlog LOG | head``): stop quietly, as other
        # command-line tools do, instead of a traceback; nothing more can be written.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
