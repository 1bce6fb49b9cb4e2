"""The ``keybroker`` command: verifier/broker services, operator verification, the demo.

Each subcommand group registers itself from its own module (plain imports, listed in
``_GROUPS``); this module only dispatches.
Exit codes: 0 success/verified, 1 rejected or failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from keybroker_cli import broker_cmd, demo, tls_cmd, verifier_cmd, verify
from keybroker_cli.admin import command as admin_command

# Each registration function adds its subparsers and sets ``func`` on them.
_GROUPS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    verifier_cmd.register,
    broker_cmd.register,
    verify.register,
    demo.register,
    admin_command.register,
    tls_cmd.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="keybroker", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keybroker`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
