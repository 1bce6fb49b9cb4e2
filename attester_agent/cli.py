"""The ``attester-agent`` command: ``detect``, ``get-secret``, ``enrol-tpm`` and ``measure``.

Invariants:
- Exit codes: 0 success, 1 denied or failed, 2 usage error.
- The simulator is used only with ``--insecure-simulator`` (``--collector simulator`` without
  it is a usage error); automatic selection considers hardware collectors only. ``--sim-*``
  options that do not apply to the chosen ``--sim-tee`` are usage errors, never ignored.
- ``measure`` extends the real RTMR3 unless ``--insecure-simulator`` is given, in which case
  only the simulator's register file under ``--simulator-dir`` is touched.
- Secrets go to a 0600 file (``secret_output``; stderr then says which key went where, and its
  length, never the bytes) or raw to stdout, never to the log; with several
  keys every key needs its own ``--out`` (stdout carries at most one secret).
- A denial prints ``denied: CATEGORY: message`` to stderr; a local failure prints
  ``error: CATEGORY: message``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc

from attester_agent import client, measure, tpm_options
from attester_agent.collectors import gramine, registry, sev_guest, tdx_guest
from attester_agent.collectors.base import Collector
from attester_agent.collectors.ccel import DEFAULT_ACPI_TABLES, CcelReader
from attester_agent.collectors.configfs_tsm import DEFAULT_ROOT
from attester_agent.collectors.tdx_evidence import TdxSources
from attester_agent.enrolment import enrol_tpm
from attester_agent.secret_output import (
    SecretOutputRefused,
    check_secret_target,
    write_secret_file,
    write_secret_stream,
)
from attester_agent.simulator_options import (
    add_simulator_options,
    check_simulator_options,
    simulated_collector,
    simulator_options_given,
)
from keybroker.errors import KeybrokerError, Malformed
from keybroker.logs import LOG_FORMATS, LOG_LEVELS, configure
from keybroker.rpc_errors import denial_from_rpc
from keybroker.tls import (
    certificate_digest,
    check_pin,
    check_plaintext,
    client_credentials,
    load_certificates,
)
from keybroker.version import version
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
    parser.add_argument("--version", action="version", version=f"attester-agent {version()}")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, choices=LOG_LEVELS,
                        help="log detail on stderr (default WARNING)")
    parser.add_argument("--log-format", default="auto", choices=LOG_FORMATS,
                        help="json: one JSON object per line; text: for reading; auto (default): "
                             "text on a terminal, JSON otherwise")
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
    get.add_argument("--request-id", default=None, metavar="ID",
                     help="request id for the broker's audit record and logs (printable ASCII, "
                          "at most 128 characters; default: a fresh UUID, printed on stderr)")
    get.add_argument("--timeout", type=float, default=client.DEFAULT_TIMEOUT,
                     help="per-RPC deadline in seconds")
    _add_tls_options(get)
    sim = get.add_argument_group("INSECURE simulator")
    sim.add_argument("--insecure-simulator", action="store_true",
                     help="use the SEV-SNP simulator under a TEST CA (never in production)")
    sim.add_argument("--simulator-dir", type=Path, help="directory of the simulator test CA")
    add_simulator_options(sim)
    _add_interface_paths(get)
    get.add_argument("--acpi-tables-root", type=Path, default=DEFAULT_ACPI_TABLES,
                     help="ACPI tables directory holding CCEL and data/CCEL "
                          f"(default {DEFAULT_ACPI_TABLES})")
    get.add_argument("--runtime-log", type=Path,
                     help="runtime event log sent with TDX evidence (default "
                          f"{measure.DEFAULT_RUNTIME_LOG}; simulator: DIR/tdx/"
                          "runtime-events.jsonl)")
    tpm_options.add_tpm_options(get)
    get.set_defaults(func=cmd_get_secret)

    enrol = sub.add_parser("enrol-tpm", help="enrol this machine's TPM attestation key with "
                                             "the broker's verifier (once, before get-secret)")
    enrol.add_argument("--broker", required=True, help="broker address host:port")
    enrol.add_argument("--request-id", default=None, metavar="ID",
                       help="request id for the broker's logs (default: a fresh UUID)")
    enrol.add_argument("--timeout", type=float, default=client.DEFAULT_TIMEOUT,
                       help="per-RPC deadline in seconds")
    _add_tls_options(enrol)
    esim = enrol.add_argument_group("INSECURE simulator")
    esim.add_argument("--insecure-simulator", action="store_true",
                      help="enrol a swtpm (given by --tpm-tcti) instead of the machine's TPM")
    esim.add_argument("--simulator-dir", type=Path, help="simulator directory")
    tpm_options.add_tpm_options(enrol)
    enrol.set_defaults(func=cmd_enrol_tpm)

    meas = sub.add_parser("measure", help="extend RTMR3 with a container image digest and "
                                          "record it in the runtime event log")
    meas.add_argument("--image", required=True, help="image digest sha256:<64 hex digits>")
    meas.add_argument("--runtime-log", type=Path,
                      help=f"runtime event log (default {measure.DEFAULT_RUNTIME_LOG}; "
                           "simulator: DIR/tdx/runtime-events.jsonl)")
    meas.add_argument("--rtmr-path", type=Path,
                      help=f"RTMR3 sysfs attribute (default {measure.DEFAULT_RTMR3})")
    msim = meas.add_argument_group("INSECURE simulator")
    msim.add_argument("--insecure-simulator", action="store_true",
                      help="extend the simulator's RTMR3 file instead of the real register")
    msim.add_argument("--simulator-dir", type=Path, help="simulator directory")
    meas.set_defaults(func=cmd_measure)
    return parser


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--ca", type=Path,
                     help="PEM CA bundle that signed the broker certificate (required unless "
                          "--insecure-plaintext)")
    tls.add_argument("--pin-sha256", metavar="HEX",
                     help="also require the broker certificate's SHA-256 (hex) to be this")
    tls.add_argument("--cert", type=Path,
                     help="PEM client certificate (mutual TLS; the challenge and the evidence "
                          "binding then cover it)")
    tls.add_argument("--key", type=Path, help="PEM client private key (with --cert)")
    tls.add_argument("--insecure-plaintext", action="store_true",
                     help="INSECURE: talk to a loopback broker without TLS (local experiments "
                          "only)")


def _add_interface_paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tsm-root", type=Path, default=DEFAULT_ROOT,
                        help=f"configfs-tsm report directory (default {DEFAULT_ROOT})")
    parser.add_argument("--sev-guest-device", type=Path, default=sev_guest.DEFAULT_DEVICE,
                        help=f"SEV guest device (default {sev_guest.DEFAULT_DEVICE})")
    parser.add_argument("--tdx-guest-device", type=Path, default=tdx_guest.DEFAULT_DEVICE,
                        help=f"TDX guest device (default {tdx_guest.DEFAULT_DEVICE})")
    parser.add_argument("--attestation-dir", type=Path, default=gramine.DEFAULT_ROOT,
                        help=f"Gramine attestation directory (default {gramine.DEFAULT_ROOT})")


def cmd_detect(args: argparse.Namespace) -> int:
    """Print the usable collectors; exit 1 when there is none."""
    found = registry.detect(tsm_root=args.tsm_root, sev_guest_device=args.sev_guest_device,
                            tdx_guest_device=args.tdx_guest_device,
                            attestation_dir=args.attestation_dir)
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
    credentials, channel = _credentials(args)
    init_data = _read_file(args.init_data, "--init-data") if args.init_data else b""
    collector = _collector(args, init_data)
    args.request_id = args.request_id or str(uuid.uuid4())
    secrets = client.get_secrets(args.broker, key_ids, collector, suite=suite,
                                 init_data=init_data, timeout=args.timeout,
                                 credentials=credentials, channel_binding=channel,
                                 request_id=args.request_id)
    try:
        if outs:
            for key_id, out in zip(key_ids, outs, strict=True):
                write_secret_file(out, secrets[key_id])
                print(f"wrote {key_id} ({len(secrets[key_id])} bytes) to {out} (mode 0600); "
                      f"request {args.request_id}", file=sys.stderr)
        else:
            write_secret_stream(sys.stdout.buffer, secrets[key_ids[0]])
    finally:
        secrets.clear()
    return EXIT_OK


def cmd_enrol_tpm(args: argparse.Namespace) -> int:
    """Enrol the TPM's AK: EK certificate and AK to the verifier, credential activated."""
    if args.insecure_simulator and args.simulator_dir is None:
        raise UsageError("--insecure-simulator needs --simulator-dir")
    if not args.insecure_simulator and args.simulator_dir is not None:
        raise UsageError("--simulator-dir needs --insecure-simulator")
    try:
        collector = tpm_options.tpm_collector(args, simulated=args.insecure_simulator)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    credentials, _ = _credentials(args)
    enrolled = enrol_tpm(args.broker, collector, timeout=args.timeout,
                         credentials=credentials, request_id=args.request_id)
    print(f"enrolled AK {enrolled.ak_name.hex()} for EK {enrolled.ek_fingerprint}")
    return EXIT_OK


def _suite(value: str | None) -> Suite | None:
    if value is None:
        return None
    try:
        return Suite.from_id(value)
    except Malformed as exc:
        raise UsageError(f"unknown --suite {value!r}; expected {exc.expected}") from exc


def _credentials(args: argparse.Namespace) -> tuple[grpc.ChannelCredentials | None, bytes]:
    """(channel credentials, channel binding); (None, b"") only with --insecure-plaintext."""
    if args.insecure_plaintext:
        if args.ca or args.cert or args.key or args.pin_sha256:
            raise UsageError("--insecure-plaintext conflicts with --ca/--cert/--key/--pin-sha256")
        try:
            check_plaintext(args.broker, flag="--insecure-plaintext")
        except Malformed as exc:
            raise UsageError(exc.reason) from None
        logger.warning("INSECURE: talking to the broker WITHOUT TLS (--insecure-plaintext)")
        return None, b""
    if args.ca is None:
        raise UsageError("--ca is required (the CA that signed the broker's certificate); "
                         "--insecure-plaintext only for a loopback experiment")
    try:
        credentials = client_credentials(args.ca, args.cert, args.key)
        if args.pin_sha256:
            check_pin(args.broker, args.ca, args.pin_sha256, cert=args.cert, key=args.key,
                      timeout=args.timeout)
        channel = (certificate_digest(load_certificates(args.cert, "client certificate")[0])
                   if args.cert else b"")
    except Malformed as exc:
        raise UsageError(exc.detail) from None
    return credentials, channel


def _collector(args: argparse.Namespace, init_data: bytes) -> Collector:
    name: str | None = args.collector
    if name == SIMULATOR and not args.insecure_simulator:
        raise UsageError("--collector simulator requires --insecure-simulator")
    if args.insecure_simulator and name not in (None, SIMULATOR):
        raise UsageError(f"--insecure-simulator conflicts with --collector {name}")
    if not args.insecure_simulator:
        if simulator_options_given(args) or args.simulator_dir is not None:
            raise UsageError("--simulator-dir and --sim-* need --insecure-simulator")
        sources = TdxSources(
            ccel=CcelReader(args.acpi_tables_root),
            runtime_log=args.runtime_log or measure.DEFAULT_RUNTIME_LOG,
        )
        if name in (registry.TPM, registry.AZURE_VTPM):
            try:
                return (tpm_options.tpm_collector(args, simulated=False) if name == registry.TPM
                        else tpm_options.azure_collector(args))
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
        if name is None:
            return registry.auto_select(
                tsm_root=args.tsm_root, sev_guest_device=args.sev_guest_device,
                tdx_guest_device=args.tdx_guest_device, attestation_dir=args.attestation_dir,
                tdx_sources=sources)
        return registry.create(
            name, tsm_root=args.tsm_root, sev_guest_device=args.sev_guest_device,
            tdx_guest_device=args.tdx_guest_device, attestation_dir=args.attestation_dir,
            tdx_sources=sources)
    if args.simulator_dir is None:
        raise UsageError("--insecure-simulator needs --simulator-dir")
    try:
        check_simulator_options(args)
        logger.warning("INSECURE: --insecure-simulator given; evidence will be SIMULATED")
        return simulated_collector(args, init_data)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_measure(args: argparse.Namespace) -> int:
    """Append the image event to the runtime log and extend RTMR3 (or the simulated RTMR3)."""
    register: measure.Register
    if args.insecure_simulator:
        if args.simulator_dir is None:
            raise UsageError("--insecure-simulator needs --simulator-dir")
        if args.rtmr_path is not None:
            raise UsageError("--rtmr-path conflicts with --insecure-simulator")
        from attester_agent.collectors.simulator_dcap import SimulatorLayout  # noqa: PLC0415

        layout = SimulatorLayout(args.simulator_dir)
        logger.warning("INSECURE: measuring into the SIMULATED RTMR3 %s", layout.rtmr3)
        layout.tdx_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        register = measure.SimulatedRtmr(layout.rtmr3)
        log_path = args.runtime_log or layout.runtime_log
    else:
        if args.simulator_dir is not None:
            raise UsageError("--simulator-dir needs --insecure-simulator")
        register = measure.SysfsRtmr(args.rtmr_path or measure.DEFAULT_RTMR3)
        log_path = args.runtime_log or measure.DEFAULT_RUNTIME_LOG
    event = measure.measure_image(args.image, log_path=log_path, register=register)
    print(f"measured {event.value} into RTMR{event.mr}: extended {event.digest.hex()}")
    return EXIT_OK


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
    configure(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"attester-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeybrokerError as exc:
        cause = exc.__cause__
        denied = isinstance(cause, grpc.RpcError) and denial_from_rpc(cause) is not None
        request = getattr(args, "request_id", None)
        suffix = f" (request {request})" if request else ""
        # A denial carries only the broker's safe message; a local failure its full detail.
        text = f"denied: {exc.category.value}: {exc.reason}" if denied else f"error: {exc}"
        print(text + suffix, file=sys.stderr)
        return EXIT_FAILED
    except SecretOutputRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
