"""The ``attester-agent`` command: ``detect`` and ``get-secret``.

Invariants:
- Exit codes: 0 success, 1 denied or failed, 2 usage error.
- The simulator is used only with ``--insecure-simulator`` (``--collector simulator`` without
  it is a usage error); automatic selection considers hardware collectors only.
- Secrets go to a 0600 file (``secret_output``) or raw to stdout, never to the log; with several
  keys every key needs its own ``--out`` (stdout carries at most one secret).
- A denial prints ``denied: CATEGORY: message`` to stderr; a local failure prints
  ``error: CATEGORY: message``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from attester_agent import client
from attester_agent.collectors import registry
from attester_agent.collectors.base import Collector
from attester_agent.collectors.configfs_tsm import DEFAULT_ROOT
from attester_agent.collectors.sev_guest import DEFAULT_DEVICE
from attester_agent.secret_output import (
    SecretOutputRefused,
    check_secret_target,
    write_secret_file,
    write_secret_stream,
)
from keybroker.errors import KeybrokerError, Malformed
from keybroker.rpc_errors import denial_from_rpc
from keybroker.wrapping import Suite

logger = logging.getLogger(__name__)

SIMULATOR = "simulator"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Command-line arguments that do not make sense together (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="attester-agent",
        description="Attest this guest to a keybroker and fetch released secrets.",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", help="list the usable attestation interfaces")
    _add_interface_paths(detect)
    detect.set_defaults(func=cmd_detect)

    get = sub.add_parser("get-secret", help="attest and fetch one or more secrets")
    get.add_argument("--broker", required=True, help="broker address host:port")
    get.add_argument("--key-id", action="append", required=True, dest="key_ids",
                     help="key to fetch (repeatable)")
    get.add_argument("--out", action="append", type=Path, default=[], dest="outs",
                     help="file for the secret (mode 0600); repeat once per --key-id; "
                          "default: raw bytes to stdout (single key only)")
    get.add_argument("--suite", help="HPKE suite id (default: the broker's first supported)")
    get.add_argument("--init-data", type=Path, help="init-data document whose digest the "
                                                    "host set at launch")
    get.add_argument("--collector", choices=[*registry.HARDWARE_COLLECTORS, SIMULATOR],
                     help="evidence source (default: detect hardware)")
    get.add_argument("--timeout", type=float, default=client.DEFAULT_TIMEOUT,
                     help="per-RPC deadline in seconds")
    tls = get.add_argument_group("TLS")
    tls.add_argument("--ca", type=Path, help="PEM CA bundle that signed the broker certificate")
    tls.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS)")
    tls.add_argument("--key", type=Path, help="PEM client private key (mutual TLS)")
    sim = get.add_argument_group("INSECURE simulator")
    sim.add_argument("--insecure-simulator", action="store_true",
                     help="use the SEV-SNP simulator under a TEST CA (never in production)")
    sim.add_argument("--simulator-dir", type=Path, help="directory of the simulator test CA")
    sim.add_argument("--sim-measurement", help="launch MEASUREMENT (96 hex digits)")
    sim.add_argument("--sim-policy", help="guest POLICY (hex)")
    sim.add_argument("--sim-vmpl", type=int, choices=range(4), help="VMPL (0..3)")
    sim.add_argument("--sim-version", type=int, choices=(3, 5), help="report version")
    _add_interface_paths(get)
    get.set_defaults(func=cmd_get_secret)
    return parser


def _add_interface_paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tsm-root", type=Path, default=DEFAULT_ROOT,
                        help=f"configfs-tsm report directory (default {DEFAULT_ROOT})")
    parser.add_argument("--sev-guest-device", type=Path, default=DEFAULT_DEVICE,
                        help=f"SEV guest device (default {DEFAULT_DEVICE})")


def cmd_detect(args: argparse.Namespace) -> int:
    """Print the usable collectors; exit 1 when there is none."""
    found = registry.detect(tsm_root=args.tsm_root, sev_guest_device=args.sev_guest_device)
    for item in found:
        print(f"{item.name}\t{item.detail}")
    if not found:
        print("no attestation interface found", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_get_secret(args: argparse.Namespace) -> int:
    """Attest, fetch the secrets, write them out."""
    key_ids: list[str] = list(dict.fromkeys(args.key_ids))
    outs: list[Path] = args.outs
    if outs and len(outs) != len(key_ids):
        raise UsageError("give exactly one --out per --key-id")
    if not outs and len(key_ids) > 1:
        raise UsageError("several keys need one --out each (stdout carries one secret)")
    if len(set(outs)) != len(outs):
        raise UsageError("each --out must be a different file")
    for out in outs:
        check_secret_target(out)  # refuse before attesting, so no challenge is wasted
    suite = _suite(args.suite)
    credentials = _credentials(args)
    init_data = _read_file(args.init_data, "--init-data") if args.init_data else b""
    collector = _collector(args, init_data)
    secrets = client.get_secrets(args.broker, key_ids, collector, suite=suite,
                                 init_data=init_data, timeout=args.timeout,
                                 credentials=credentials)
    try:
        if outs:
            for key_id, out in zip(key_ids, outs, strict=True):
                write_secret_file(out, secrets[key_id])
        else:
            write_secret_stream(sys.stdout.buffer, secrets[key_ids[0]])
    finally:
        secrets.clear()
    return EXIT_OK


def _suite(value: str | None) -> Suite | None:
    if value is None:
        return None
    try:
        return Suite.from_id(value)
    except Malformed as exc:
        raise UsageError(f"unknown --suite {value!r}; expected {exc.expected}") from exc


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if args.ca is None and args.cert is None and args.key is None:
        return None
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(args.ca, "--ca") if args.ca else None,
        private_key=_read_file(args.key, "--key") if args.key else None,
        certificate_chain=_read_file(args.cert, "--cert") if args.cert else None,
    )


def _collector(args: argparse.Namespace, init_data: bytes) -> Collector:
    sim_options = (args.sim_measurement, args.sim_policy, args.sim_vmpl, args.sim_version,
                   args.simulator_dir)
    name: str | None = args.collector
    if name == SIMULATOR and not args.insecure_simulator:
        raise UsageError("--collector simulator requires --insecure-simulator")
    if args.insecure_simulator and name not in (None, SIMULATOR):
        raise UsageError(f"--insecure-simulator conflicts with --collector {name}")
    if not args.insecure_simulator:
        if any(opt is not None for opt in sim_options):
            raise UsageError("--simulator-dir and --sim-* need --insecure-simulator")
        if name is None:
            return registry.auto_select(tsm_root=args.tsm_root,
                                        sev_guest_device=args.sev_guest_device)
        return registry.create(name, tsm_root=args.tsm_root,
                               sev_guest_device=args.sev_guest_device)
    return _simulator(args, init_data)


def _simulator(args: argparse.Namespace, init_data: bytes) -> Collector:
    if args.simulator_dir is None:
        raise UsageError("--insecure-simulator needs --simulator-dir")
    measurement = None
    if args.sim_measurement is not None:
        measurement = _hex(args.sim_measurement, "--sim-measurement")
        if len(measurement) != 48:
            raise UsageError("--sim-measurement must be 48 bytes (96 hex digits)")
    policy = None
    if args.sim_policy is not None:
        try:
            policy = int(args.sim_policy.removeprefix("0x"), 16)
        except ValueError as exc:
            raise UsageError("--sim-policy must be hexadecimal") from exc
    # Imported here so that hardware-only use never loads the simulator.
    from attester_agent.collectors.simulator import SimulatorCollector  # noqa: PLC0415

    logger.warning("INSECURE: --insecure-simulator given; evidence will be SIMULATED")
    try:
        return SimulatorCollector(
            args.simulator_dir,
            insecure=True,
            measurement=measurement,
            policy=policy if policy is not None else 0x30000,
            vmpl=args.sim_vmpl if args.sim_vmpl is not None else 0,
            version=args.sim_version if args.sim_version is not None else 3,
            init_data=init_data,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _hex(value: str, flag: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise UsageError(f"{flag} must be hexadecimal") from exc


def _read_file(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {flag} {path}: {exc.strerror}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attester-agent`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"attester-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeybrokerError as exc:
        cause = exc.__cause__
        denied = isinstance(cause, grpc.RpcError) and denial_from_rpc(cause) is not None
        prefix = "denied" if denied else "error"
        print(f"{prefix}: {exc.category.value}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    except SecretOutputRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
