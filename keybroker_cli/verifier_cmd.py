"""``keybroker verifier ...``: init (result key + JWKS), serve, policy check.

Invariants:
- ``init`` never overwrites an existing key; the private key file is created with mode 0600 and
  the JWKS file holds the public key only.
- ``policy check`` accepts policies for every platform (sev-snp, tdx, sgx).
- ``serve`` prints exactly one line, ``verifier listening on HOST:PORT``, to stdout once the
  server accepts connections (with the real port when the config says port 0); everything else
  goes to the log (stderr). A refused start (bad config, test anchors without
  ``--insecure-simulator``) exits 2 with the reason.
- Exit codes: 0 ok, 1 rejected/failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from keybroker.errors import KeybrokerError
from keybroker_cli.pid_file import add_pid_file_option, pid_file
from verifier.config import load_config
from verifier.policy.compile import load_policy
from verifier.result import ResultSigner

KEY_FILE = "result-key.pem"
JWKS_FILE = "verifier-jwks.json"


def _init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / KEY_FILE
    if key_path.exists():
        print(f"refusing to overwrite {key_path}", file=sys.stderr)
        return 2
    try:
        signer = ResultSigner.generate(args.alg)
    except KeybrokerError as err:
        print(str(err), file=sys.stderr)
        return 2
    signer.write_private_key(key_path)
    signer.write_jwks(directory / JWKS_FILE)
    print(f"wrote {key_path} ({signer.alg}, kid {signer.kid}) and {directory / JWKS_FILE}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from verifier.server import serve  # noqa: PLC0415 - grpc only when serving

    try:
        config = load_config(Path(args.config))
        with pid_file("verifier", args.pid_file) as ready:
            asyncio.run(serve(config, insecure=bool(args.insecure_simulator),
                              plaintext=bool(args.insecure_plaintext), on_ready=ready))
    except KeybrokerError as err:
        print(f"verifier: refusing to start: {err}", file=sys.stderr)
        return 2
    except FileExistsError as err:
        print(f"verifier: refusing to start: {err}", file=sys.stderr)
        return 2
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(Path(args.file))
    except KeybrokerError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(f"{policy.name} sha256:{policy.digest}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``verifier`` and its subcommands to the ``keybroker`` parser."""
    parser = sub.add_parser("verifier", help="the attestation verifier service")
    commands = parser.add_subparsers(dest="verifier_command", required=True)

    init = commands.add_parser("init", help="create the result-signing key and its JWKS")
    init.add_argument("--dir", required=True, help="directory for result-key.pem and JWKS")
    init.add_argument("--alg", choices=("ES256", "ES384"), default="ES256",
                      help="token algorithm: ES256 (P-256, default) or ES384 (P-384)")
    init.set_defaults(func=_init)

    serve = commands.add_parser("serve", help="run the verifier gRPC service")
    serve.add_argument("--config", required=True, help="verifier TOML config file")
    serve.add_argument("--insecure-simulator", action="store_true",
                       help="trust simulator test roots: simulator_roots (AMD) and "
                            "simulator_intel_roots (Intel DCAP) (NEVER in production)")
    serve.add_argument("--insecure-plaintext", action="store_true",
                       help="INSECURE: listen without TLS (loopback addresses only; no caller "
                            "is authenticated). For local experiments, never production")
    add_pid_file_option(serve)
    serve.set_defaults(func=_serve, default_log_level="INFO")

    policy = commands.add_parser("policy", help="appraisal policy tools")
    policy_cmds = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_cmds.add_parser("check", help="compile a policy; print its name and digest")
    check.add_argument("file", help="appraisal policy (YAML)")
    check.set_defaults(func=_policy_check)
